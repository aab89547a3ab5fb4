"""Only the active experts cost: decode speed and weights read per token of an MoE model
against dense models of the same total size and of the same active size, on qwen-np and on
llama.cpp, in the same run (BENCHMARKS.md).

    python tools/bench_moe.py [--llama-python PATH] [--layers 8] [--tokens 32]

Three Q4_0 GGUF files with random weights are written by gguf-py into a temporary folder
(about 1.1 GB in all, removed at the end), each with Qwen3's attention (hidden 1024, 16 query
/ 4 KV heads of 64) and the tiny test tokenizer:
    moe            qwen3moe: 64 experts of width 512 per layer, 8 active (Qwen3-30B-A3B's
                   64:8 ... 128:8 kind of ratio), router F32
    dense-total    qwen3: one MLP of width 64 x 512 = 32768, the experts' total size
    dense-active   qwen3: one MLP of width 8 x 512 = 4096, the active experts' size
Each is run by `qwen-np bench --vs llama.cpp` (fresh processes: qwen-np on numba, then
llama.cpp through llama-cpp-python); the table has each file's decode tokens/s, qwen-np's
weights read per decoded token (memory.decode_bytes_per_token), and the ratios.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..")
sys.path.insert(0, os.path.join(ROOT, "tests"))

D, HEADS, KV_HEADS, HEAD_DIM, VOCAB = 1024, 16, 4, 64, 384
EXPERTS, ACTIVE, EXPERT_WIDTH = 64, 8, 512
TOKENIZER = os.path.join(ROOT, "tests", "fixtures", "qwen2-tied-f32", "tokenizer.json")


def write_model(path: str, layers: int, moe: bool, width: int, rng) -> None:
    """A Q4_0 GGUF with random N(0, 0.02) weights: qwen3moe (moe) or qwen3 (dense MLP of
    `width`); norms 1; the embedding tied."""
    import gguf
    from gguf import GGMLQuantizationType as T
    from gguf_writer import add_tokenizer_metadata
    w = gguf.GGUFWriter(path, "qwen3moe" if moe else "qwen3")
    w.add_block_count(layers)
    w.add_context_length(4096)
    w.add_embedding_length(D)
    w.add_feed_forward_length(width)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_key_length(HEAD_DIM)
    w.add_value_length(HEAD_DIM)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(1e6)
    if moe:
        w.add_expert_count(EXPERTS)
        w.add_expert_used_count(ACTIVE)
        w.add_expert_feed_forward_length(EXPERT_WIDTH)
    add_tokenizer_metadata(w, TOKENIZER, VOCAB)

    def matrix(name, *shape):
        a = (rng.standard_normal(shape, dtype=np.float32) * 0.02)
        w.add_tensor(name, gguf.quants.quantize(a, T.Q4_0), raw_dtype=T.Q4_0)

    def vector(name, n):
        w.add_tensor(name, np.ones(n, np.float32))

    matrix("token_embd.weight", VOCAB, D)
    vector("output_norm.weight", D)
    for i in range(layers):
        b = f"blk.{i}."
        vector(b + "attn_norm.weight", D)
        vector(b + "ffn_norm.weight", D)
        vector(b + "attn_q_norm.weight", HEAD_DIM)
        vector(b + "attn_k_norm.weight", HEAD_DIM)
        matrix(b + "attn_q.weight", HEADS * HEAD_DIM, D)
        matrix(b + "attn_k.weight", KV_HEADS * HEAD_DIM, D)
        matrix(b + "attn_v.weight", KV_HEADS * HEAD_DIM, D)
        matrix(b + "attn_output.weight", D, HEADS * HEAD_DIM)
        if moe:
            w.add_tensor(b + "ffn_gate_inp.weight",
                         rng.standard_normal((EXPERTS, D), dtype=np.float32))
            matrix(b + "ffn_gate_exps.weight", EXPERTS, EXPERT_WIDTH, D)
            matrix(b + "ffn_up_exps.weight", EXPERTS, EXPERT_WIDTH, D)
            matrix(b + "ffn_down_exps.weight", EXPERTS, D, EXPERT_WIDTH)
        else:
            matrix(b + "ffn_gate.weight", width, D)
            matrix(b + "ffn_up.weight", width, D)
            matrix(b + "ffn_down.weight", D, width)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def bench(path: str, llama_python: str, tokens: int) -> dict:
    """qwen-np bench --vs llama.cpp on one file: decode tok/s of each, weights read/token."""
    r = subprocess.run([sys.executable, "-m", "qwen_np", "bench", "-m", path, "--vs",
                        "llama.cpp", "--llama-python", llama_python, "--prompt-tokens", "16",
                        "--gen-tokens", str(tokens)], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(r.stderr.strip())
    rows = [line for line in r.stdout.splitlines() if line.startswith("| qwen-np (")
            or line.startswith("| llama.cpp")]
    cells = [[c.strip() for c in row.strip("|").split("|")] for row in rows]
    # columns: system, load, prefill, first token, start to first, decode, peak RSS, read
    return {"ours": float(cells[0][5]), "llama": float(cells[1][5]),
            "read_mib": float(cells[0][7]), "rss": float(cells[0][6]),
            "llama_rss": float(cells[1][6])}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama-python", default=os.environ.get("LLAMA_PYTHON", "python3"))
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=32)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="qwen-np-bench-moe-")
    rng = np.random.default_rng(0)
    files = {"moe": (True, EXPERT_WIDTH), "dense-total": (False, EXPERTS * EXPERT_WIDTH),
             "dense-active": (False, ACTIVE * EXPERT_WIDTH)}
    results = {}
    try:
        for name, (moe, width) in files.items():
            path = os.path.join(tmp, name + ".gguf")
            write_model(path, args.layers, moe, width, rng)
            size = os.path.getsize(path) / 2**20
            results[name] = dict(bench(path, args.llama_python, args.tokens), file_mib=size)
            print(f"{name}: {results[name]}", file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"| model ({args.layers} layers) | file (MiB) | qwen-np weights read / token (MiB) "
          f"| qwen-np decode (tok/s) | llama.cpp decode (tok/s) | qwen-np / llama.cpp |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, r in results.items():
        print(f"| {name} | {r['file_mib']:.0f} | {r['read_mib']:.1f} | {r['ours']:.1f} | "
              f"{r['llama']:.1f} | {r['ours'] / r['llama']:.2f} |")
    m, t, a = results["moe"], results["dense-total"], results["dense-active"]
    print(f"\nqwen-np: moe decodes {m['ours'] / t['ours']:.2f}x as fast as dense-total and "
          f"{m['ours'] / a['ours']:.2f}x dense-active; llama.cpp: {m['llama'] / t['llama']:.2f}x "
          f"and {m['llama'] / a['llama']:.2f}x")


if __name__ == "__main__":
    main()
