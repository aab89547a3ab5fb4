"""Speed and memory on the real GGUF: qwen-np (NumPy backend) and llama.cpp (llama-cpp-python),
each measured in a fresh process, in the same run.

    python tools/bench_gguf.py [--model PATH.gguf] [--threads 2] [--prompt-tokens 128]
        [--gen-tokens 16] [--llama-python PYTHON]

--llama-python names a Python that can `import llama_cpp` (default: this one). To build one:
    python3 -m venv llama && CMAKE_ARGS="-DGGML_NATIVE=ON" llama/bin/pip install llama-cpp-python numpy
(about 5 minutes on 2 cores). Both sides get the same prompt token ids, greedy decoding, one
token at a time; peak RSS is the process's VmHWM (it counts the mapped weight pages touched).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
TEXT = ("def quicksort(arr):\n    if len(arr) <= 1:\n        return arr\n"
        "    pivot = arr[len(arr) // 2]\n    left = [x for x in arr if x < pivot]\n"
        "    middle = [x for x in arr if x == pivot]\n    right = [x for x in arr if x > pivot]\n"
        "    return quicksort(left) + middle + quicksort(right)\n\n")

QWEN_NP = r"""
import json, os, sys, time
import numpy as np
sys.path.insert(0, sys.argv[1])
t0 = time.perf_counter()
import qwen_np
from qwen_np.cache import new_kv_cache
from qwen_np.model import forward
model = qwen_np.load(sys.argv[2])
load_s = time.perf_counter() - t0
P, G = int(sys.argv[3]), int(sys.argv[4])
base = model.tokenizer.encode(TEXT)
prompt = (base * (P // len(base) + 1))[:P]
cache = new_kv_cache(model.config, P + G + 1, model.backend)
t = time.perf_counter()
tok = int(np.argmax(forward(model.config, model.weights, model.backend, prompt, cache, last_only=True)[-1]))
prefill_s = time.perf_counter() - t
gen = [tok]
t = time.perf_counter()
for _ in range(G):
    tok = int(np.argmax(forward(model.config, model.weights, model.backend, [tok], cache, last_only=True)[-1]))
    gen.append(tok)
decode_s = time.perf_counter() - t
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
print(json.dumps({"impl": "qwen-np numpy", "load_s": load_s, "prefill_tok_s": P / prefill_s,
                  "ttft_s": prefill_s, "decode_tok_s": G / decode_s,
                  "peak_rss_mib": int(hwm) / 1024, "first_ids": gen[:8]}))
"""

LLAMA_CPP = r"""
import json, sys, time
import numpy as np
import llama_cpp
P, G, threads = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
t0 = time.perf_counter()
llm = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=max(512, P + G + 1), n_batch=max(512, P),
                      n_ubatch=max(512, P), n_threads=threads, n_threads_batch=threads,
                      verbose=False, logits_all=False)
load_s = time.perf_counter() - t0
nv = llm.n_vocab()
def argmax_last():  # with logits_all=False, llm.scores stays empty: read the C logits row
    return int(np.argmax(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(nv,))))
base = llm.tokenize(TEXT.encode(), add_bos=False)
prompt = (base * (P // len(base) + 1))[:P]
t = time.perf_counter()
llm.eval(prompt)
tok = argmax_last()
prefill_s = time.perf_counter() - t
gen = [tok]
t = time.perf_counter()
for _ in range(G):
    llm.eval([tok])
    tok = argmax_last()
    gen.append(tok)
decode_s = time.perf_counter() - t
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
print(json.dumps({"impl": "llama.cpp (llama-cpp-python " + llama_cpp.__version__ + ")",
                  "load_s": load_s, "prefill_tok_s": P / prefill_s, "ttft_s": prefill_s,
                  "decode_tok_s": G / decode_s, "peak_rss_mib": int(hwm) / 1024,
                  "first_ids": gen[:8]}))
"""


def run(cmd, env=None) -> dict:
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    sys.path.insert(0, os.path.join(HERE, ".."))
    from qwen_np.fetch import default_model_path
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=default_model_path())
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--gen-tokens", type=int, default=16)
    ap.add_argument("--llama-python", default=sys.executable)
    a = ap.parse_args()
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(a.threads), OMP_NUM_THREADS=str(a.threads))
    ours = run([sys.executable, "-c", f"TEXT = {TEXT!r}\n" + QWEN_NP, os.path.join(HERE, ".."),
                a.model, str(a.prompt_tokens), str(a.gen_tokens)], env)
    theirs = run([a.llama_python, "-c", f"TEXT = {TEXT!r}\n" + LLAMA_CPP, a.model,
                  str(a.prompt_tokens), str(a.gen_tokens), str(a.threads)], env)
    print(json.dumps(ours))
    print(json.dumps(theirs))
    print(f"\n| {'system':<40} | load (s) | prefill {a.prompt_tokens} tok (tok/s) | "
          f"time to first token (s) | decode (tok/s) | peak RSS (MiB) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in (ours, theirs):
        print(f"| {r['impl']:<40} | {r['load_s']:.2f} | {r['prefill_tok_s']:.1f} | "
              f"{r['ttft_s']:.2f} | {r['decode_tok_s']:.2f} | {r['peak_rss_mib']:.0f} |")
    print(f"| {'ratio qwen-np / llama.cpp':<40} | {ours['load_s'] / theirs['load_s']:.1f} | "
          f"{ours['prefill_tok_s'] / theirs['prefill_tok_s']:.3f} | "
          f"{ours['ttft_s'] / theirs['ttft_s']:.1f} | "
          f"{ours['decode_tok_s'] / theirs['decode_tok_s']:.3f} | "
          f"{ours['peak_rss_mib'] / theirs['peak_rss_mib']:.2f} |")
    print(f"\nsame first greedy ids: {ours['first_ids'] == theirs['first_ids']} "
          f"({ours['first_ids']} vs {theirs['first_ids']})")


if __name__ == "__main__":
    main()
