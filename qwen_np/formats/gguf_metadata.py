"""The metadata of a Qwen GGUF file as llama.cpp's convert_hf_to_gguf.py writes it (the inverse
of formats/gguf_qwen.py's config_from_gguf): a model's config -> `{arch}.*` keys, a
byte-level BPE tokenizer.json -> the token list and types, Hugging Face tensor names -> GGUF's.

Keys are returned as (key, value, kind), kind one of "u32", "f32", "str", "bool", for the
writer (apps/quantize_gguf.py, which holds gguf-py's GGUFWriter) to type.
    {arch}.block_count, context_length, embedding_length, feed_forward_length,
    {arch}.attention.head_count, head_count_kv, layer_norm_rms_epsilon,
    {arch}.rope.freq_base, rope.scaling.* (YaRN), attention.key_length / value_length
        (where config.json names head_dim: Qwen3), expert_* (MoE), general.file_type
"""

from __future__ import annotations

import json

from qwen_np.errors import FormatError, UnsupportedModel
from qwen_np.formats.gguf_qwen import GLOBAL_NAMES, LAYER_NAMES, NORM_TOPK_DEFAULT, \
    STACKED_EXPERTS
from qwen_np.model.config import QwenConfig

GGUF_ARCH = {"qwen2": "qwen2", "qwen3": "qwen3", "qwen2_moe": "qwen2moe", "qwen3_moe": "qwen3moe"}
QUANTIZATION_VERSION = 2            # GGML_QNT_VERSION
# gguf-py's TokenType
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5
GGUF_GLOBAL = {hf: g for g, hf in GLOBAL_NAMES.items()}
GGUF_LAYER = {hf: g for g, hf in LAYER_NAMES.items()}
GGUF_EXPERTS = {hf: g for g, hf in STACKED_EXPERTS.items()}       # "gate_proj" -> ffn_gate_exps


def gguf_tensor_name(hf: str) -> str | None:
    """A Hugging Face tensor name -> its GGUF name (formats/gguf_qwen.py's tables, inverted);
    an expert's matrix model.layers.N.mlp.experts.E.gate_proj.weight -> the stacked
    blk.N.ffn_gate_exps.weight. None for a name GGUF has no place for."""
    if hf in GGUF_GLOBAL:
        return GGUF_GLOBAL[hf]
    parts = hf.split(".")
    if len(parts) < 4 or parts[:2] != ["model", "layers"] or not parts[2].isdigit():
        return None
    if parts[3:5] == ["mlp", "experts"] and len(parts) == 8 and parts[7] == "weight":
        g = GGUF_EXPERTS.get(parts[6])
        return None if g is None else f"blk.{parts[2]}.{g}"
    g = GGUF_LAYER.get(".".join(parts[3:]))
    return None if g is None else f"blk.{parts[2]}.{g}"


def gguf_arch(cfg: QwenConfig, path: str) -> str:
    if cfg.model_type not in GGUF_ARCH:
        raise UnsupportedModel(f"{path}: writing a {cfg.model_type!r} model as GGUF is not "
                               f"supported (qwen2, qwen3, qwen2_moe, qwen3_moe)")
    return GGUF_ARCH[cfg.model_type]


def model_metadata(cfg: QwenConfig, file_type: int, head_dim_key: bool,
                   path: str) -> list[tuple[str, object, str]]:
    """{arch}.* keys and general.file_type, in the converter's order; head_dim_key: write
    attention.key_length/value_length (convert_hf_to_gguf.py does where config.json has
    head_dim). The writer puts general.type and general.name before them, the tokenizer's
    keys and general.quantization_version after."""
    a = gguf_arch(cfg, path)
    keys = [(f"{a}.block_count", cfg.num_hidden_layers, "u32"),
            (f"{a}.context_length", cfg.max_position_embeddings, "u32"),
            (f"{a}.embedding_length", cfg.hidden_size, "u32"),
            (f"{a}.feed_forward_length", cfg.intermediate_size, "u32"),
            (f"{a}.attention.head_count", cfg.num_attention_heads, "u32"),
            (f"{a}.attention.head_count_kv", cfg.num_key_value_heads, "u32")]
    if cfg.yarn is not None:
        y = cfg.yarn
        keys += [(f"{a}.rope.scaling.type", "yarn", "str"),
                 (f"{a}.rope.scaling.factor", y.factor, "f32"),
                 (f"{a}.rope.scaling.original_context_length",
                  y.original_max_position_embeddings, "u32")]
        if y.beta_fast != 32.0:                 # as the converter: only where not the default
            keys.append((f"{a}.rope.scaling.yarn_beta_fast", y.beta_fast, "f32"))
        if y.beta_slow != 1.0:
            keys.append((f"{a}.rope.scaling.yarn_beta_slow", y.beta_slow, "f32"))
    keys += [(f"{a}.rope.freq_base", cfg.rope_theta, "f32"),
             (f"{a}.attention.layer_norm_rms_epsilon", cfg.rms_norm_eps, "f32")]
    if head_dim_key:
        keys += [(f"{a}.attention.key_length", cfg.head_dim, "u32"),
                 (f"{a}.attention.value_length", cfg.head_dim, "u32")]
    if cfg.num_experts:
        keys += [(f"{a}.expert_count", cfg.num_experts, "u32"),
                 (f"{a}.expert_used_count", cfg.num_experts_per_tok, "u32"),
                 (f"{a}.expert_feed_forward_length", cfg.moe_intermediate_size, "u32")]
        if cfg.shared_expert_intermediate_size:
            keys.append((f"{a}.expert_shared_feed_forward_length",
                         cfg.shared_expert_intermediate_size, "u32"))
        if cfg.norm_topk_prob != NORM_TOPK_DEFAULT[a]:
            # the converter writes nothing, and llama.cpp hard-codes the default per
            # architecture; the key keeps the config's choice for readers that look for it
            keys.append((f"{a}.expert_weights_norm", cfg.norm_topk_prob, "bool"))
    keys.append(("general.file_type", file_type, "u32"))
    return keys


def token_list(tokenizer_json: str, vocab_size: int) -> tuple[list[str], list[int]]:
    """(tokens, token types) [vocab_size] of a byte-level BPE tokenizer.json, as
    convert_hf_to_gguf.py's get_vocab_base makes them: the vocabulary's strings by id; added
    tokens as their text, CONTROL if special or shaped <|...|>, else USER_DEFINED; ids with no
    token [PAD<i>], UNUSED."""
    try:
        with open(tokenizer_json, encoding="utf-8") as f:
            tok = json.load(f)
        vocab = tok["model"]["vocab"]
        added = {t["id"]: t for t in tok.get("added_tokens", [])}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise FormatError(f"{tokenizer_json}: not a byte-level BPE tokenizer.json "
                          f"({type(e).__name__}: {e})") from None
    tokens, types = [f"[PAD{i}]" for i in range(vocab_size)], [UNUSED] * vocab_size
    for text, i in vocab.items():
        if i < vocab_size:
            tokens[i], types[i] = text, NORMAL
    for i, t in added.items():
        if i >= vocab_size:
            raise FormatError(f"{tokenizer_json}: added token {t['content']!r} has id {i}, "
                              f"past the model's vocab_size {vocab_size}")
        text = t["content"]
        looks_special = text.startswith("<|") and text.endswith("|>")
        tokens[i], types[i] = text, CONTROL if t.get("special") or looks_special else USER_DEFINED
    return tokens, types
