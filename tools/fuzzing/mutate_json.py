"""JSON mutations (config, generation config, index, quantize config, tokenizer, tokenizer
config): values
replaced, keys deleted or added, known keys given wrong types, deep nesting, shard names
pointing out of the folder, tokenizer ids past the vocabulary; and dump_json, which writes
what json.dumps cannot."""

from __future__ import annotations

import json
import os

from fuzzing.values import Raw, deep_json, wrong_value


KNOWN_KEYS = {
    "config": ["num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads",
               "vocab_size", "intermediate_size", "head_dim", "rms_norm_eps", "rope_theta",
               "rope_parameters", "rope_parameters.rope_theta", "rope_scaling", "eos_token_id",
               "bos_token_id", "max_position_embeddings", "tie_word_embeddings", "model_type",
               "architectures", "dtype", "torch_dtype", "sliding_window", "use_sliding_window",
               "max_window_layers", "layer_types", "hidden_act", "quantization_config",
               "quantization_config.bits", "quantization_config.group_size"],
    "generation_config": ["eos_token_id", "bos_token_id", "pad_token_id", "max_new_tokens",
                          "max_length", "temperature", "top_k", "top_p", "do_sample",
                          "repetition_penalty"],
    "quant_config": ["bits", "group_size", "sym", "desc_act", "quant_method", "method",
                     "checkpoint_format", "format", "version", "zero_point", "lm_head",
                     "pack_dtype", "modules_to_not_convert", "dynamic"],
    "tokenizer": ["model", "model.type", "model.vocab", "model.merges", "model.unk_token",
                  "model.byte_fallback", "added_tokens", "pre_tokenizer", "normalizer",
                  "decoder", "post_processor", "truncation", "padding", "version"],
    "index": ["weight_map", "metadata", "metadata.total_size"],
    # what formats/chat_templates.py reads: the template (a string, or a list of {name,
    # template}) and the special tokens a template may name (a string or an AddedToken object)
    "tokenizer_config": ["chat_template", "name", "template", "bos_token", "eos_token",
                         "pad_token", "unk_token", "pad_token.content", "model_max_length"],
}


