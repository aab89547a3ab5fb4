"""Qwen-7B-Int4 at full size on the numba backend: a 2048-token context really filled, for each
KV cache kind, with the measured peak RSS beside `qwen-np memory`'s prediction.

    python tools/make_qwen7b_int4.py                      # the checkpoint (random codes)
    python tools/bench_qwen7b.py [--model /tmp/qwen-np-7b-int4] [--kv float32,float16,int8]
                                 [--prompt 2048] [--gen 8] [--prefill-chunk 512] [--seed 0]

Each KV cache kind runs in a fresh child process (this script with --child), which:
  1. loads the model (`qwen_np.load(model, backend="numba", kv_cache=kind)`): time, RSS;
  2. warms up: a 2-token and a 1-token forward pass on a throwaway 3-position cache, so that
     the kernels are compiled or loaded from Numba's cache before anything is timed;
  3. prefills a prompt of --prompt seeded random ids in 0..151642 into a cache of
     prompt + gen positions, --prefill-chunk tokens at a time through
     `forward(cfg, w, be, chunk, cache, last_only=True)`. For Qwen-7B (seq_length 8192)
     chunking changes nothing numerically at 2048 tokens: the dynamic-NTK alpha is 1 and logn
     scaling is off whether the prompt goes in at once or in chunks;
  4. decodes --gen tokens greedily, one forward pass of one token each (the first token is the
     argmax of the prefill's logits), timing each step;
  5. gives malloc's free memory back (malloc_trim), to show how much of the RSS it was;
  6. times the LM head alone (float16 [151936, 4096], read in full on every decode step) on
     one hidden state, twice;
  7. reports RSS after each stage, split into anonymous memory (codes, scales, KV cache,
     buffers) and file-backed pages (the memory-mapped LM head and embedding rows, libraries),
     with malloc's figures (mallinfo2), the peak RSS (VmHWM) over the whole run, and
     cache.length, which must be prompt + gen: the context was really filled.
Then `qwen-np memory <model> --context <prompt + gen> --kv-cache <kind>` (another fresh
process) gives the predicted peak and its components.

Printed: the CPU (lscpu's model name, AVX2 / AVX-512 flags, nproc), each child's stages, a
markdown table, and Qwen's own README figures for comparison (GPU, transformers: BF16 16.99 GB,
Int4 8.21 GB peak memory for 2048 tokens; not the same kind of measurement: GPU memory of a
PyTorch process, not a CPU process's RSS).
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import os
import re
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

KINDS = ("float32", "float16", "int8")
GiB, GB = 2**30, 10**9
RESULT = "RESULT "


# ---------------------------------------------------------------------------- child process

class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                               "usmblks", "fsmblks", "uordblks", "fordblks",
                                               "keepcost")]


def _libc():
    name = ctypes.util.find_library("c")
    return ctypes.CDLL(name) if name else None


def heap_info() -> dict:
    """glibc's malloc, all arenas (mallinfo2): bytes in use (small blocks plus mmapped blocks)
    and bytes freed but still held in the arenas; zeros where there is no mallinfo2."""
    libc = _libc()
    fn = getattr(libc, "mallinfo2", None) if libc else None
    if fn is None:
        return dict(heap_used=0, heap_free=0, heap_mmapped=0)
    fn.restype = _MallInfo2
    m = fn()
    return dict(heap_used=m.uordblks + m.hblkhd, heap_free=m.fordblks, heap_mmapped=m.hblkhd)


def trim_heap() -> None:
    """Give the arenas' free memory back to the system (glibc malloc_trim)."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def child(args) -> None:
    import qwen_np
    from qwen_np.model.kv_cache import kv_cache_bytes
    from qwen_np.runtime.process_memory import rss_bytes
    from qwen_np.model.forward import forward

    stages, detail = {}, {}

    def mark(name):
        stages[name] = rss_bytes()
        d = detail[name] = dict(anon=rss_bytes("RssAnon"), file=rss_bytes("RssFile"),
                                **heap_info())
        print(f"  [{args.kind}] {name}: RSS {stages[name] / GiB:.3f} GiB (anonymous "
              f"{d['anon'] / GiB:.3f}, file-backed {d['file'] / GiB:.3f}; malloc: in use "
              f"{d['heap_used'] / GiB:.3f}, free in arenas {d['heap_free'] / GiB:.3f}), "
              f"peak {rss_bytes('VmHWM') / GiB:.3f} GiB", flush=True)

    mark("start")
    t = time.perf_counter()
    model = qwen_np.load(args.model, backend="numba", kv_cache=args.kind)
    load_s = time.perf_counter() - t
    cfg, w, be = model.config, model.weights, model.backend
    print(f"  [{args.kind}] loaded in {load_s:.1f} s ({be.threads} numba threads)", flush=True)
    mark("after load")

    t = time.perf_counter()
    warm = model.new_cache(3)
    forward(cfg, w, be, [1, 2], warm, last_only=True)
    forward(cfg, w, be, [3], warm, last_only=True)
    del warm
    warmup_s = time.perf_counter() - t
    print(f"  [{args.kind}] warm-up (2 + 1 tokens) {warmup_s:.1f} s", flush=True)
    mark("after warm-up")

    total = args.prompt + args.gen
    cache = model.new_cache(total)     # the backend touches every page of it now
    mark("after cache")
    ids = np.random.default_rng(args.seed).integers(0, 151643, args.prompt).tolist()
    t = time.perf_counter()
    chunk_s = []
    for c0 in range(0, args.prompt, args.prefill_chunk):
        tc = time.perf_counter()
        logits = forward(cfg, w, be, ids[c0:c0 + args.prefill_chunk], cache, last_only=True)
        chunk_s.append(time.perf_counter() - tc)
        print(f"  [{args.kind}] prefill chunk at {c0}: {chunk_s[-1]:.1f} s "
              f"(cache.length {cache.length}, RSS {rss_bytes() / GiB:.3f} GiB, "
              f"load average {os.getloadavg()[0]:.2f})", flush=True)
    prefill_s = time.perf_counter() - t
    mark("after prefill")

    token = int(np.argmax(be.to_numpy(logits)[-1]))
    generated, step_s = [token], []
    for _ in range(args.gen):
        tc = time.perf_counter()
        logits = forward(cfg, w, be, [token], cache, last_only=True)
        token = int(np.argmax(be.to_numpy(logits)[-1]))
        step_s.append(time.perf_counter() - tc)
        generated.append(token)
    decode_s = sum(step_s)
    print(f"  [{args.kind}] decode steps (s): {' '.join(f'{s:.2f}' for s in step_s)}", flush=True)
    mark("after decode")

    trim_heap()
    mark("after malloc_trim")

    h = np.random.default_rng(1).standard_normal((1, cfg.hidden_size)).astype(np.float32)
    head_s = []
    for _ in range(2):
        tc = time.perf_counter()
        be.linear(h, w.lm_head)
        head_s.append(time.perf_counter() - tc)
    peak = rss_bytes("VmHWM")
    result = dict(kind=args.kind, kv_bytes=kv_cache_bytes(cfg, total, cache.kind),
                  load_s=load_s, warmup_s=warmup_s, prefill_s=prefill_s, chunk_s=chunk_s,
                  decode_s=decode_s, step_s=step_s, head_s=min(head_s),
                  lm_head_dtype=str(getattr(w.lm_head, "dtype", type(w.lm_head).__name__)),
                  rss=stages, detail=detail, peak=peak, cache_length=cache.length, cache_max=cache.max_tokens,
                  prompt=args.prompt, gen=args.gen, threads=be.threads, tokens=generated)
    print(RESULT + json.dumps(result), flush=True)


