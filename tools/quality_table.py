"""The quality table: what each quantization costs in perplexity, on the real GGUF
(Qwen2.5-Coder-0.5B-Instruct, Q4_K_M mix) and on its float32 dequantization re-quantized by
`qwen-np quantize`.

    python tools/quality_table.py [--out DIR] [--ctx 512] [--stride 256] [--tokens 4096]
                                  [--backend numba] [--threads 2]

The text: Python standard-library modules (PSF license) of the running interpreter, named in
STDLIB_FILES and concatenated in that order; its sha256 and the Python version are printed, as
the files differ between versions. It is tokenized with the GGUF's tokenizer and cut to
--tokens tokens; every model is scored on those same ids (`qwen-np ppl`'s sliding window,
qwen_np/oracle/perplexity.py).

Models, each scored in a fresh process (peak RSS = its VmHWM):
    the GGUF as shipped; the same with a float16 and an int8 KV cache
    its float32 dequantization, written as a Hugging Face folder (config.json +
        model.safetensors) into --out
    that folder through qwen-np quantize: 4 bits in groups of 32 and 128, symmetric and
        asymmetric, and 8 bits in groups of 128 (symmetric)
Everything is written under --out (default: a temporary folder), removed at the end unless
--keep.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

STDLIB_FILES = ["textwrap.py", "heapq.py", "bisect.py", "fnmatch.py", "colorsys.py", "shlex.py",
                "graphlib.py", "statistics.py"]

CHILD = r"""
import json, sys, time
import qwen_np
from qwen_np.oracle.perplexity import perplexity
path, ids_file, backend, threads, kv, ctx, stride = sys.argv[1:8]
ids = json.load(open(ids_file))
t = time.perf_counter()
m = qwen_np.load(path, backend=backend, threads=int(threads), kv_cache=None if kv == "-" else kv)
r = perplexity(m.logits, ids, int(ctx), int(stride))
r["seconds"] = time.perf_counter() - t
for line in open("/proc/self/status"):
    if line.startswith("VmHWM:"):
        r["peak_rss"] = int(line.split()[1]) * 1024
print(json.dumps(r))
"""


def stdlib_text() -> tuple[str, str]:
    lib = sysconfig.get_paths()["stdlib"]
    parts = []
    for name in STDLIB_FILES:
        with open(os.path.join(lib, name), encoding="utf-8") as f:
            parts.append(f.read())
    text = "\n".join(parts)
    return text, hashlib.sha256(text.encode()).hexdigest()


def hf_config(cfg) -> dict:
    return {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu",
            "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
            "intermediate_size": cfg.intermediate_size,
            "num_hidden_layers": cfg.num_hidden_layers,
            "num_attention_heads": cfg.num_attention_heads,
            "num_key_value_heads": cfg.num_key_value_heads, "rms_norm_eps": cfg.rms_norm_eps,
            "rope_theta": cfg.rope_theta, "max_position_embeddings": cfg.max_position_embeddings,
            "tie_word_embeddings": cfg.tie_word_embeddings, "torch_dtype": "float32",
            "eos_token_id": list(cfg.eos_token_ids), "bos_token_id": cfg.bos_token_id}


def export_float32(gguf_path: str, out: str) -> None:
    """The GGUF's tensors dequantized to float32 under Hugging Face names, as a folder."""
    from qwen_np.runtime.load import read_model
    from qwen_np.tensors.dense import as_compute
    from qwen_np.formats.safetensors import write_safetensors
    from qwen_np.tensors.quantized import QuantizedTensor, dequantize
    from qwen_np.tensors.mapped import MappedQuantizedRows
    config, tensors, _ = read_model(gguf_path)
    if config.model_type != "qwen2":
        raise SystemExit(f"{gguf_path}: a qwen2 GGUF is expected")
    floats = {}
    for name, t in tensors.items():
        if isinstance(t, MappedQuantizedRows):
            t = t.rows_to_canonical(t.raw)
        floats[name] = dequantize(t) if isinstance(t, QuantizedTensor) else \
            np.ascontiguousarray(as_compute(t, np.float32))
    os.makedirs(out, exist_ok=True)
    write_safetensors(os.path.join(out, "model.safetensors"), floats)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(hf_config(config), f, indent=1)


def folder_bytes(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path)
               if f.endswith(".safetensors"))


def score(path, ids_file, args, kv="-") -> dict:
    r = subprocess.run([sys.executable, "-c", CHILD, path, ids_file, args.backend,
                        str(args.threads), kv, str(args.ctx), str(args.stride)],
                       capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"scoring {path} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--stride", type=int, default=256)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--backend", default="numba")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    from qwen_np.runtime.load import load_tokenizer
    from qwen_np.apps.fetch import fetch_default_model
    from qwen_np.apps.quantize import quantize_folder
    gguf = fetch_default_model()
    out = args.out or tempfile.mkdtemp(prefix="qwen-np-quality-")
    os.makedirs(out, exist_ok=True)
    text, sha = stdlib_text()
    ids = load_tokenizer(gguf).encode(text)[:args.tokens]
    ids_file = os.path.join(out, "ids.json")
    with open(ids_file, "w") as f:
        json.dump(ids, f)
    print(f"text: {', '.join(STDLIB_FILES)} from Python {sys.version.split()[0]}'s standard "
          f"library, sha256 {sha[:16]}..., {len(ids)} tokens; ctx {args.ctx}, stride "
          f"{args.stride}, backend {args.backend}, {args.threads} threads", flush=True)

    f32 = os.path.join(out, "float32")
    t = time.perf_counter()
    export_float32(gguf, f32)
    print(f"float32 dequantization written in {time.perf_counter() - t:.0f} s", flush=True)
    rows = [("GGUF as shipped (Q4_K_M mix)", gguf, "-"),
            ("GGUF, float16 KV cache", gguf, "float16"),
            ("GGUF, int8 KV cache", gguf, "int8"),
            ("float32 dequantization of the GGUF", f32, "-")]
    for bits, group, sym in ((4, 32, True), (4, 32, False), (4, 128, True), (4, 128, False),
                             (8, 128, True)):
        dst = os.path.join(out, f"q{bits}-g{group}-{'sym' if sym else 'asym'}")
        quantize_folder(f32, dst, bits, group, sym)
        rows.append((f"float32 re-quantized: {bits}-bit, group {group}, "
                     f"{'symmetric' if sym else 'asymmetric'}", dst, "-"))
    results = []
    for label, path, kv in rows:
        r = score(path, ids_file, args, kv)
        r.update(label=label, bytes=folder_bytes(path))
        results.append(r)
        print(f"  {label}: ppl {r['perplexity']:.4f} ({r['seconds']:.0f} s)", flush=True)
    base = next(r["perplexity"] for r in results if r["label"].startswith("float32 dequant"))
    print("\n| model | weights on disk | perplexity | vs float32 | peak RSS |")
    print("| --- | --- | --- | --- | --- |")
    for r in results:
        print(f"| {r['label']} | {r['bytes'] / 1e6:,.0f} MB | {r['perplexity']:.4f} | "
              f"{(r['perplexity'] / base - 1) * 100:+.2f}% | {r['peak_rss'] / 2**20:,.0f} MiB |")
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    if not args.keep and args.out is None:
        shutil.rmtree(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
