"""Mutation fuzzer over model files: small checkpoints, each mutated once with plain seeded
mutations, each loaded in a forked child the way a user would load it, each outcome classified.

    python tools/fuzz.py --seed 1 --count 3000 [--jobs 2] [--time-limit 20] [--memory-limit-gb 4]
                         [--out DIR] [--formats gguf,safetensors,index,config,...] [--cli-every 10]
    python tools/fuzz.py --replay DIR      # one saved input, in the foreground, full traceback

Seeds: the test fixtures (float single-file, bf16 sharded, GPTQ 4/8-bit, AWQ, a GPTQ folder
whose settings are in quantize_config.json as older AutoGPTQ wrote them), the float fixture
with a qwen.tiktoken (the original Qwen's tokenizer file, made from its tokenizer.json) in
place of its tokenizer.json, and tiny GGUF files (F32, F16, Q8_0, Q4_0; Qwen2 and Qwen3)
written at start-up by gguf-py. Input i of --seed S is made by random.Random(f"S/i") alone,
so the same seed and count give the same inputs. Every file is written under one temporary
folder; next to each model (outside it) lies a file holding a random marker, which some
mutations point shard names and symlinks at.

Mutations, one per input: bytes of any file (bit flips, interesting bytes and 4/8-byte
integers, truncation, chunks inserted or deleted); JSON (any value replaced, keys deleted or
added, known keys given wrong types, nesting 1,000-100,000 deep, shard names pointing out of
the folder, tokenizer ids past the vocabulary); safetensors header entries and header length;
GGUF integer fields (found by walking the header) and metadata entries; qwen.tiktoken lines
(deleted, repeated, swapped, blank; ranks near, negative, huge or not numbers; tokens with bad
base64, empty, or new; extra fields; CR/CRLF endings; a line of 10^6 characters; an empty
file; ranks past the vocabulary); file kinds (FIFO, folder, empty file, symlinks out of the
folder or to /dev/zero), the model path itself too.

What a child does: m = qwen_np.load(path); qwen_np.load_tokenizer(path) and m.tokenizer
encode the same ids (ids [1, 2, 3] when the folder has no tokenizer file);
m.generate(ids[:8], max_new_tokens=2); decode. With --cli-every N, every Nth input also runs
`qwen-np run -m PATH -p hi -n 2` in its own child.

Outcomes:
    clean      a QwenNpError on one line that names the input (the path, or a file inside it);
               for the CLI, exit status 1 and one stderr line `qwen-np: error: ...` naming it
    load       everything worked
    traceback  any other exception, or a QwenNpError on several lines or without the path
    hang       still running after --time-limit (where it was: faulthandler's dump)
    memory     MemoryError or ENOMEM under the --memory-limit-gb address-space limit, or
               killed for memory
    crash      died by a signal, or exited without reporting
    leak       the output (message, traceback, text, stdout, stderr) holds the marker
Every input that is not clean or load is saved under --out with replay.json and replay.sh.
The exit status is 0 only when there are none.
"""

from __future__ import annotations

import argparse
import base64
import errno
import faulthandler
import json
import os
import random
import re
import resource
import select
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter, defaultdict
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
FIXTURES = os.path.join(REPO, "tests", "fixtures")

OUTCOMES = ("clean", "load", "traceback", "hang", "memory", "crash", "leak")
FAILURES = ("traceback", "hang", "memory", "crash", "leak")
FORMATS = ("gguf", "safetensors", "index", "config", "generation_config", "quant_config",
           "tokenizer", "tiktoken")
JSON_FILES = {"config": "config.json", "generation_config": "generation_config.json",
              "index": "model.safetensors.index.json", "quant_config": "quantize_config.json",
              "tokenizer": "tokenizer.json"}
PROMPT = "def f(x): return x"
CLI_ARGS = ["-p", "hi", "-n", "2"]


# --- seeds ----------------------------------------------------------------------------------

# name -> fixture folder
HF_SEEDS = {
    "qwen2-tied-f32": "qwen2-tied-f32",
    "qwen2-untied-bf16-sharded": "qwen2-untied-bf16-sharded",
    "gptq-4bit-g32-sym": "quant/gptqmodel-4bit-g32-sym",
    "gptq-4bit-g32-descact-asym": "quant/gptqmodel-4bit-g32-descact-asym",
    "gptq-8bit-g64-sym": "quant/gptqmodel-8bit-g64-sym",
    "awq-4bit-g32-gemm": "quant/autoawq-4bit-g32-gemm",
    "qwen1-f32-ntk-logn": "qwen1/qwen1-f32-ntk-logn",
    "qwen1-gptq-int4": "qwen1/qwen1-gptq-int4",
    "qwen2moe-step2-f32": "moe/qwen2moe-step2-f32",
    "gptq-qwen3moe": "moe/gptqmodel-qwen3moe-4bit-g32-sym",
    "qwen3-yarn": "yarn/qwen3-yarn2-betas",
}
# the original Qwen's fixtures hold no tokenizer: they get qwen2-tied-f32's (300 ids < 320 rows)
TOKENIZER_FROM = "qwen2-tied-f32"
# qwen2-tied-f32 with a qwen.tiktoken made from its tokenizer.json in place of that file
TIKTOKEN_SEED = "qwen2-tied-f32-tiktoken"

# Run in a separate Python: gguf_writer reads safetensors through torch, which the fuzzing
# parent should not carry into every forked child. The Q4_0 and F16 files need matrices whose
# rows are whole 32-element blocks, so they come from a random float model of the quant
# fixtures' shape (hidden 64, MLP 128).
GGUF_SEED_SCRIPT = r"""
import json, os, shutil, sys
import numpy as np
tests, fixtures, out = sys.argv[1:4]
sys.path.insert(0, tests)
from gguf import GGMLQuantizationType as T
from gguf_writer import write_gguf_from_hf
from safetensors.numpy import save_file

h64 = os.path.join(out, "float-h64")
os.makedirs(h64)
cfg = json.load(open(os.path.join(fixtures, "quant/gptqmodel-4bit-g32-sym/config.json")))
del cfg["quantization_config"]
cfg["dtype"] = "float32"
json.dump(cfg, open(os.path.join(h64, "config.json"), "w"), indent=2)
shutil.copy(os.path.join(fixtures, "quant/gptqmodel-4bit-g32-sym/tokenizer.json"), h64)
D, F, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
Dh = D // cfg["num_attention_heads"]
Dkv = Dh * cfg["num_key_value_heads"]
shapes = {"model.embed_tokens.weight": (V, D), "model.norm.weight": (D,)}
for i in range(cfg["num_hidden_layers"]):
    p = f"model.layers.{i}."
    shapes.update({p + "input_layernorm.weight": (D,), p + "post_attention_layernorm.weight": (D,),
                   p + "self_attn.q_proj.weight": (D, D), p + "self_attn.q_proj.bias": (D,),
                   p + "self_attn.k_proj.weight": (Dkv, D), p + "self_attn.k_proj.bias": (Dkv,),
                   p + "self_attn.v_proj.weight": (Dkv, D), p + "self_attn.v_proj.bias": (Dkv,),
                   p + "self_attn.o_proj.weight": (D, D), p + "mlp.gate_proj.weight": (F, D),
                   p + "mlp.up_proj.weight": (F, D), p + "mlp.down_proj.weight": (D, F)})
rng = np.random.default_rng(0)
tensors = {n: (1.0 + 0.1 * rng.standard_normal(s) if n.endswith("norm.weight")
               else 0.05 * rng.standard_normal(s)).astype(np.float32) for n, s in shapes.items()}
save_file(tensors, os.path.join(h64, "model.safetensors"))

write_gguf_from_hf(os.path.join(fixtures, "qwen2-tied-f32"), os.path.join(out, "qwen2-f32.gguf"), T.F32)
write_gguf_from_hf(os.path.join(fixtures, "qwen3-headdim12-f32"), os.path.join(out, "qwen3-f32.gguf"), T.F32)
for name, qtype in (("f16", T.F16), ("q8_0", T.Q8_0), ("q4_0", T.Q4_0)):
    write_gguf_from_hf(h64, os.path.join(out, f"qwen2-{name}.gguf"), qtype)
# stacked experts (and a shared expert); stacked experts with YaRN metadata
write_gguf_from_hf(os.path.join(fixtures, "moe/qwen2moe-allsparse-bf16"),
                   os.path.join(out, "qwen2moe-q8_0.gguf"), T.Q8_0)
write_gguf_from_hf(os.path.join(fixtures, "yarn/qwen3moe-yarn4"),
                   os.path.join(out, "qwen3moe-yarn-f32.gguf"), T.F32)
shutil.rmtree(h64)
"""