# ---------------------------------------------------------------------------- parent process

def cpu_info() -> list[str]:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    name = re.search(r"^Model name:\s*(.+)$", out, re.M)
    flags = set((re.search(r"^Flags:\s*(.+)$", out, re.M) or [None, ""])[1].split())
    wanted = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
              "avx512_bf16", "avx512_fp16")
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    return [f"CPU: {name.group(1) if name else '?'}; nproc {nproc}",
            "flags: " + ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in wanted)]


def source_state() -> str:
    """The commit of the qwen_np that runs, and whether its files differ from it."""
    root = os.path.join(HERE, "..")
    git = lambda *a: subprocess.run(["git", "-C", root, *a], capture_output=True,
                                    text=True).stdout.rstrip()
    head = git("rev-parse", "--short", "HEAD").strip() or "?"
    dirty = [l[3:] for l in git("status", "--porcelain", "--", "qwen_np", "backends").splitlines()]
    return f"qwen_np at {head}" + (f" with uncommitted changes in {', '.join(dirty)}"
                                   if dirty else "")


def predicted(model: str, context: int, kind: str) -> tuple[int, str]:
    r = subprocess.run([sys.executable, "-m", "qwen_np", "memory", model, "--context",
                        str(context), "--kv-cache", kind], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"qwen-np memory failed:\n{r.stdout}{r.stderr}")
    m = re.search(r"predicted peak\s+([\d,]+) B", r.stdout)
    return int(m.group(1).replace(",", "")), r.stdout


