"""Write a Qwen-7B-shaped GPTQ int4 checkpoint with random weights, in the layout of
Qwen-7B-Chat-Int4 (the original Qwen, `model_type: "qwen"`, v1 tensor names), for memory and
speed measurements at full size without the real weights.

    python tools/make_qwen7b_int4.py [--out /tmp/qwen-np-7b-int4] [--seed 0] [--shard-gb 2]
                                     [--zero-biases] [--check-load] [--no-tokenizer]

Written into --out:
    config.json                      Qwen-7B v1.1's config plus Qwen-7B-Chat-Int4's
                                     quantization_config (4 bits, group 128, sym, desc_act off)
    generation_config.json           eos_token_id 151643 (<|endoftext|>)
    model-0000k-of-0000n.safetensors shards of about --shard-gb GB (10^9 bytes)
    model.safetensors.index.json     {"metadata": {"total_size": N}, "weight_map": {...}}
    qwen.tiktoken                    the real tokenizer ranks (qwen_np.apps.fetch's cached copy)

Tensors (float16 unless said otherwise):
    transformer.wte.weight, lm_head.weight  [151936, 4096]  N(0, 0.02)
    transformer.ln_f.weight, transformer.h.{i}.ln_1.weight / ln_2.weight  [4096]  1 + N(0, 0.02)
    transformer.h.{i}.attn.c_attn.bias      [12288]         N(0, 0.02)
    and for each quantized module M of layer i (out x in):
        attn.c_attn [12288 x 4096], attn.c_proj [4096 x 4096], mlp.w1 and mlp.w2
        [11008 x 4096], mlp.c_proj [4096 x 11008]
    M.qweight  int32 [in/8, out]     random 32-bit words: every bit pattern is eight valid
                                     4-bit codes, so uniform codes 0..15
    M.qzeros   int32 [in/128, out/8] 0x77777777 (stored zero 7 = true zero 8 minus 1, AutoGPTQ v1)
    M.scales   float16 [in/128, out] uniform in [0.0035, 0.0051]: codes minus 8 have an rms of
                                     about 4.64, so the weights' rms is about 0.02
    M.g_idx    int32 [in]            i // 128
    M.bias     (--zero-biases) float16 [out] zeros on the modules that have no bias: what
                                     AutoGPTQ before 2024 wrote for every quantized module

Nothing is held whole in memory: each shard's safetensors header is computed from the shapes
first, then every tensor's bytes are generated and written in chunks of about --chunk-mb MB,
in header order. The writer's peak RSS (VmHWM) is printed at the end, with the bytes written
and the time taken. Every tensor is drawn from its own generator (seed, tensor number), so the
bytes do not depend on the chunk size.

Checks after writing: every shard opens with qwen_np.formats.safetensors.open_safetensors and holds
the tensors the index lists, with the planned dtypes and shapes, and a few tensors are read back
(qzeros, g_idx, the first and last rows of lm_head against a regeneration). --check-load also
runs `qwen_np.load(out, backend="numpy")` in a child process and prints its RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

VOCAB, HIDDEN, HEADS, LAYERS, KV_CHANNELS = 151936, 4096, 32, 32, 128
INTERMEDIATE = 22016           # Qwen's config holds twice the SwiGLU width
MLP = INTERMEDIATE // 2        # w1 and w2 have 11008 outputs
GROUP, BITS = 128, 4
PACK = 32 // BITS
EOS = 151643                   # <|endoftext|>

CONFIG = {
    "architectures": ["QWenLMHeadModel"],
    "auto_map": {"AutoConfig": "configuration_qwen.QWenConfig",
                 "AutoModelForCausalLM": "modeling_qwen.QWenLMHeadModel"},
    "model_type": "qwen",
    "attn_dropout_prob": 0.0,
    "bf16": False,
    "emb_dropout_prob": 0.0,
    "fp16": False,
    "fp32": False,
    "hidden_size": HIDDEN,
    "initializer_range": 0.02,
    "intermediate_size": INTERMEDIATE,
    "kv_channels": KV_CHANNELS,
    "layer_norm_epsilon": 1e-6,
    "max_position_embeddings": 32768,
    "no_bias": True,
    "num_attention_heads": HEADS,
    "num_hidden_layers": LAYERS,
    "onnx_safe": None,
    "rotary_emb_base": 10000,
    "rotary_pct": 1.0,
    "scale_attn_weights": True,
    "seq_length": 8192,
    "softmax_in_fp32": False,
    "tie_word_embeddings": False,
    "tokenizer_class": "QWenTokenizer",
    "torch_dtype": "float16",
    "use_cache": True,
    "use_cache_kernel": False,
    "use_cache_quantization": False,
    "use_dynamic_ntk": True,
    "use_flash_attn": "auto",
    "use_logn_attn": True,
    "vocab_size": VOCAB,
    "quantization_config": {"bits": BITS, "group_size": GROUP, "damp_percent": 0.01,
                            "desc_act": False, "static_groups": False, "sym": True,
                            "true_sequential": True, "model_name_or_path": None,
                            "model_file_base_name": "model", "quant_method": "gptq"},
}
GENERATION_CONFIG = {"chat_format": "chatml", "eos_token_id": EOS, "pad_token_id": EOS,
                     "max_window_size": 6144, "max_new_tokens": 512, "do_sample": False}

# module: (out, in), with the module's own bias if it has one
QUANTIZED = {"attn.c_attn": (3 * HIDDEN, HIDDEN), "attn.c_proj": (HIDDEN, HIDDEN),
             "mlp.w1": (MLP, HIDDEN), "mlp.w2": (MLP, HIDDEN), "mlp.c_proj": (HIDDEN, MLP)}
HAS_BIAS = ("attn.c_attn",)
ZERO_QWORD = 0x77777777        # eight stored zeros of 7
SCALE_LOW, SCALE_HIGH = 0.0035, 0.0051
STD = 0.02
CODES = {"F16": np.float16, "I32": np.int32}


class Spec:
    """One tensor to write: its name, safetensors dtype code, shape and how to make its bytes."""

    def __init__(self, name: str, code: str, shape: tuple[int, ...], kind: str, number: int):
        self.name, self.code, self.shape, self.kind, self.number = name, code, shape, kind, number

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * np.dtype(CODES[self.code]).itemsize

    def chunks(self, seed: int, chunk_bytes: int):
        """The tensor's bytes, row-major, as arrays of at most about chunk_bytes each."""
        rng = np.random.default_rng([seed, self.number])
        dtype = np.dtype(CODES[self.code])
        rows = self.shape[0]
        row_elems = int(np.prod(self.shape[1:])) if len(self.shape) > 1 else 1
        if len(self.shape) == 1:       # vectors are small: one chunk
            rows, row_elems = 1, self.shape[0]
        step = max(1, chunk_bytes // (row_elems * dtype.itemsize))
        for r0 in range(0, rows, step):
            n = min(step, rows - r0) * row_elems
            yield self.make(rng, n, r0 * row_elems)

    def make(self, rng, n: int, first: int) -> np.ndarray:
        """n elements of the tensor, starting at flat element `first`."""
        if self.kind == "normal":
            return (STD * rng.standard_normal(n, dtype=np.float32)).astype(np.float16)
        if self.kind == "norm":
            return (1 + STD * rng.standard_normal(n, dtype=np.float32)).astype(np.float16)
        if self.kind == "words":
            return np.frombuffer(rng.bytes(4 * n), dtype=np.int32)
        if self.kind == "zeros_words":
            return np.full(n, ZERO_QWORD, dtype=np.int32)
        if self.kind == "scales":
            return rng.uniform(SCALE_LOW, SCALE_HIGH, n).astype(np.float16)
        if self.kind == "g_idx":
            return ((first + np.arange(n)) // GROUP).astype(np.int32)
        if self.kind == "zero":
            return np.zeros(n, np.float16)
        raise ValueError(self.kind)


def tensor_plan(zero_biases: bool) -> list[Spec]:
    """Every tensor, in the order written: the embedding, the layers, the final norm, the head."""
    specs: list[Spec] = []

    def add(name, code, shape, kind):
        specs.append(Spec(name, code, tuple(shape), kind, len(specs)))

    add("transformer.wte.weight", "F16", (VOCAB, HIDDEN), "normal")
    for i in range(LAYERS):
        p = f"transformer.h.{i}."
        add(p + "ln_1.weight", "F16", (HIDDEN,), "norm")
        for m, (out, n_in) in QUANTIZED.items():
            add(p + m + ".qweight", "I32", (n_in // PACK, out), "words")
            add(p + m + ".qzeros", "I32", (n_in // GROUP, out // PACK), "zeros_words")
            add(p + m + ".scales", "F16", (n_in // GROUP, out), "scales")
            add(p + m + ".g_idx", "I32", (n_in,), "g_idx")
            if m in HAS_BIAS:
                add(p + m + ".bias", "F16", (out,), "normal")
            elif zero_biases:
                add(p + m + ".bias", "F16", (out,), "zero")
            if m == "attn.c_proj":
                add(p + "ln_2.weight", "F16", (HIDDEN,), "norm")
    add("transformer.ln_f.weight", "F16", (HIDDEN,), "norm")
    add("lm_head.weight", "F16", (VOCAB, HIDDEN), "normal")
    return specs


def shard_plan(specs: list[Spec], shard_bytes: int) -> list[list[Spec]]:
    """Consecutive tensors grouped into shards of at most shard_bytes (a larger tensor alone)."""
    shards, current, size = [], [], 0
    for s in specs:
        if current and size + s.nbytes > shard_bytes:
            shards.append(current)
            current, size = [], 0
        current.append(s)
        size += s.nbytes
    if current:
        shards.append(current)
    return shards


def shard_header(specs: list[Spec]) -> bytes:
    """The safetensors header (length prefix included) of a shard holding `specs` in order."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for s in specs:
        header[s.name] = {"dtype": s.code, "shape": list(s.shape),
                          "data_offsets": [offset, offset + s.nbytes]}
        offset += s.nbytes
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)      # the data section starts 8-byte aligned
    return struct.pack("<Q", len(head)) + head


def write_shard(path: str, specs: list[Spec], seed: int, chunk_bytes: int) -> int:
    """Write one shard, header first, then each tensor's bytes in chunks; returns its size."""
    with open(path, "wb") as f:
        f.write(shard_header(specs))
        for s in specs:
            written = 0
            for chunk in s.chunks(seed, chunk_bytes):
                f.write(memoryview(np.ascontiguousarray(chunk)).cast("B"))
                written += chunk.nbytes
            if written != s.nbytes:
                raise AssertionError(f"{s.name}: wrote {written} bytes, planned {s.nbytes}")
    return os.path.getsize(path)


def peak_rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def copy_tokenizer(out: str) -> str:
    from qwen_np.apps.fetch import QWEN_TIKTOKEN, fetch_file
    src = fetch_file(QWEN_TIKTOKEN)
    dst = os.path.join(out, "qwen.tiktoken")
    shutil.copyfile(src, dst)
    return dst


def check_written(out: str, shards: list[list[Spec]], names: list[str], seed: int) -> None:
    """Every shard opens with qwen_np's reader and holds what the plan says; a few values."""
    from qwen_np.formats.safetensors import open_safetensors
    with open(os.path.join(out, "model.safetensors.index.json")) as f:
        weight_map = json.load(f)["weight_map"]
    by_name = {}
    for specs, name in zip(shards, names):
        tensors = open_safetensors(os.path.join(out, name))
        if set(tensors) != {s.name for s in specs}:
            raise AssertionError(f"{name}: tensors differ from the plan")
        for s in specs:
            t = tensors[s.name]
            if t.dtype != np.dtype(CODES[s.code]) or tuple(t.shape) != s.shape:
                raise AssertionError(f"{s.name}: {t.dtype} {t.shape}, planned {s.code} {s.shape}")
            if weight_map.get(s.name) != name:
                raise AssertionError(f"{s.name}: index says {weight_map.get(s.name)}, not {name}")
            by_name[s.name] = (t, s)
    if len(weight_map) != len(by_name):
        raise AssertionError("the index lists tensors that no shard holds")
    p = f"transformer.h.{LAYERS - 1}."
    if not np.all(by_name[p + "mlp.c_proj.qzeros"][0] == ZERO_QWORD):
        raise AssertionError("qzeros are not all 0x77777777")
    if not np.array_equal(by_name[p + "mlp.c_proj.g_idx"][0], np.arange(MLP) // GROUP):
        raise AssertionError("g_idx is not i // 128")
    t, s = by_name["lm_head.weight"]
    first = next(s.chunks(seed, 1 << 20))
    if not np.array_equal(t.reshape(-1)[:first.size], first):
        raise AssertionError("lm_head's first rows differ from their regeneration")
    sc = by_name[p + "attn.c_attn.scales"][0]
    print(f"checked: {len(names)} shards open with qwen_np.formats.safetensors.open_safetensors, "
          f"{len(by_name)} tensors as planned; scales of layer {LAYERS - 1} c_attn in "
          f"[{float(sc.min()):.5f}, {float(sc.max()):.5f}], qzeros 0x77777777, g_idx i // 128")


CHECK_LOAD = r"""
import sys, time
import qwen_np
from qwen_np.runtime.process_memory import rss_bytes
t = time.perf_counter()
m = qwen_np.load(sys.argv[1], backend="numpy")
print(f"qwen_np.load (numpy backend): {time.perf_counter() - t:.1f} s, RSS "
      f"{rss_bytes() / 2**30:.2f} GiB, peak {rss_bytes('VmHWM') / 2**30:.2f} GiB; "
      f"{m.config.model_type}, {m.config.num_hidden_layers} layers, hidden {m.config.hidden_size}, "
      f"MLP {m.config.intermediate_size}, vocab {m.config.vocab_size}")
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="/tmp/qwen-np-7b-int4")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shard-gb", type=float, default=2.0, help="shard size, 10^9 bytes (default 2)")
    ap.add_argument("--chunk-mb", type=float, default=32.0,
                    help="bytes generated and written at a time, MB (default 32)")
    ap.add_argument("--no-tokenizer", action="store_true",
                    help="write no qwen.tiktoken (a machine without network and without "
                         "qwen_np.apps.fetch's cached copy: the GPU check)")
    ap.add_argument("--zero-biases", action="store_true",
                    help="also write all-zero .bias tensors on the quantized modules without a "
                         "bias (old AutoGPTQ checkpoints have them)")
    ap.add_argument("--check-load", action="store_true",
                    help="afterwards, qwen_np.load the folder in a child process")
    args = ap.parse_args()

    t0 = time.perf_counter()
    os.makedirs(args.out, exist_ok=True)
    for name in os.listdir(args.out):      # shards of an earlier run with another shard size
        if name.endswith(".safetensors"):
            os.remove(os.path.join(args.out, name))
    specs = tensor_plan(args.zero_biases)
    shards = shard_plan(specs, int(args.shard_gb * 1e9))
    n = len(shards)
    names = [f"model-{k + 1:05d}-of-{n:05d}.safetensors" for k in range(n)]
    total = sum(s.nbytes for s in specs)
    print(f"{args.out}: {len(specs)} tensors, {total:,} bytes of data in {n} shards")

    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(CONFIG, f, indent=2)
    with open(os.path.join(args.out, "generation_config.json"), "w") as f:
        json.dump(GENERATION_CONFIG, f, indent=2)
    index = {"metadata": {"total_size": total},
             "weight_map": {s.name: name for specs_k, name in zip(shards, names) for s in specs_k}}
    with open(os.path.join(args.out, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f, indent=2)

    file_bytes = 0
    for specs_k, name in zip(shards, names):
        t = time.perf_counter()
        size = write_shard(os.path.join(args.out, name), specs_k, args.seed,
                           int(args.chunk_mb * 1e6))
        file_bytes += size
        print(f"  {name}: {len(specs_k)} tensors, {size:,} bytes, "
              f"{time.perf_counter() - t:.1f} s", flush=True)
    tok = "no tokenizer" if args.no_tokenizer else copy_tokenizer(args.out)
    elapsed = time.perf_counter() - t0
    peak = peak_rss()

    kinds = {}
    for s in specs:
        key = ("codes (qweight)" if s.name.endswith(".qweight") else
               "scales + qzeros + g_idx" if s.name.endswith((".scales", ".qzeros", ".g_idx")) else
               "embedding + LM head" if s.name in ("transformer.wte.weight", "lm_head.weight") else
               "norms + biases")
        kinds[key] = kinds.get(key, 0) + s.nbytes
    for k, b in kinds.items():
        print(f"  {k:<26} {b:>15,} B {b / 1e9:7.3f} GB")
    print(f"wrote {file_bytes:,} bytes ({file_bytes / 1e9:.3f} GB, {file_bytes / 2**30:.3f} GiB) "
          f"in {n} shards + config.json, generation_config.json, index, {os.path.basename(tok)} "
          f"in {elapsed:.1f} s ({file_bytes / 1e6 / elapsed:.0f} MB/s)")
    print(f"writer peak RSS (VmHWM): {peak:,} B = {peak / 2**20:.1f} MiB")

    check_written(args.out, shards, names, args.seed)
    if args.check_load:
        subprocess.run([sys.executable, "-c", CHECK_LOAD, args.out], check=True)


if __name__ == "__main__":
    main()