@dataclass
class Seed:
    name: str
    path: str                    # a model folder, or a .gguf file
    targets: dict                # format -> files it can mutate (relative; "" is the GGUF itself)


def build_seeds(root: str, with_gguf: bool = True) -> list[Seed]:
    """Copies of the fixtures, the quantize_config.json variant, and (with_gguf) GGUF files,
    all under root/seeds."""
    seeds_dir = os.path.join(root, "seeds")
    os.makedirs(seeds_dir)
    for name, fixture in HF_SEEDS.items():
        shutil.copytree(os.path.join(FIXTURES, fixture), os.path.join(seeds_dir, name))
        if name.startswith("qwen1"):
            shutil.copy(os.path.join(FIXTURES, TOKENIZER_FROM, "tokenizer.json"),
                        os.path.join(seeds_dir, name))
    # older AutoGPTQ checkpoints keep the settings in quantize_config.json, not in config.json
    legacy = os.path.join(seeds_dir, "gptq-4bit-g32-quantize-config-json")
    shutil.copytree(os.path.join(seeds_dir, "gptq-4bit-g32-sym"), legacy)
    with open(os.path.join(legacy, "config.json")) as f:
        cfg = json.load(f)
    with open(os.path.join(legacy, "quantize_config.json"), "w") as f:
        json.dump(cfg.pop("quantization_config"), f, indent=2)
    with open(os.path.join(legacy, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    # the original Qwen's tokenizer file in place of tokenizer.json
    tiktoken = os.path.join(seeds_dir, TIKTOKEN_SEED)
    shutil.copytree(os.path.join(seeds_dir, "qwen2-tied-f32"), tiktoken)
    with open(os.path.join(tiktoken, "qwen.tiktoken"), "wb") as f:
        f.write(tiktoken_from_tokenizer_json(os.path.join(tiktoken, "tokenizer.json")))
    os.unlink(os.path.join(tiktoken, "tokenizer.json"))
    if with_gguf:
        subprocess.run([sys.executable, "-c", GGUF_SEED_SCRIPT, os.path.join(REPO, "tests"),
                        FIXTURES, seeds_dir], check=True)
    seeds = []
    for name in sorted(os.listdir(seeds_dir)):
        path = os.path.join(seeds_dir, name)
        seeds.append(Seed(name.removesuffix(".gguf"), path, seed_targets(path)))
    return seeds


def seed_targets(path: str) -> dict:
    if path.endswith(".gguf"):
        return {"gguf": [""]}
    files = set(os.listdir(path))
    targets = {fmt: [name] for fmt, name in JSON_FILES.items() if name in files}
    if "qwen.tiktoken" in files:
        targets["tiktoken"] = ["qwen.tiktoken"]
    with open(os.path.join(path, "config.json")) as f:
        if "quantization_config" in json.load(f):
            # config.json's quantization_config wins over quantize_config.json (as in
            # transformers), so that object is the target: a JSON-only one
            targets["quant_config"] = ["config.json#quantization_config"]
    targets["safetensors"] = sorted(f for f in files if f.endswith(".safetensors"))
    return targets


def tiktoken_from_tokenizer_json(path: str) -> bytes:
    """A qwen.tiktoken (`base64(token bytes) rank` per line) with a byte-level BPE
    tokenizer.json's vocabulary: each token's characters mapped back to bytes through GPT-2's
    byte-to-unicode table, added tokens left out (qwen.tiktoken has none: the library adds
    its special tokens after the ranks), ranks 0, 1, 2 ... in the order of the ids."""
    with open(path, encoding="utf-8") as f:
        tok = json.load(f)
    added = {t["id"] for t in tok.get("added_tokens", [])}
    to_byte = {c: b for b, c in gpt2_byte_to_unicode().items()}
    vocab = sorted((i, t) for t, i in tok["model"]["vocab"].items() if i not in added)
    lines = [base64.b64encode(bytes(to_byte[c] for c in t)) + b" %d" % rank
             for rank, (_, t) in enumerate(vocab)]
    return b"".join(line + b"\n" for line in lines)


def gpt2_byte_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in for each byte (its encoder.py bytes_to_unicode): printable
    Latin-1 bytes stand for themselves, the other 68 become U+0100, U+0101, ... in order.
    Written out here rather than imported: the parent must not import NumPy (which
    qwen_np.runtime.tokenizer does) before import_libraries sets the thread counts."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1),
            *range(ord("\u00ae"), ord("\u00ff") + 1)]
    moved = [b for b in range(256) if b not in keep]
    return {**{b: chr(b) for b in keep}, **{b: chr(256 + i) for i, b in enumerate(moved)}}


# --- interesting values ---------------------------------------------------------------------

class Raw:
    """JSON text written as it is: what json.dumps cannot or will not write (nesting past the
    recursion limit, integers past Python's 4300-digit limit, NaN spelled as a literal)."""

    def __init__(self, text: str, label: str):
        self.text, self.label = text, label

    def __repr__(self):
        return self.label


def deep_json(rng: random.Random) -> Raw:
    depth = rng.choice([1000, 10_000, 100_000])
    if rng.random() < 0.5:
        return Raw("[" * depth + "]" * depth, f"[[...]] x{depth}")
    return Raw('{"a":' * depth + "1" + "}" * depth, f'{{"a":...}} x{depth}')


def wrong_value(rng: random.Random, ctx, old=None):
    """A value a JSON field should not hold, sometimes a path to the planted sentinel, and
    half the time (when there is an old value) one near the old value: plausible numbers and
    names get past type checks to the shape and index arithmetic behind them."""
    near = near_values(old)
    if near and rng.random() < 0.5:
        return rng.choice(near)
    pool = [None, [], {}, "x", "", True, False, 0, -1, 1, 1.5, 1e308, -1e308, 2**31, 2**63,
            2**64, 10**30, -2**63 - 1, [None], [1, None], [-1], {"x": 1}, "64",
            Raw("1" + "0" * 5000, "10**5000"), Raw("NaN", "NaN"), Raw("-Infinity", "-Infinity"),
            Raw("1e999", "1e999"), "deep", "sentinel", "sentinel-rel", "/etc/passwd", "../x"]
    v = rng.choice(pool)
    if v == "deep":
        return deep_json(rng)
    if v == "sentinel":
        return ctx.sentinel
    if v == "sentinel-rel":
        return ctx.sentinel_rel
    return v


def near_values(old) -> list:
    if isinstance(old, bool):
        return [not old]
    if isinstance(old, int):
        return [old + 1, old - 1, old * 2, old // 2, old + 1000, -old, 2, 3, 7, 48]
    if isinstance(old, float):
        return [0.0, -old, old * 1e6, old / 1e6, 1e-45]
    if isinstance(old, str):
        return ["qwen3", "qwen2_moe", "llama", "Qwen2ForCausalLM", old.upper(), old + "x"]
    if isinstance(old, list) and old:
        return [old[:1], old + old, old[::-1]]
    return []


def interesting_u64(rng: random.Random, size: int) -> int:
    return rng.choice([0, 1, 2**31, 2**32 - 1, 2**32, 2**40, 2**63 - 1, 2**63, 2**64 - 1,
                       size, size - 1, size + 1])


# --- byte mutations (any file) --------------------------------------------------------------

def mutate_bytes(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    b = bytearray(data)
    size = len(b)

    def pos():   # favours the start, where the headers are
        return rng.randrange(max(1, min(size, rng.choice([16, 64, 1024, 16384, size]))))

    if size == 0:
        return b"\0" * rng.choice([1, 8, 4096]), "empty file filled with zeros"
    op = rng.choice(["flip", "byte", "int64", "int32", "truncate", "insert", "delete"])
    if op == "flip":
        where = [pos() for _ in range(rng.choice([1, 1, 2, 4, 8]))]
        for p in where:
            b[p] ^= 1 << rng.randrange(8)
        return bytes(b), f"bit flips at {where}"
    if op == "byte":
        p, n, v = pos(), rng.choice([1, 1, 2, 4, 8]), rng.choice([0, 0xFF, 0x7F, 0x80])
        b[p:p + n] = bytes([v]) * len(b[p:p + n])
        return bytes(b), f"{n} bytes at {p} set to {v:#x}"
    if op in ("int64", "int32"):
        width = 8 if op == "int64" else 4
        p = pos()
        if rng.random() < 0.5:
            p -= p % width
        p = max(0, min(p, size - width))
        v = interesting_u64(rng, size) % (1 << (8 * width))
        b[p:p + width] = v.to_bytes(width, "little")[:size - p]
        return bytes(b), f"{op} at {p} set to {v}"
    if op == "truncate":
        n = rng.choice([0, 1, 7, 8, 9, 16, 24, rng.randrange(size), size - 1])
        return bytes(b[:n]), f"truncated to {n} of {size} bytes"
    if op == "insert":
        p, n = pos(), rng.choice([1, 8, 64, 4096])
        chunk = bytes(rng.randrange(256) for _ in range(n)) if rng.random() < 0.5 else \
            bytes(b[p:p + n])
        b[p:p] = chunk
        return bytes(b), f"{len(chunk)} bytes inserted at {p}"
    p, n = pos(), rng.choice([1, 8, 64, 4096])
    del b[p:p + n]
    return bytes(b), f"bytes {p}..{p + n} deleted"


# --- JSON mutations (config, generation config, index, quantize config, tokenizer) ----------

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


# --- safetensors mutations ------------------------------------------------------------------

def split_safetensors(data: bytes):
    """(header dict, data section) of a valid file, else None."""
    if len(data) < 8:
        return None
    n = int.from_bytes(data[:8], "little")
    try:
        header = json.loads(data[8:8 + n])
    except ValueError:
        return None
    return (header, data[8 + n:]) if isinstance(header, dict) else None


def join_safetensors(header, rest: bytes) -> bytes:
    text = dump_json(header).encode() if not isinstance(header, bytes) else header
    text += b" " * (-len(text) % 8)   # the writers pad the header to 8 bytes with spaces
    return len(text).to_bytes(8, "little") + text + rest


def mutate_st_entry(rng, data: bytes) -> tuple[bytes, str]:
    """One tensor entry of the header: dtype, shape, data_offsets, the entry itself, its name."""
    header, rest = split_safetensors(data)
    names = sorted(k for k in header if k != "__metadata__")
    name = rng.choice(names)
    entry = header[name]
    b, e = entry["data_offsets"]
    other = header[rng.choice(names)]["data_offsets"]
    op = rng.choice(["dtype", "shape", "shape", "offsets", "offsets", "offsets", "entry",
                     "drop_field", "rename", "drop", "duplicate", "metadata"])
    if op == "dtype":
        entry["dtype"] = rng.choice(["F32", "F16", "BF16", "F64", "I32", "I64", "I16", "I8", "U8",
                                     "U16", "U32", "BOOL", "F8_E4M3", "F8_E5M2", "Q4_0", "f32",
                                     "", None, 7, ["F32"]])
        desc = f"dtype = {entry['dtype']!r}"
    elif op == "shape":
        shape = entry["shape"]
        entry["shape"] = rng.choice([[], [0], [-1, 64], [2**31, 2**31], [2**32, 2**32], [2**63],
                                     [2**64], list(reversed(shape)), [1] + shape, shape[:1],
                                     [1] * 100, ["64"], [1.5], [True], None, "x", {},
                                     [d * 2 for d in shape], [max(d - 1, 0) for d in shape]])
        desc = f"shape {shape} -> {entry['shape']!r:.60}"
    elif op == "offsets":
        entry["data_offsets"] = rng.choice([[-1, e - b - 1], [e, b], [0, 2**64], [2**63, 2**63 + 4],
                                            [b, len(rest) + 1], list(other), [b, b], [b + 1, e + 1],
                                            [b, e + 8], [b // 2, e // 2], [b], [b, e, e], None,
                                            [0.5, 4], [str(b), str(e)], [len(rest), len(rest)],
                                            [-2**63, 0], [b, 2**64 - 1]])
        desc = f"data_offsets [{b}, {e}] -> {entry['data_offsets']!r}"
    elif op == "entry":
        header[name] = rng.choice([None, [], "x", 0, {}, [entry]])
        desc = f"entry = {header[name]!r:.40}"
    elif op == "drop_field":
        field_name = rng.choice(["dtype", "shape", "data_offsets"])
        del entry[field_name]
        entry[rng.choice(["zzz", field_name.upper()])] = 1
        desc = f"{field_name} deleted"
    elif op == "rename":
        new = rng.choice(["", "model.layers.99.x.weight", "lm_head.weight", names[0] + ".x", "x" * 5000])
        header[new] = header.pop(name)
        desc = f"renamed {new[:40]!r}"
    elif op == "drop":
        del header[name]
        desc = "deleted"
    elif op == "duplicate":
        new = rng.choice(["lm_head.weight", "model.layers.0.extra.weight", rng.choice(names) + "_"])
        header[new] = dict(entry)
        desc = f"duplicated as {new}"
    else:
        header["__metadata__"] = rng.choice([[], "x", 0, None, {"format": 1}, {"format": ["pt"]},
                                             {"a": {"b": 1}}])
        desc = f"__metadata__ = {header['__metadata__']!r}"
    return join_safetensors(header, rest), f"tensor {name}: {desc}"


def mutate_st_header(rng, data: bytes) -> tuple[bytes, str]:
    """The header as a whole: its length field, its JSON, what follows it."""
    header, rest = split_safetensors(data)
    n, size = int.from_bytes(data[:8], "little"), len(data)
    op = rng.choice(["length", "length", "not_object", "bad_utf8", "duplicate_key", "trailing",
                     "nul_padding", "deep"])
    if op == "length":
        v = rng.choice([n - 1, n + 1, size, size - 8, size - 7, 0, 1, 2**63, 2**64 - 1, 2**32 + n])
        return v.to_bytes(8, "little") + data[8:], f"header length {n} -> {v}"
    if op == "not_object":
        text = rng.choice([b"[]", b"null", b"1", b'"x"', b"[{}]"])
        return join_safetensors(text, rest), f"header = {text.decode()}"
    if op == "bad_utf8":
        text = dump_json(header).encode()
        p = rng.randrange(1, len(text) - 1)
        return join_safetensors(text[:p] + b"\xff\xfe" + text[p:], rest), f"bytes ff fe at {p}"
    if op == "duplicate_key":
        # json.dumps cannot repeat a key; the reader must decide what a repeated one means
        name = rng.choice(sorted(k for k in header if k != "__metadata__"))
        entry = json.dumps({name: {**header[name], "data_offsets": [0, 4], "shape": [1]}})
        text = dump_json(header).encode()
        return join_safetensors(text[:-1] + b"," + entry[1:].encode(), rest), f"{name} repeated"
    if op == "trailing":
        text = dump_json(header).encode() + rng.choice([b"x", b"{}", b"\0"])
        return join_safetensors(text, rest), "garbage after the header JSON"
    if op == "nul_padding":
        text = dump_json(header).encode()
        return len(text + b"\0" * 8).to_bytes(8, "little") + text + b"\0" * 8 + rest, \
            "header padded with NUL bytes"
    v = deep_json(rng)
    return join_safetensors({**header, "__metadata__": v}, rest), f"__metadata__ = {v!r}"


# --- GGUF mutations -------------------------------------------------------------------------

GGUF_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
GGUF_SCALAR_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
                       10: "<Q", 11: "<q", 12: "<d"}


@dataclass
class GGUFLayout:
    """Where every integer field of a GGUF header lies: (offset, size, kind); the byte span of
    each metadata entry and tensor info; where the header ends."""
    fields: list = field(default_factory=list)
    kvs: list = field(default_factory=list)          # (start, end, key)
    tensors: list = field(default_factory=list)      # (start, end, name)
    header_end: int = 0
    alignment: int = 32


def walk_gguf(data: bytes) -> GGUFLayout:
    """The layout in qwen_np/formats/gguf.py's docstring, walked on a file this script wrote."""
    out = GGUFLayout()
    pos = 0

    def integer(size, kind):
        nonlocal pos
        out.fields.append((pos, size, kind))
        v = int.from_bytes(data[pos:pos + size], "little")
        pos += size
        return v

    def value(vtype, key):
        nonlocal pos
        if vtype == 8:
            n = integer(8, "string_length")
            pos += n
        elif vtype == 9:
            etype = integer(4, "array_type")
            count = integer(8, "array_count")
            if etype in GGUF_SCALAR_SIZES:
                pos += count * GGUF_SCALAR_SIZES[etype]
            else:
                for _ in range(count):
                    value(etype, key)
        else:
            if key == "general.alignment":
                out.fields.append((pos, GGUF_SCALAR_SIZES[vtype], "alignment"))
                out.alignment = int.from_bytes(data[pos:pos + 4], "little")
            pos += GGUF_SCALAR_SIZES[vtype]

    integer(4, "magic")
    integer(4, "version")
    n_tensors = integer(8, "tensor_count")
    n_kv = integer(8, "kv_count")
    for _ in range(n_kv):
        start = pos
        n = integer(8, "key_length")
        key = data[pos:pos + n].decode()
        pos += n
        value(integer(4, "value_type"), key)
        out.kvs.append((start, pos, key))
    for _ in range(n_tensors):
        start = pos
        n = integer(8, "tensor_name_length")
        name = data[pos:pos + n].decode()
        pos += n
        for _ in range(integer(4, "n_dims")):
            integer(8, "ne")
        integer(4, "tensor_type")
        integer(8, "tensor_offset")
        out.tensors.append((start, pos, name))
    out.header_end = pos
    return out


def gguf_string(s: str) -> bytes:
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def gguf_value(vtype: int, v) -> bytes:
    if vtype == 8:
        return gguf_string(v)
    if vtype == 9:
        etype, items = v
        return struct.pack("<IQ", etype, len(items)) + b"".join(gguf_value(etype, x) for x in items)
    return struct.pack(GGUF_SCALAR_FORMATS[vtype], v)


def gguf_nested_array(depth: int) -> bytes:
    """An array of one array of one array ... of no u8, as a value (after the value type)."""
    return struct.pack("<IQ", 9, 1) * depth + struct.pack("<IQ", 0, 0)


def gguf_with_header(data: bytes, layout: GGUFLayout, header: bytes, kv_delta=0,
                     tensor_delta=0) -> bytes:
    """A new header (everything before the data section) in front of the old data section,
    padded to the alignment, with the counts adjusted."""
    header = bytearray(header)
    n_tensors, n_kv = struct.unpack_from("<QQ", header, 8)
    struct.pack_into("<QQ", header, 8, n_tensors + tensor_delta, n_kv + kv_delta)
    align = layout.alignment if layout.alignment > 0 else 32
    data_start = -(-layout.header_end // align) * align
    return bytes(header) + b"\0" * (-len(header) % align) + data[data_start:]


def gguf_field_values(rng, kind, old, size, remaining):
    common = [0, 1, 2**31, 2**32 - 1, 2**32, 2**63, 2**64 - 1, 2**40, remaining, remaining + 1,
              max(old - 1, 0), old + 1]
    special = {
        "version": [0, 1, 2, 3, 4, 2**32 - 1],
        "value_type": list(range(13)) + [13, 255],
        "array_type": [9, 9, 8, 13, 255, 0, 10, 12],
        "n_dims": [0, 9, 5, 3, 1, 2**32 - 1],
        "tensor_type": [0, 1, 2, 3, 6, 7, 8, 9, 10, 12, 13, 14, 15, 16, 24, 30, 39, 40, 255],
        "tensor_offset": [old + 1, old + 31, 0, 2**64 - 32, 2**63, remaining],
        "alignment": [0, 3, 1, 2, 2**31, 2**32 - 1, 64],
        "ne": [0, 1, 2**31, 2**32, 2**63, 2**64 - 1, old * 2, max(old - 1, 0), old * 32],
    }
    v = rng.choice(special.get(kind, []) + common)
    return v % (1 << (8 * size))


def mutate_gguf_field(rng, data: bytes) -> tuple[bytes, str]:
    """One or two integer fields of the header (counts, lengths, types, dims, offsets)."""
    layout = walk_gguf(data)
    by_kind = defaultdict(list)
    for f in layout.fields:
        by_kind[f[2]].append(f)
    b = bytearray(data)
    done = []
    for _ in range(rng.choice([1, 1, 2])):
        kind = rng.choice(sorted(by_kind))
        pos, size, _ = rng.choice(by_kind[kind])
        old = int.from_bytes(b[pos:pos + size], "little")
        v = gguf_field_values(rng, kind, old, size, len(b) - pos - size)
        b[pos:pos + size] = v.to_bytes(size, "little")
        done.append(f"{kind} at {pos}: {old} -> {v}")
    return bytes(b), "; ".join(done)


GGUF_KEYS = ["general.architecture", "{a}.block_count", "{a}.embedding_length",
             "{a}.attention.head_count", "{a}.attention.head_count_kv", "{a}.context_length",
             "{a}.feed_forward_length", "{a}.rope.freq_base", "{a}.attention.layer_norm_rms_epsilon",
             "{a}.attention.key_length", "tokenizer.ggml.model", "tokenizer.ggml.pre",
             "tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type",
             "tokenizer.ggml.eos_token_id", "general.alignment"]
GGUF_VALUES = [(4, 0), (4, 1), (4, 2**32 - 1), (4, 3), (10, 2**63), (10, 2**64 - 1), (11, -1),
               (5, -1), (6, float("nan")), (6, 0.0), (6, float("inf")), (12, 1e308), (8, "x"),
               (8, ""), (8, "llama"), (8, "qwen3moe"), (7, True), (9, (0, [])), (9, (8, ["x"])),
               (9, (5, [-1, 2**31 - 1])), (9, (6, [float("nan")])), (9, (8, [""] * 3)),
               (9, (9, [(0, [1])]))]


def mutate_gguf_kv(rng, data: bytes) -> tuple[bytes, str]:
    """A metadata entry retyped, deleted, repeated or added; a tensor info deleted or repeated;
    a deeply nested array appended."""
    layout = walk_gguf(data)
    kv_end = layout.kvs[-1][1]
    head = data[:layout.header_end]
    arch = next((data[s:e] for s, e, k in layout.kvs if k == "general.architecture"), b"qwen2")
    arch = arch[-5:].decode()   # the string's last bytes: "qwen2" / "qwen3"
    op = rng.choice(["retype", "retype", "retype", "delete", "repeat", "nested", "drop_tensor",
                     "repeat_tensor"])
    if op in ("retype", "repeat"):
        key = rng.choice(GGUF_KEYS).format(a=arch)
        vtype, v = rng.choice(GGUF_VALUES)
        kv = gguf_string(key) + struct.pack("<I", vtype) + gguf_value(vtype, v)
        old = next(((s, e) for s, e, k in layout.kvs if k == key), None)
        if op == "retype" and old is not None:
            return gguf_with_header(data, layout, head[:old[0]] + kv + head[old[1]:]), \
                f"{key} = type {vtype} {v!r:.40}"
        return gguf_with_header(data, layout, head[:kv_end] + kv + head[kv_end:], kv_delta=1), \
            f"{key} added = type {vtype} {v!r:.40}"
    if op == "delete":
        s, e, key = rng.choice(layout.kvs)
        return gguf_with_header(data, layout, head[:s] + head[e:], kv_delta=-1), f"{key} deleted"
    if op == "nested":
        depth = rng.choice([2, 1000, 100_000])
        kv = gguf_string("fuzz.nested") + struct.pack("<I", 9) + gguf_nested_array(depth)
        return gguf_with_header(data, layout, head[:kv_end] + kv + head[kv_end:], kv_delta=1), \
            f"array nested {depth} deep added"
    s, e, name = rng.choice(layout.tensors)
    if op == "drop_tensor":
        return gguf_with_header(data, layout, head[:s] + head[e:], tensor_delta=-1), \
            f"tensor {name} deleted"
    return gguf_with_header(data, layout, head + head[s:e], tensor_delta=1), \
        f"tensor {name} repeated"


# --- qwen.tiktoken mutations ---------------------------------------------------------------

def tiktoken_lines(data: bytes) -> list[list[bytes]]:
    """[token field, rank field] of each line of a file this script wrote."""
    return [line.split(b" ") for line in data.splitlines()]


def join_tiktoken(lines: list[list[bytes]], end: bytes = b"\n") -> bytes:
    return b"".join(b" ".join(fields) + end for fields in lines)


def renumber(lines: list[list[bytes]]) -> None:
    """Ranks 0, 1, 2 ... again, after lines were added or removed."""
    for rank, fields in enumerate(lines):
        fields[1] = b"%d" % rank


def mutate_tiktoken_line(rng, data: bytes) -> tuple[bytes, str]:
    """Whole lines deleted, repeated, swapped, or blank: ranks missing or out of order and
    tokens repeated, or (ranks renumbered) a shorter or reordered vocabulary."""
    lines = tiktoken_lines(data)
    i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
    op = rng.choice(["delete", "duplicate", "swap", "blank"])
    if op == "delete":
        del lines[i]
        desc = f"line {i + 1} deleted"
    elif op == "duplicate":
        lines.insert(i, list(lines[i]))
        desc = f"line {i + 1} repeated"
    elif op == "swap":
        lines[i], lines[j] = lines[j], lines[i]
        desc = f"lines {i + 1} and {j + 1} swapped"
    else:
        lines.insert(i, [b""])
        desc = f"blank line before line {i + 1}"
    if op != "blank" and rng.random() < 0.3:
        renumber(lines)
        desc += ", ranks renumbered"
    return join_tiktoken(lines), desc


def mutate_tiktoken_rank(rng, data: bytes) -> tuple[bytes, str]:
    """One rank set to another number (near, negative, huge) or to something else."""
    lines = tiktoken_lines(data)
    i = rng.randrange(len(lines))
    r = int(lines[i][1])
    numbers = [r + 1, r - 1, 0, len(lines), -1, -r, -2**63, 2**31, 2**32, 2**63, 2**64, 10**30]
    others = [b"", b"x", b"1.5", b"1e3", b"0x10", b"+%d" % r, b"0%d" % r, b"%d_0" % r,
              b"\xd9\xa1", b"1" * 5000, b"%d\0" % r, b"nan", b"-0"]
    new = b"%d" % rng.choice(numbers) if rng.random() < 0.5 else rng.choice(others)
    old, lines[i][1] = lines[i][1], new
    return join_tiktoken(lines), f"line {i + 1}: rank {old.decode()} -> {new[:20]!r}"


def mutate_tiktoken_token(rng, data: bytes) -> tuple[bytes, str]:
    """One token field corrupted (bad base64, empty), extra fields, or a new token added at
    the next rank (special tokens' text, bytes that are not UTF-8, a long one)."""
    lines = tiktoken_lines(data)
    i = rng.randrange(len(lines))
    token = lines[i][0]
    op = rng.choice(["base64", "base64", "empty", "extra_field", "new_token"])
    if op == "base64":
        new = rng.choice([token[:-1], token + b"=", token.rstrip(b"="), b"!" + token,
                          token + b"\xff", b"====", b"=" + token, token.lower(), token.upper(),
                          token.replace(b"=", b"-"), b"-_" + token, token[:2] + b"\0" + token[2:],
                          base64.urlsafe_b64encode(b"\xfb\xff"), b"\xef\xbb\xbf" + token])
        lines[i][0] = new
        return join_tiktoken(lines), f"line {i + 1}: token {token!r} -> {new[:20]!r}"
    if op == "empty":
        lines[i][0] = rng.choice([b"", b"="])
        return join_tiktoken(lines), f"line {i + 1}: token {token!r} -> {lines[i][0]!r}"
    if op == "extra_field":
        extra = rng.choice([b" 0", b" x", b" " + lines[i][1], b"\t", b" ", b"\x0b", b" #"])
        lines[i][1] += extra
        return join_tiktoken(lines), f"line {i + 1}: {extra!r} appended"
    new = rng.choice([b"<|endoftext|>", b"<|im_start|>", b"<|extra_0|>", b"\0", b"\xff\xfe",
                      b"\xe4\xbd\xa0\xe5\xa5\xbd", b"def", b" return", b"x" * 1000,
                      base64.b64decode(token) + b"\x80", base64.b64decode(token)])
    lines.append([base64.b64encode(new), b"%d" % len(lines)])
    return join_tiktoken(lines), f"token {new[:20]!r} added at rank {len(lines) - 1}"


def mutate_tiktoken_file(rng, data: bytes) -> tuple[bytes, str]:
    """The file as a whole: line endings, a byte-order mark, an empty file, a line of 10^6
    characters, or so many tokens first that every rank lies past the model's vocabulary."""
    lines = tiktoken_lines(data)
    op = rng.choice(["crlf", "cr", "no_final_newline", "bom", "empty", "long_line",
                     "ranks_past_vocab"])
    if op == "crlf":
        return join_tiktoken(lines, b"\r\n"), "CRLF line endings"
    if op == "cr":
        return join_tiktoken(lines, b"\r"), "CR line endings"
    if op == "no_final_newline":
        return join_tiktoken(lines)[:-1], "no newline after the last line"
    if op == "bom":
        return b"\xef\xbb\xbf" + data, "UTF-8 byte-order mark first"
    if op == "empty":
        new = rng.choice([b"", b"\n", b"\r\n", b" "])
        return new, f"file = {new!r}"
    if op == "long_line":
        n = 10**6
        i = rng.randrange(len(lines) + 1)
        kind = rng.choice(["token", "not_base64", "rank", "no_newline"])
        if kind == "token":     # a valid token of 750,000 bytes, at rank i
            lines.insert(i, [base64.b64encode(rng.randbytes(n * 3 // 4)), b""])
            renumber(lines)
        elif kind == "not_base64":
            lines.insert(i, [b"!" * n, b"%d" % i])
        elif kind == "rank":
            lines.insert(i, [base64.b64encode(b"\0\1"), b"7" * n])
        else:
            return data + b"A" * n, "10^6 characters after the last line, no newline"
        return join_tiktoken(lines), f"line of 10^6 characters ({kind}) at line {i + 1}"
    k = rng.choice([100, 1000, 20_000])
    filler = [[base64.b64encode(b"\0fill%d" % n), b""] for n in range(k)]
    lines = filler + lines
    renumber(lines)
    return join_tiktoken(lines), f"{k} tokens first (every rank + {k})"


TIKTOKEN_MUTATORS = {"tiktoken_line": mutate_tiktoken_line, "tiktoken_rank": mutate_tiktoken_rank,
                     "tiktoken_token": mutate_tiktoken_token, "tiktoken_file": mutate_tiktoken_file}


# --- file-system mutations -----------------------------------------------------------------

def replace_path(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


def mutate_fs(rng, ctx, target: str) -> str:
    """The target file (or the model path itself) replaced by something that is not a file."""
    op = rng.choice(["fifo", "directory", "empty", "symlink_outside", "symlink_outside_abs",
                     "symlink_dev_zero", "dangling_symlink", "symlink_loop", "delete",
                     "model_fifo", "model_symlink_outside", "model_other_kind"])
    if op.startswith("model_"):
        target = ctx.model
    replace_path(target)
    rel = os.path.relpath(ctx.sentinel, os.path.dirname(target))
    if op in ("fifo", "model_fifo"):
        os.mkfifo(target)
    elif op == "directory":
        os.mkdir(target)
    elif op == "empty":
        open(target, "wb").close()
    elif op in ("symlink_outside", "model_symlink_outside"):
        os.symlink(rel, target)
    elif op == "symlink_outside_abs":
        os.symlink(ctx.sentinel, target)
    elif op == "symlink_dev_zero":
        os.symlink("/dev/zero", target)
    elif op == "dangling_symlink":
        os.symlink("missing-file", target)
    elif op == "symlink_loop":
        os.symlink(os.path.basename(target), target)
    elif op == "model_other_kind":
        if target.endswith(".gguf"):
            os.mkdir(target)
        else:
            open(target, "wb").close()
    return f"{op}"


# --- one input ------------------------------------------------------------------------------

MUTATORS = {
    "gguf": ["gguf_field", "gguf_field", "gguf_kv", "gguf_kv", "bytes", "fs"],
    "safetensors": ["st_entry", "st_entry", "st_header", "bytes", "fs"],
    "index": ["index_shards", "index_shards", "json_value", "json_keys", "json_known",
              "json_deep", "bytes", "fs"],
}
for _fmt in ("config", "generation_config", "quant_config", "tokenizer"):
    MUTATORS[_fmt] = ["json_value", "json_keys", "json_known", "json_known", "json_deep",
                      "bytes", "fs"]
MUTATORS["tokenizer"] += ["tokenizer_ids"]
MUTATORS["tiktoken"] = [*TIKTOKEN_MUTATORS, "bytes", "fs"]
MUTATORS["config"] += ["swap"]
MUTATORS["safetensors"] += ["swap"]


@dataclass
class InputContext:
    model: str        # the path handed to qwen_np.load: a folder or a .gguf file
    sentinel: str     # the planted file outside the model, holding the marker
    sentinel_rel: str  # the same, relative to the model folder


@dataclass
class Input:
    index: int
    seed: str
    fmt: str
    mutator: str
    target: str
    description: str
    dir: str          # holds the model, the sentinel, the child's output
    model: str


def make_input(seeds: list[Seed], formats: list[str], run_seed: int, index: int,
               dest: str, marker: str) -> Input:
    """Input `index` of run `run_seed`, written under dest (a new folder). Every choice is drawn
    from one random.Random(f"{run_seed}/{index}"), so it is the same every time."""
    rng = random.Random(f"{run_seed}/{index}")
    usable = [f for f in formats if any(f in s.targets for s in seeds)]
    fmt = rng.choice(usable)
    seed = rng.choice([s for s in seeds if fmt in s.targets])
    mutator = rng.choice(MUTATORS[fmt])
    target = rng.choice(seed.targets[fmt])
    if "#" in target and mutator not in JSON_MUTATORS:
        mutator = "json_known"

    os.makedirs(dest)
    model = os.path.join(dest, "model.gguf" if seed.path.endswith(".gguf") else "model")
    (shutil.copyfile if os.path.isfile(seed.path) else shutil.copytree)(seed.path, model)
    sentinel = os.path.join(dest, "sentinel.txt")
    with open(sentinel, "w") as f:
        f.write(f"{marker}\n")
    ctx = InputContext(model, sentinel, os.path.relpath(sentinel, model))
    file_path = model if target == "" else os.path.join(model, target.split("#")[0])

    if mutator == "swap":
        donor = rng.choice(donor_files(seeds, seed, fmt))
        replace_path(file_path)
        shutil.copyfile(donor, file_path)
        desc = f"replaced by {os.path.relpath(donor, os.path.dirname(seed.path))}"
    elif mutator == "fs":
        desc = mutate_fs(rng, ctx, file_path)
    elif mutator in JSON_MUTATORS:
        with open(file_path, encoding="utf-8") as f:
            whole = json.load(f)
        subtree = target.partition("#")[2]
        obj = whole[subtree] if subtree else whole
        obj, desc = JSON_MUTATORS[mutator](rng, obj, fmt, ctx)
        if subtree:
            whole[subtree] = obj
            desc = f"{subtree}: {desc}"
        else:
            whole = obj
        with open(file_path, "w", encoding="utf-8") as f:
            f.write(dump_json(whole))
    else:
        with open(file_path, "rb") as f:
            data = f.read()
        binary = {"bytes": mutate_bytes, "st_entry": mutate_st_entry, "st_header": mutate_st_header,
                  "gguf_field": mutate_gguf_field, "gguf_kv": mutate_gguf_kv,
                  **TIKTOKEN_MUTATORS}[mutator]
        data, desc = binary(rng, data)
        with open(file_path, "wb") as f:
            f.write(data)
    name = target or os.path.basename(model)
    return Input(index, seed.name, fmt, mutator, target, f"{seed.name} {name}: {desc}", dest, model)


def donor_files(seeds: list[Seed], seed: Seed, fmt: str) -> list[str]:
    """Files of the same format from the other folder seeds: two checkpoints mixed up."""
    return [os.path.join(s.path, t) for s in seeds if s is not seed and os.path.isdir(s.path)
            for t in s.targets.get(fmt, []) if "#" not in t]


def copy_input(src: str, dst: str, top: tuple[str, str] | None = None) -> None:
    """Copy an input folder that may hold FIFOs and symlinks (shutil would block on a FIFO),
    rewriting absolute paths into src (in symlinks and small files) to point into dst."""
    old, new = top or (src, dst)
    os.makedirs(dst)
    for name in sorted(os.listdir(src)):
        s, d = os.path.join(src, name), os.path.join(dst, name)
        mode = os.lstat(s).st_mode
        if stat.S_ISLNK(mode):
            os.symlink(os.readlink(s).replace(old, new), d)
        elif stat.S_ISDIR(mode):
            copy_input(s, d, (old, new))
        elif stat.S_ISFIFO(mode):
            os.mkfifo(d)
        elif stat.S_ISREG(mode):
            with open(s, "rb") as f:
                data = f.read()
            if len(data) < 2**20:
                data = data.replace(old.encode(), new.encode())
            with open(d, "wb") as f:
                f.write(data)


# --- running one input in a child -----------------------------------------------------------

def load_and_generate(path: str) -> dict:
    """What a user does with a model: load, encode, generate, decode. load_tokenizer (the
    tokenizer alone) runs after load, which builds its tokenizer only when it is first used,
    so that a mutated tokenizer file reaches load_tokenizer first; its ids must be the
    model tokenizer's."""
    import qwen_np
    m = qwen_np.load(path, backend="numpy")
    has_tokenizer = not os.path.isdir(path) or any(
        os.path.lexists(os.path.join(path, name)) for name in ("tokenizer.json", "qwen.tiktoken"))
    ids = [1, 2, 3]
    if has_tokenizer:
        alone = qwen_np.load_tokenizer(path).encode(PROMPT)
        ids = m.tokenizer.encode(PROMPT)
        if alone != ids:
            raise AssertionError(f"load_tokenizer encodes {alone}, load(...).tokenizer {ids}")
    new = m.generate(ids[:8], max_new_tokens=2)
    text = m.tokenizer.decode(new) if has_tokenizer else ""
    return {"new": [int(i) for i in new], "text": text}


def run_cli(path: str) -> dict:
    """`qwen-np run -m PATH -p hi -n 2`, its exit status (stderr is the child's stderr file)."""
    from qwen_np.apps.cli import main
    try:
        rc = main(["run", "-m", path, *CLI_ARGS])
    except SystemExit as e:    # argparse exits; the status is what a shell would see
        rc = e.code if isinstance(e.code, int) else 1
    sys.stdout.flush()
    sys.stderr.flush()
    return {"rc": rc}


TARGETS = {"api": load_and_generate, "cli": run_cli}


def is_qwen_np_error(e: BaseException) -> bool:
    return any(c.__name__ == "QwenNpError" and c.__module__.startswith("qwen_np")
               for c in type(e).__mro__)


def execute(target, path: str) -> dict:
    """Run target(path); the report the parent classifies (plain JSON-able values)."""
    try:
        return {"result": target(path), "error": None}
    except BaseException as e:  # noqa: B036 - SystemExit and KeyboardInterrupt are outcomes too
        frames = traceback.extract_tb(e.__traceback__)
        return {"result": None, "error": {
            "type": type(e).__qualname__ if type(e).__module__ == "builtins"
            else f"{type(e).__module__}.{type(e).__qualname__}",
            "message": safe_str(e),
            "qwen_np": is_qwen_np_error(e),
            "memory": isinstance(e, MemoryError) or
            (isinstance(e, OSError) and e.errno == errno.ENOMEM),
            "frames": [(f.filename, f.lineno, f.name) for f in frames[-12:]],
            "traceback": "".join(traceback.format_exception(type(e), e, e.__traceback__)),
        }}


def safe_str(e: BaseException) -> str:
    try:
        return str(e)
    except BaseException as inner:  # noqa: B036
        return f"<str() raised {type(inner).__name__}>"


def limit_child(memory_limit: int, time_limit: float, err_fd: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    # where a crash or a hang happened, written to the stderr file for the parent to read
    faulthandler.enable(file=err_fd)
    faulthandler.dump_traceback_later(max(time_limit * 0.9, time_limit - 2), file=err_fd)


@dataclass
class Task:
    index: int
    mode: str               # "api" or "cli", or a name for a planted target
    path: str               # the model path handed to the target
    dir: str                # where stdout.txt and stderr.txt go
    target: object          # path -> dict, run in the child
    input: Input | None = None


@dataclass
class Result:
    task: Task
    outcome: str
    kind: str = ""          # exception type, signal, ...
    where: str = ""         # file:line (function)
    message: str = ""
    why: str = ""           # what made a QwenNpError or an exit not clean
    frames: list = field(default_factory=list)   # the innermost few, as file:line (function)
    saved: str = ""


def start_child(task: Task, time_limit: float, memory_limit: int):
    """fork; the child runs task.target and writes its JSON report to a pipe. (pid, read fd)"""
    r, w = os.pipe()
    flush_all()
    pid = os.fork()
    if pid:
        os.close(w)
        return pid, r
    try:
        os.close(r)
        null = os.open(os.devnull, os.O_RDONLY)
        out = os.open(os.path.join(task.dir, "stdout.txt"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        err = os.open(os.path.join(task.dir, "stderr.txt"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(err, 2)
        # new writers on the new fds: the old sys.stdout need not write to fd 1 (under
        # pytest's capture it does not)
        sys.stdout = open(1, "w", encoding="utf-8", errors="backslashreplace", closefd=False)
        sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False)
        limit_child(memory_limit, time_limit, 2)
        report = execute(task.target, task.path)
        flush_all()
        data = json.dumps(report, default=repr).encode()
        while data:
            data = data[os.write(w, data[:65536]):]
    finally:
        os._exit(0)


def flush_all() -> None:
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass


def read_output(task: Task) -> tuple[str, str]:
    out = []
    for name in ("stdout.txt", "stderr.txt"):
        try:
            with open(os.path.join(task.dir, name), "rb") as f:
                out.append(f.read(1 << 20).decode("utf-8", "replace"))
        except OSError:
            out.append("")
    return out[0], out[1]


# --- classification -------------------------------------------------------------------------

def where_of(frames) -> str:
    """The innermost frame in this project's code (else the innermost frame), as file:line."""
    if not frames:
        return ""
    own = [f for f in frames if os.path.abspath(f[0]).startswith(REPO + os.sep)
           and os.path.abspath(f[0]) != os.path.abspath(__file__)]
    return show_frame((own or frames)[-1])


def show_frame(frame) -> str:
    filename, line, name = frame
    rel = os.path.relpath(filename, REPO) if filename.startswith(REPO) else os.path.basename(filename)
    return f"{rel}:{line} ({name})"


def frames_from_dump(text: str) -> list:
    """faulthandler's dump (innermost first) of the main thread, as (file, line, function)."""
    blocks = re.split(r"\n(?=(?:Current thread|Thread) 0x)", text)
    main = [b for b in blocks if "dump_traceback_later" not in b and "File " in b]
    frames = re.findall(r'File "([^"]+)", line (\d+) in (\S+)', main[-1] if main else "")
    return [(f, int(n), fn) for f, n, fn in reversed(frames)]


def classify(task: Task, report: dict | None, status: int, timed_out: bool, stdout: str,
             stderr: str, marker: str) -> Result:
    if marker and (marker in stdout or marker in stderr or marker in json.dumps(report or {})):
        text = stdout + stderr + json.dumps(report or {})
        line = next((ln for ln in text.splitlines() if marker in ln), "")
        error = (report or {}).get("error") or {}
        return Result(task, "leak", "marker in output", where_of(error.get("frames", [])),
                      line.strip()[:200])
    if timed_out:
        return Result(task, "hang", "time limit", where_of(frames_from_dump(stderr)))
    if report is None:
        frames = frames_from_dump(stderr)
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            try:
                name = signal.Signals(sig).name
            except ValueError:
                name = f"signal {sig}"
            if sig == signal.SIGKILL or "memory allocation of" in stderr:
                return Result(task, "memory", f"killed by {name}", where_of(frames),
                              last_line(stderr))
            return Result(task, "crash", f"killed by {name}", where_of(frames), last_line(stderr))
        code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else status
        return Result(task, "crash", f"exit status {code} without a report", where_of(frames),
                      last_line(stderr))
    error = report["error"]
    if error is None:
        result = report["result"] or {}
        if "rc" in result:
            return classify_cli_exit(task, result["rc"], stderr)
        return Result(task, "load")
    result = classify_error(task, error)
    result.frames = [show_frame(f) for f in error["frames"][-5:]]
    return result


def classify_error(task: Task, error: dict) -> Result:
    where = where_of(error["frames"])
    message = error["message"]
    if error["memory"]:
        return Result(task, "memory", error["type"], where, first_line(message))
    if error["qwen_np"]:
        lines = message.splitlines()
        if len(lines) > 1:
            return Result(task, "traceback", error["type"], where, first_line(message),
                          f"message of {len(lines)} lines")
        if task.path not in message:
            return Result(task, "traceback", error["type"], where, message[:300],
                          "message does not name the input")
        return Result(task, "clean", error["type"], where, message[:300])
    return Result(task, "traceback", error["type"], where, first_line(message))


def classify_cli_exit(task: Task, rc, stderr: str) -> Result:
    lines = stderr.strip().splitlines()
    if rc == 0:
        return Result(task, "load")
    if rc == 1 and len(lines) == 1 and lines[0].startswith("qwen-np: error: "):
        if task.path in lines[0]:
            return Result(task, "clean", "exit 1", "", lines[0][:300])
        return Result(task, "traceback", "exit 1", "", lines[0][:300],
                      "message does not name the input")
    # what else reached stderr: the first warning names where it came from
    warning = re.search(r"^(/\S+):(\d+): (\w+Warning)", stderr, re.M)
    where = where_of([(warning[1], int(warning[2]), warning[3])]) if warning else ""
    return Result(task, "traceback", f"exit {rc}", where, last_line(stderr),
                  f"stderr of {len(lines)} lines")


def first_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[0][:300]


def last_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[-1][:300]


# --- the run --------------------------------------------------------------------------------

def run_tasks(tasks, jobs: int, time_limit: float, memory_limit: int, marker: str,
              on_result) -> None:
    """Run tasks (an iterator) `jobs` at a time, each in a forked child; on_result(Result)."""
    tasks = iter(tasks)
    running = {}     # read fd -> [task, pid, deadline, bytes]
    exhausted = False
    while running or not exhausted:
        while not exhausted and len(running) < jobs:
            task = next(tasks, None)
            if task is None:
                exhausted = True
                break
            pid, fd = start_child(task, time_limit, memory_limit)
            running[fd] = [task, pid, time.monotonic() + time_limit, bytearray()]
        if not running:
            break
        ready, _, _ = select.select(list(running), [], [], 0.05)
        finished = []
        for fd in ready:
            chunk = os.read(fd, 1 << 16)
            if chunk:
                running[fd][3] += chunk
            else:
                finished.append((fd, False))
        now = time.monotonic()
        finished += [(fd, True) for fd, job in running.items()
                     if now > job[2] and (fd, False) not in finished]
        for fd, timed_out in finished:
            task, pid, _, data = running.pop(fd)
            os.close(fd)
            if timed_out:
                os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            try:
                report = json.loads(bytes(data)) if data and not timed_out else None
            except ValueError:
                report = None
            stdout, stderr = read_output(task)
            on_result(classify(task, report, status, timed_out, stdout, stderr, marker))


def input_tasks(seeds, formats, run_seed, count, work, marker, cli_every):
    """The API task of each input, and every cli_every-th input's CLI task (its own copy)."""
    for i in range(count):
        modes = ["api"] + (["cli"] if cli_every and i % cli_every == 0 else [])
        for mode in modes:
            dest = os.path.join(work, f"{i:06d}-{mode}")
            inp = make_input(seeds, formats, run_seed, i, dest, marker)
            yield Task(i, mode, inp.model, dest, TARGETS[mode], inp)


class Report:
    """Counts, the one-line list of failures, saved inputs; the final summary."""

    def __init__(self, count: int, out: str | None, marker: str, time_limit, memory_gb):
        self.count, self.out, self.marker = count, out, marker
        self.time_limit, self.memory_gb = time_limit, memory_gb
        self.results: list[Result] = []
        self.start = time.monotonic()
        self.last_progress = 0.0

    def add(self, r: Result) -> None:
        if r.outcome in FAILURES:
            r.saved = self.save(r)
        if r.task.input is not None:
            shutil.rmtree(r.task.dir, ignore_errors=True)
        self.results.append(r)
        now = time.monotonic()
        if now - self.last_progress > 2:
            self.last_progress = now
            done = sum(1 for x in self.results if x.task.mode == "api")
            counts = Counter(x.outcome for x in self.results)
            print(f"[fuzz] {done}/{self.count} inputs, {done / (now - self.start):.1f}/s  " +
                  " ".join(f"{o} {counts[o]}" for o in OUTCOMES if counts[o]), file=sys.stderr)

    def save(self, r: Result) -> str:
        if self.out is None:
            self.out = tempfile.mkdtemp(prefix="qwen-np-fuzz-out-")
        inp = r.task.input
        dst = os.path.join(self.out, f"{r.task.index:06d}-{r.task.mode}-{r.outcome}")
        if inp is None or os.path.exists(dst):
            return ""
        copy_input(r.task.dir, dst)
        with open(os.path.join(dst, "replay.json"), "w") as f:
            json.dump({"mode": r.task.mode, "model": os.path.basename(inp.model),
                       "marker": self.marker, "description": inp.description,
                       "format": inp.fmt, "mutator": inp.mutator, "outcome": r.outcome,
                       "kind": r.kind, "where": r.where, "message": r.message, "why": r.why,
                       "frames": r.frames,
                       "time_limit": self.time_limit, "memory_limit_gb": self.memory_gb},
                      f, indent=2)
        with open(os.path.join(dst, "replay.sh"), "w") as f:
            f.write(f"#!/bin/sh\nexec {sys.executable} {os.path.abspath(__file__)} --replay {dst}\n")
        os.chmod(os.path.join(dst, "replay.sh"), 0o755)
        return dst

    def summary(self, run_seed: int, jobs: int) -> int:
        """Print the summary to stdout; the exit status."""
        elapsed = time.monotonic() - self.start
        api = [r for r in self.results if r.task.mode == "api"]
        cli = [r for r in self.results if r.task.mode == "cli"]
        print(f"seed {run_seed}: {len(api)} inputs (+{len(cli)} CLI runs) in {elapsed:.1f} s, "
              f"{len(api) / max(elapsed, 1e-9):.1f} inputs/s on {jobs} jobs")
        for label, rs in (("outcomes", api), ("CLI outcomes", cli)):
            if rs:
                counts = Counter(r.outcome for r in rs)
                print(f"{label}: " + ", ".join(f"{o} {counts[o]}" for o in OUTCOMES))
        print("per format and mutator:")
        table = defaultdict(Counter)
        for r in api:
            table[(r.task.input.fmt, r.task.input.mutator)][r.outcome] += 1
        for (fmt, mut), counts in sorted(table.items()):
            print(f"  {fmt:18} {mut:14} " +
                  " ".join(f"{o} {counts[o]}" for o in OUTCOMES if counts[o]))
        failures = [r for r in self.results if r.outcome in FAILURES]
        if failures:
            print(f"non-clean inputs ({len(failures)}):")
        for r in failures:
            print(f"  #{r.task.index} {r.task.mode} {r.outcome} {r.task.input.fmt}/"
                  f"{r.task.input.mutator} [{r.task.input.description[:120]}]: {describe(r)}")
        groups = defaultdict(list)
        for r in failures:
            groups[(r.task.mode, r.outcome, r.kind, r.where, r.why)].append(r)
        if groups:
            print(f"distinct failures ({len(groups)}):")
        for (mode, outcome, kind, where, why), rs in sorted(groups.items(), key=lambda g: -len(g[1])):
            print(f"  {len(rs):4}x {mode} {outcome}: {kind} at {where or '?'}"
                  f"{' (' + why + ')' if why else ''}: {rs[0].message[:160]}")
            print(f"        replay: python tools/fuzz.py --replay {rs[0].saved}")
        if failures:
            print(f"saved non-clean inputs under {self.out}; replay one with "
                  f"python tools/fuzz.py --replay DIR")
        print(f"total: {len(api)} inputs")
        return 1 if failures else 0


def describe(r: Result) -> str:
    text = f"{r.kind} at {r.where or '?'}"
    if r.why:
        text += f" ({r.why})"
    if r.message:
        text += f": {r.message[:160]}"
    return f"{text} -> {r.saved}" if r.saved else text


# --- the parent's set-up, replay, main ------------------------------------------------------

SINGLE_THREAD_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                     "NUMBA_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def import_libraries() -> None:
    """Once in the parent, so that each forked child starts with them loaded. One BLAS thread
    per child (there are --jobs children); must run before NumPy is first imported."""
    for k, v in SINGLE_THREAD_ENV.items():
        os.environ.setdefault(k, v)
    sys.path.insert(0, REPO)
    import numpy  # noqa: F401
    import tokenizers  # noqa: F401
    import qwen_np.apps.cli  # noqa: F401
    from qwen_np.backends import get_backend
    get_backend("numpy")


class Tee:
    """A text stream that writes through and keeps a copy."""

    def __init__(self, stream):
        self.stream, self.parts = stream, []

    def write(self, text):
        self.parts.append(text)
        return self.stream.write(text)

    def flush(self):
        self.stream.flush()

    def kept(self) -> str:
        return "".join(self.parts)


class TimeLimit(BaseException):
    """replay's alarm: neither an OSError (as TimeoutError is) nor an Exception, which the
    library turns into errors of its own (an OSError into "cannot read"), hiding the hang."""


def replay(folder: str) -> int:
    """One saved input in the foreground, with the same limits; prints the full traceback."""
    with open(os.path.join(folder, "replay.json")) as f:
        info = json.load(f)
    import_libraries()
    path = os.path.join(os.path.abspath(folder), info["model"])
    print(f"replaying {info['mode']} on {path}\n  {info['description']}", file=sys.stderr)
    memory_limit = int(info["memory_limit_gb"] * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
    faulthandler.enable()

    fired = []

    def on_alarm(signum, frame):
        fired.append(signum)
        raise TimeLimit(f"still running after {info['time_limit']} s")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(max(1, int(info["time_limit"])))
    # shown as it comes, and kept: the CLI's outcome depends on its stderr
    sys.stdout, sys.stderr = Tee(sys.stdout), Tee(sys.stderr)
    report = execute(TARGETS[info["mode"]], path)
    signal.alarm(0)
    stdout, stderr = sys.stdout.kept(), sys.stderr.kept()
    sys.stdout, sys.stderr = sys.stdout.stream, sys.stderr.stream
    if report["error"]:
        print(report["error"]["traceback"], file=sys.stderr)
    else:
        print(f"result: {report['result']}", file=sys.stderr)
    task = Task(0, info["mode"], path, folder, None)
    r = classify(task, report, 0, bool(fired), stdout, stderr, info["marker"])
    if r.outcome == "hang":     # where it was: the traceback, not a faulthandler dump
        r.where = where_of((report["error"] or {}).get("frames", []))
    print(f"outcome: {r.outcome}" + (f": {describe(r)}" if r.outcome != "load" else ""))
    return 1 if r.outcome in FAILURES else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Mutation fuzzer over model files (see the docstring).")
    p.add_argument("--seed", type=int, default=0, help="run seed: the same seed, the same inputs")
    p.add_argument("--count", type=int, default=1000, help="number of inputs")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="children at once")
    p.add_argument("--time-limit", type=float, default=20.0, help="seconds per input")
    p.add_argument("--memory-limit-gb", type=float, default=4.0,
                   help="address-space limit per child (RLIMIT_AS)")
    p.add_argument("--out", default=None, help="where non-clean inputs are saved "
                                               "(default: a new temporary folder)")
    p.add_argument("--formats", default=",".join(FORMATS),
                   help=f"comma-separated subset of {','.join(FORMATS)}")
    p.add_argument("--cli-every", type=int, default=0,
                   help="also run every Nth input through `qwen-np run` (0: never)")
    p.add_argument("--replay", metavar="DIR", help="run one saved input in the foreground")
    args = p.parse_args(argv)
    if args.replay:
        return replay(args.replay)
    formats = [f for f in args.formats.split(",") if f]
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        p.error(f"unknown formats {unknown}; choose from {','.join(FORMATS)}")

    root = os.path.realpath(tempfile.mkdtemp(prefix="qwen-np-fuzz-"))
    try:
        t0 = time.monotonic()
        seeds = build_seeds(root, with_gguf="gguf" in formats)
        import_libraries()
        print(f"[fuzz] {len(seeds)} seeds in {root} ({time.monotonic() - t0:.1f} s)",
              file=sys.stderr)
        marker = "qwen-np-fuzz-marker-" + os.urandom(12).hex()
        if args.out:
            os.makedirs(args.out, exist_ok=True)
        report = Report(args.count, os.path.abspath(args.out) if args.out else None, marker,
                        args.time_limit, args.memory_limit_gb)
        work = os.path.join(root, "work")
        os.makedirs(work)
        tasks = input_tasks(seeds, formats, args.seed, args.count, work, marker, args.cli_every)
        run_tasks(tasks, args.jobs, args.time_limit, int(args.memory_limit_gb * 2**30), marker,
                  report.add)
        return report.summary(args.seed, args.jobs)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