def run_child(args, kind: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--kind", kind,
           "--model", args.model, "--prompt", str(args.prompt), "--gen", str(args.gen),
           "--prefill-chunk", str(args.prefill_chunk), "--seed", str(args.seed)]
    print(f"$ {' '.join(cmd)}", flush=True)
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    result = None
    for line in p.stdout:
        if line.startswith(RESULT):
            result = json.loads(line[len(RESULT):])
        else:
            print(line, end="", flush=True)
    if p.wait() != 0 or result is None:
        raise SystemExit(f"child for {kind} failed (exit {p.returncode})")
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="/tmp/qwen-np-7b-int4")
    ap.add_argument("--kv", default=",".join(KINDS),
                    help="KV cache kinds, comma-separated (default float32,float16,int8)")
    ap.add_argument("--prompt", type=int, default=2048, help="prompt tokens (default 2048)")
    ap.add_argument("--gen", type=int, default=8, help="decoded tokens (default 8)")
    ap.add_argument("--prefill-chunk", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-predict", action="store_true", help="skip `qwen-np memory`")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--kind", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    kinds = [k.strip() for k in args.kv.split(",") if k.strip()]
    for k in kinds:
        if k not in KINDS:
            raise SystemExit(f"--kv: unknown kind {k!r} (choose from {', '.join(KINDS)})")
    for line in cpu_info():
        print(line)
    print(source_state())
    print("load average at start: %.2f %.2f %.2f (other processes share these cores)"
          % os.getloadavg())
    context = args.prompt + args.gen
    rows, memory_out = [], {}
    for kind in kinds:
        r = run_child(args, kind)
        if args.no_predict:
            r["predicted"] = None
        else:
            r["predicted"], memory_out[kind] = predicted(args.model, context, kind)
            print(f"$ qwen-np memory {args.model} --context {context} --kv-cache {kind}\n"
                  f"{memory_out[kind]}", flush=True)
        rows.append(r)

    print(f"\n{args.model}: Qwen-7B shapes, GPTQ int4 g128 (random codes), numba backend, "
          f"{rows[0]['threads']} threads; prompt {args.prompt} (prefill chunks of "
          f"{args.prefill_chunk}) + {args.gen} decoded tokens; each kind in a fresh process\n")
    print("| KV cache | KV bytes | load s | RSS after load | prefill s (tok/s) | decode tok/s "
          "(median s/token) | LM head s | peak RSS GiB | peak RSS GB | predicted peak GB | "
          "measured / predicted | cache.length |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        pred = r["predicted"]
        median = float(np.median(r["step_s"]))
        print(f"| {r['kind']} | {r['kv_bytes'] / GiB:.3f} GiB | {r['load_s']:.1f} | "
              f"{r['rss']['after load'] / GiB:.2f} GiB | {r['prefill_s']:.0f} "
              f"({r['prompt'] / r['prefill_s']:.1f}) | {r['gen'] / r['decode_s']:.3f} "
              f"({median:.2f}) | {r['head_s']:.2f} | {r['peak'] / GiB:.3f} | "
              f"{r['peak'] / GB:.3f} | "
              + (f"{pred / GB:.3f} | {r['peak'] / pred:.3f}" if pred else "- | -")
              + f" | {r['cache_length']} / {r['cache_max']} |")
    print("\nRSS by stage, GiB: total = anonymous + file-backed (the LM head's and the embedding's "
          "mapped pages, libraries); [malloc's free bytes in its arenas: address space, resident "
          "only where not yet given back]")
    stages = list(dict.fromkeys(s for r in rows for s in r["rss"]))
    print("| KV cache | " + " | ".join(stages) + " | peak |")
    print("|---|" + "---|" * (len(stages) + 1))
    for r in rows:
        cells = []
        for s in stages:
            if s not in r["rss"]:
                cells.append("-")
                continue
            d = r["detail"][s]
            cells.append(f"{r['rss'][s] / GiB:.3f} = {d['anon'] / GiB:.3f} + {d['file'] / GiB:.3f}"
                         f" [{d['heap_free'] / GiB:.3f}]")
        print(f"| {r['kind']} | " + " | ".join(cells) + f" | {r['peak'] / GiB:.3f} |")
    print("\nprefill chunk s: " + "; ".join(
        f"{r['kind']} " + " ".join(f"{c:.0f}" for c in r["chunk_s"]) for r in rows))
    print("decode step s: " + "; ".join(
        f"{r['kind']} " + " ".join(f"{c:.2f}" for c in r["step_s"]) for r in rows))
    for r in rows:
        if r["cache_length"] != context:
            print(f"WARNING: {r['kind']}: cache.length {r['cache_length']} != {context}")
    print("\nload average at the end: %.2f %.2f %.2f" % os.getloadavg())
    print("\nQwen's README (QwenLM/Qwen; A100-80G, transformers + autogptq, flash-attention 2): "
          "peak GPU memory for 2048 tokens, Qwen-7B-Chat BF16 16.99 GB, Int4 8.21 GB")


if __name__ == "__main__":
    main()
