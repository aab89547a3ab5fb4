"""`qwen-np bench`: prefill and decode speed, time to first token and peak RSS of qwen-np on a
model, and (with --vs llama.cpp) of llama.cpp through llama-cpp-python on the same file, each
in a fresh process, in the same run, with the ratios.

Both sides get the same prompt token ids (a code snippet repeated to --prompt-tokens) and
decode greedily one token at a time; the peak RSS is the process's VmHWM, which counts the
mapped weight pages it touched. "first token (s)" is the prefill alone; "start to first
token (s)" is the wall time from just before the parent spawns the child (its time.time())
to the moment the child knows the first token (the child's time.time() then), so that the
interpreter's start, the imports and the load count for both sides. qwen-np's includes its
two-token warm-up pass (which loads the JIT-compiled kernels before the prefill is timed).
"weights read / token (MiB)" is what one decoded token reads of qwen-np's weights
(memory.decode_bytes_per_token: an MoE model's token reads k of each sparse layer's E experts).

These machines are noisy (one prefill swings 2x within minutes), so --vs llama.cpp runs 5
pairs by default (--pairs N), interleaved, a fresh process each: qwen-np, llama.cpp, qwen-np,
llama.cpp, ... The table gives each column's median, and the ratio as the median of the
pairs' own ratios with their range. Under it: the CPU (lscpu's model name, family, model and
ISA flags), and for each side its threads and the code it runs: Numba's target CPU and vector
features and OpenBLAS's core type for qwen-np, llama.cpp's own system-info line for it. An
AVX2-only comparison on an AVX-512 machine sets NUMBA_CPU_NAME/NUMBA_CPU_FEATURES and gives
--llama-python an AVX2-only llama.cpp build (tools/README.md); both lines then show it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from qwen_np.apps.loading import fetch_with_progress
from qwen_np.errors import FormatError, QwenNpError

TEXT = ("def quicksort(arr):\n    if len(arr) <= 1:\n        return arr\n"
        "    pivot = arr[len(arr) // 2]\n    left = [x for x in arr if x < pivot]\n"
        "    middle = [x for x in arr if x == pivot]\n    right = [x for x in arr if x > pivot]\n"
        "    return quicksort(left) + middle + quicksort(right)\n\n")

LLAMA_CPP = r"""
import json, sys, time
import numpy as np
import llama_cpp
path, P, G, threads, text, K = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], int(sys.argv[6])
t0 = time.perf_counter()
draft = None
if K:
    from llama_cpp.llama_speculative import LlamaPromptLookupDecoding
    draft = LlamaPromptLookupDecoding(num_pred_tokens=K)
llm = llama_cpp.Llama(model_path=path, n_ctx=max(512, P + G + 1 + K), n_batch=max(512, P),
                      n_ubatch=max(512, P), n_threads=threads, n_threads_batch=threads,
                      verbose=False, logits_all=False, draft_model=draft)
load_s = time.perf_counter() - t0
nv = llm.n_vocab()
def argmax_last():  # with logits_all=False llm.scores stays empty: read the C logits row
    return int(np.argmax(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(nv,))))