def json_paths(obj, path=()):
    """The path (keys and indices) of every value, the root's () first."""
    yield path
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from json_paths(v, path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from json_paths(v, path + (i,))


def json_get(obj, path):
    for p in path:
        obj = obj[p]
    return obj


def json_set(root, path, value):
    """root with the value at path replaced (a new root when path is ())."""
    if not path:
        return value
    json_get(root, path[:-1])[path[-1]] = value
    return root


def show_path(path) -> str:
    return ".".join(str(p) for p in path) or "(root)"


def dump_json(obj) -> str:
    raws = []

    def swap(o):
        if isinstance(o, Raw):
            raws.append(o.text)
            return f"\0raw{len(raws) - 1}\0"
        if isinstance(o, dict):
            return {k: swap(v) for k, v in o.items()}
        if isinstance(o, list):
            return [swap(v) for v in o]
        return o

    text = json.dumps(swap(obj), indent=2, ensure_ascii=False)
    for i, raw in enumerate(raws):
        text = text.replace(json.dumps(f"\0raw{i}\0"), raw, 1)
    return text


def mutate_json_value(rng, obj, fmt, ctx):
    paths = list(json_paths(obj))
    path = rng.choice(paths)
    v = wrong_value(rng, ctx, json_get(obj, path))
    return json_set(obj, path, v), f"{show_path(path)} = {v!r:.80}"


def mutate_json_deep(rng, obj, fmt, ctx):
    v = deep_json(rng)
    if rng.random() < 0.2:
        return v, f"whole file = {v!r}"
    path = rng.choice(list(json_paths(obj)))
    return json_set(obj, path, v), f"{show_path(path)} = {v!r}"


def mutate_json_keys(rng, obj, fmt, ctx):
    paths = list(json_paths(obj))
    keyed = [p for p in paths if p and isinstance(p[-1], str)]
    if keyed and rng.random() < 0.5:
        path = rng.choice(keyed)
        del json_get(obj, path[:-1])[path[-1]]
        return obj, f"{show_path(path)} deleted"
    dicts = [p for p in paths if isinstance(json_get(obj, p), dict)]
    if not dicts:
        return mutate_json_value(rng, obj, fmt, ctx)
    path = rng.choice(dicts)
    key = rng.choice([k.split(".")[-1] for k in KNOWN_KEYS[fmt]] + ["zzz", "", "a" * 5000])
    v = wrong_value(rng, ctx)
    json_get(obj, path)[key] = v
    return obj, f"{show_path(path + (key[:20],))} added = {v!r:.80}"


def mutate_json_known(rng, obj, fmt, ctx):
    """A known key, wherever it already is (else created from the root), set to a wrong type."""
    key = rng.choice(KNOWN_KEYS[fmt])
    parts = tuple(key.split("."))
    found = [p for p in json_paths(obj) if p[-len(parts):] == parts]
    if found:
        path = rng.choice(found)
        v = wrong_value(rng, ctx, json_get(obj, path))
        return json_set(obj, path, v), f"{show_path(path)} = {v!r:.80}"
    v = wrong_value(rng, ctx)
    if not isinstance(obj, dict):
        return mutate_json_value(rng, obj, fmt, ctx)
    node = obj
    for p in parts[:-1]:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    node[parts[-1]] = v
    return obj, f"{key} added = {v!r:.80}"


def shard_name(rng, ctx, shards) -> str:
    return rng.choice(["../x", "/etc/passwd", "/", "", ".", "..", "/dev/zero", "/dev/null",
                       "a" * 5000, "x\0y", "config.json", "tokenizer.json",
                       "model.safetensors.index.json", "missing.safetensors", ctx.sentinel,
                       ctx.sentinel_rel, ctx.sentinel_rel, os.path.join(ctx.model, shards[0]),
                       "./" + shards[-1], "sub/../" + shards[0], shards[0].upper()])


def mutate_index(rng, obj, fmt, ctx):
    """weight_map: shard names (planted sentinel, ../, absolute, devices), wrong types."""
    wm = obj.get("weight_map") if isinstance(obj, dict) else None
    if not isinstance(wm, dict) or not wm:
        return mutate_json_value(rng, obj, fmt, ctx)
    shards = sorted(set(v for v in wm.values() if isinstance(v, str))) or ["x.safetensors"]
    names = sorted(wm)
    op = rng.choice(["rename_shard", "rename_shard", "one_tensor", "type", "add", "drop"])
    if op == "rename_shard":
        old, new = rng.choice(shards), shard_name(rng, ctx, shards)
        for k in names:
            if wm[k] == old:
                wm[k] = new
        return obj, f"shard {old} renamed {new!r:.80}"
    if op == "one_tensor":
        k = rng.choice(names)
        wm[k] = shard_name(rng, ctx, shards)
        return obj, f"weight_map[{k}] = {wm[k]!r:.80}"
    if op == "type":
        obj["weight_map"] = rng.choice([list(wm.items()), names, None, "x", {}, 0,
                                        {k: 0 for k in names}, {k: None for k in names},
                                        {k: [v] for k, v in wm.items()}])
        return obj, f"weight_map = {obj['weight_map']!r:.60}"
    if op == "add":
        k = rng.choice(["model.layers.0.bogus.weight", "lm_head.weight", "model.layers.99.x", ""])
        wm[k] = rng.choice(shards + [shard_name(rng, ctx, shards)])
        return obj, f"weight_map[{k}] added = {wm[k]!r:.80}"
    k = rng.choice(names)
    del wm[k]
    return obj, f"weight_map[{k}] deleted"


def mutate_tokenizer_ids(rng, obj, fmt, ctx):
    """Token ids the tokenizer accepts but the model cannot (past its vocabulary), so that
    encode() hands the model ids it has no embedding for."""
    model = obj.get("model") if isinstance(obj, dict) else None
    if not isinstance(model, dict) or not isinstance(model.get("vocab"), dict):
        return mutate_json_value(rng, obj, fmt, ctx)
    shift = rng.choice([1000, 2**16, 2**31 - 1000])
    if rng.random() < 0.5:
        model["vocab"] = {t: i + shift for t, i in model["vocab"].items()}
        for t in obj.get("added_tokens") or []:
            t["id"] += shift
        return obj, f"every token id + {shift}"
    added = obj.get("added_tokens") or [{}]
    added[0]["id"] = shift
    return obj, f"added token {added[0].get('content')!r} id = {shift}"


JSON_MUTATORS = {"json_value": mutate_json_value, "json_keys": mutate_json_keys,
                 "json_known": mutate_json_known, "json_deep": mutate_json_deep,
                 "index_shards": mutate_index, "tokenizer_ids": mutate_tokenizer_ids}