base = llm.tokenize(text.encode(), add_bos=False)
prompt = (base * (P // len(base) + 1))[:P]
t = time.perf_counter()
if K:   # llama-cpp-python's own loop, drafting with prompt lookup (greedy: top_k 1)
    gen = []
    for tok in llm.generate(prompt, top_k=1, temp=0.0, reset=True):
        gen.append(tok)
        if len(gen) == 1:
            prefill_s = time.perf_counter() - t
            first_token_at = time.time()
            t = time.perf_counter()
        if len(gen) == G + 1:
            break
else:
    llm.eval(prompt)
    tok = argmax_last()
    prefill_s = time.perf_counter() - t
    first_token_at = time.time()
    gen = [tok]
    t = time.perf_counter()
    for _ in range(G):
        llm.eval([tok])
        tok = argmax_last()
        gen.append(tok)
decode_s = time.perf_counter() - t
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
isa = llama_cpp.llama_print_system_info().decode(errors="replace")
print(json.dumps({"system": "llama.cpp (llama-cpp-python " + llama_cpp.__version__ + ")",
                  "isa": " ".join(p.strip().replace(" = 1", "") for p in isa.replace("CPU :", "").split("|")
                                  if p.strip().endswith("= 1")), "threads": threads,
                  "load_s": load_s, "prefill_tok_s": P / prefill_s, "ttft_s": prefill_s,
                  "decode_tok_s": G / decode_s, "peak_rss_mib": int(hwm) / 1024,
                  "first_token_at": first_token_at, "ids": gen[:16]}))
"""


def measure_here(path: str, backend: str, threads: int | None, P: int, G: int,
                 kv_cache: str | None = None, prepared_cache: bool | None = None,
                 prompt_lookup: int = 0) -> dict:
    """Run in this (fresh) process: load, prefill P tokens, decode G tokens (with
    prompt_lookup = K, through the generation loop's drafts)."""
    import time

    import numpy as np

    from qwen_np.runtime.load import load
    from qwen_np.apps.memory import decode_bytes_per_token
    from qwen_np.runtime.process_memory import rss_bytes
    from qwen_np.model.forward import forward
    from qwen_np.runtime.generate import generate
    t0 = time.perf_counter()
    model = load(path, backend=backend, threads=threads, kv_cache=kv_cache,
                 prepared_cache=prepared_cache)
    cfg, w, be = model.config, model.weights, model.backend
    base = model.tokenizer.encode(TEXT)
    prompt = (base * (P // len(base) + 1))[:P]
    # one short warm-up pass so that JIT compilation (numba) is counted in load, not prefill
    forward(cfg, w, be, prompt[:2], model.new_cache(4), last_only=True)
    load_s = time.perf_counter() - t0
    cache = model.new_cache(P + G + 1)
    t = time.perf_counter()
    tok = int(np.argmax(be.to_numpy(forward(cfg, w, be, prompt, cache, last_only=True))[-1]))
    prefill_s = time.perf_counter() - t
    first_token_at = time.time()
    gen = [tok]
    t = time.perf_counter()
    if prompt_lookup:           # tok's pass, then the loop's (drafting from the prompt too)
        gen += generate(cfg, w, be, [tok], G, stop_ids=(), cache=cache,
                        prompt_lookup=prompt_lookup, cached_ids=prompt)
    for _ in range(0 if prompt_lookup else G):
        tok = int(np.argmax(be.to_numpy(forward(cfg, w, be, [tok], cache, last_only=True))[-1]))
        gen.append(tok)
    decode_s = time.perf_counter() - t
    label = be.name if kv_cache is None else f"{be.name}, KV cache {kv_cache}"
    return {"system": f"qwen-np ({label})", "isa": code_target(be.name),
            "threads": threads or os.cpu_count(), "load_s": load_s, "prefill_tok_s": P / prefill_s,
            "ttft_s": prefill_s, "decode_tok_s": G / decode_s,
            "peak_rss_mib": (rss_bytes("VmHWM") or 0) / 2**20, "first_token_at": first_token_at,
            "read_mib": decode_bytes_per_token(cfg, w) / 2**20, "ids": gen[:16]}


def run_json(cmd: list[str]) -> dict:
    """The child's JSON result, with its start to first token: from just before it is
    spawned to the time.time() it reports as `first_token_at`."""
    started = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"{os.path.basename(cmd[0])} failed: {last}")
    row = json.loads(r.stdout.strip().splitlines()[-1])
    row["start_to_first_s"] = row.pop("first_token_at") - started
    return row


ISA_FLAGS = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
             "avx_vnni", "avx512_bf16")


def cpu_description() -> str:
    """`lscpu`'s model name, family and model, and which of ISA_FLAGS the CPU has
    (/proc/cpuinfo, the file lscpu reads)."""
    info = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                info.setdefault(key.strip(), value.strip())
                if not line.strip():
                    break
    except OSError:
        return "CPU: unknown (no /proc/cpuinfo)"
    flags = set(info.get("flags", "").split())
    return (f"CPU: {info.get('model name', '?')} (family {info.get('cpu family', '?')}, model "
            f"{info.get('model', '?')}), {os.cpu_count()} logical CPUs; ISA: "
            + " ".join(f for f in ISA_FLAGS if f in flags))


def code_target(backend: str) -> str:
    """What the kernels were compiled for: Numba's CPU name and its vector features (what
    NUMBA_CPU_NAME / NUMBA_CPU_FEATURES say, else the host's), and OpenBLAS's core type."""
    blas = "OpenBLAS core " + os.environ.get("OPENBLAS_CORETYPE", "detected at run time")
    if backend != "numba":
        return blas
    import llvmlite.binding as llvm
    import numba
    name = numba.config.CPU_NAME or llvm.get_host_cpu_name()
    features = numba.config.CPU_FEATURES or llvm.get_host_cpu_features().flatten()
    on = [f[1:] for f in features.split(",") if f[:1] == "+" and f[1:].startswith(
        ("avx", "fma", "f16c"))]
    return f"Numba {name}: " + " ".join(sorted(on)) + "; " + blas


def bench(path: str, backend: str, threads: int | None, P: int, G: int, vs: str | None,
          llama_python: str, kv_cache: str | None = None,
          prepared_cache: bool | None = None, prompt_lookup: int = 0,
          pairs: int = 1) -> list[list[dict]]:
    """`pairs` rounds, each a fresh qwen-np process and then (with vs) a fresh llama.cpp one:
    A B A B ..., so that the machine's slow minutes fall on both sides alike."""
    ours = [sys.executable, "-m", "qwen_np.apps.bench", path, backend, str(threads or 0),
            str(P), str(G), kv_cache or "", "0" if prepared_cache is False else "",
            str(prompt_lookup)]
    theirs = [llama_python, "-c", LLAMA_CPP, path, str(P), str(G),
              str(threads or os.cpu_count()), TEXT, str(prompt_lookup)]
    return [[run_json(ours)] + ([run_json(theirs)] if vs == "llama.cpp" else [])
            for _ in range(pairs)]


COLUMNS = [("load_s", "load (s)", ".2f"), ("prefill_tok_s", "prefill {P} tok (tok/s)", ".1f"),
           ("ttft_s", "first token (s)", ".2f"),
           ("start_to_first_s", "start to first token (s)", ".2f"),
           ("decode_tok_s", "decode (tok/s)", ".2f"), ("peak_rss_mib", "peak RSS (MiB)", ".0f"),
           ("read_mib", "weights read / token (MiB)", ".1f")]


def median(values: list[float]) -> float:
    v = sorted(values)
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


def format_table(rounds: list[list[dict]], P: int) -> str:
    """One row per system: each column's median over the rounds (with more than one); then
    the ratio qwen-np / llama.cpp: the median of the rounds' own ratios, and their range."""
    cols = [(k, title.format(P=P), f) for k, title, f in COLUMNS]
    lines = ["| system | " + " | ".join(c[1] for c in cols) + " |",
             "| --- |" + " --- |" * len(cols)]
    systems = list(zip(*rounds))          # [system][round]
    for runs in systems:
        lines.append(f"| {runs[0]['system']} | " + " | ".join(
            format(median([r[k] for r in runs]), f) if k in runs[0] else "-"
            for k, _, f in cols) + " |")
    if len(systems) == 2:
        def ratio(k):
            if k not in systems[0][0] or k not in systems[1][0]:
                return "-"
            r = [a[k] / b[k] for a, b in rounds]
            return f"{median(r):.3f}" + (f" ({min(r):.3f}-{max(r):.3f})" if len(r) > 1 else "")
        name = "ratio qwen-np / llama.cpp" + (" (median of the pairs, range)"
                                               if len(rounds) > 1 else "")
        lines.append(f"| {name} | " + " | ".join(ratio(k) for k, _, _ in cols) + " |")
        same = all(a["ids"] == b["ids"] for a, b in rounds)
        lines.append(f"\nsame greedy ids (first 16): {same}")
    lines.append("")
    for runs in systems:
        lines.append(f"{runs[0]['system']}: {runs[0].get('threads', '?')} threads; "
                     f"{runs[0].get('isa', '?')}")
    return "\n".join(lines)


def cmd_bench(args) -> int:
    from qwen_np.apps.bench import bench, format_table
    path = args.model if args.model is not None else fetch_with_progress()
    if not os.path.exists(path):
        raise FormatError(f"{path}: no such file or folder")
    if args.vs == "llama.cpp":
        try:
            ok = subprocess.run([args.llama_python, "-c", "import llama_cpp"],
                                capture_output=True).returncode == 0
        except OSError:
            ok = False
        if not ok:
            raise QwenNpError(f"{args.llama_python}: cannot import llama_cpp (install "
                              f"llama-cpp-python as tools/README.md says, or pass --llama-python)")
    try:
        pairs = args.pairs if args.pairs is not None else 5 if args.vs else 1
        rounds = bench(path, args.backend, args.threads, args.prompt_tokens, args.gen_tokens,
                       args.vs, args.llama_python, args.kv_cache, args.prepared_cache,
                       args.prompt_lookup, pairs)
    except RuntimeError as e:
        raise QwenNpError(str(e)) from None
    print(f"{path}: {args.prompt_tokens}-token prompt, {args.gen_tokens} decoded tokens, "
          f"threads {args.threads or os.cpu_count()}"
          + (f", prompt lookup {args.prompt_lookup}" if args.prompt_lookup else "")
          + (f", {pairs} {'pairs' if args.vs else 'rounds'} (medians)" if pairs > 1 else ""))
    print(cpu_description())
    print(format_table(rounds, args.prompt_tokens))
    return 0


if __name__ == "__main__":   # the measuring child process
    path, backend, threads, P, G, kv, no_cache, lookup = sys.argv[1:9]
    print(json.dumps(measure_here(path, backend, int(threads) or None, int(P), int(G), kv or None,
                                  False if no_cache == "0" else None, int(lookup))))
