"""Prompt lookup on a code-editing workload: decode tokens/s with and without drafts, qwen-np
beside llama.cpp (llama-cpp-python's LlamaPromptLookupDecoding) on the same GGUF, interleaved.

    python tools/bench_prompt_lookup.py --llama-python /work/lcpvenv/bin/python \\
        [-m PATH] [--threads 2] [--rounds 5] [-k 10] [-n 200]

The tasks: a standard-library function (Python's own source, printed with inspect) and an
instruction to edit it (add type hints; rename a variable), as one user turn of the model's
chat template; greedy, up to -n tokens, ending at the model's end-of-turn token. Two warm child
processes, one per system, each loaded once; every round runs each task on each side without
and with prompt lookup (K = -k drafted tokens at most), in the order qwen-np plain, llama.cpp
plain, qwen-np lookup, llama.cpp lookup. Decode tokens/s is (tokens - 1) / (time from the first
token to the last). Both sides use their own generation loop (qwen-np: Model.generate;
llama.cpp: Llama.generate with top_k 1; with a draft model llama-cpp-python computes the
logits of every position, its logits_all). Prints each task's medians over the rounds, the
speed-ups (lookup / plain, each side) and the ratios (qwen-np / llama.cpp), and checks that
each side's output is the same with and without drafts. Writes nothing.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import shlex
import statistics
import subprocess
import sys
import textwrap

TASKS = [("type hints", "Add type hints to this function. Answer with the whole function "
                        "only, in a Python code block.", textwrap.indent),
         ("rename", "Rename the variable `line` to `row` in this function. Answer with the "
                    "whole function only, in a Python code block.", textwrap.indent),
         ("type hints", "Add type hints to this function. Answer with the whole function "
                        "only, in a Python code block.", shlex.split)]

QWEN_CHILD = r"""
import json, sys, time
import qwen_np
path, backend, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]) or None
m = qwen_np.load(path, backend=backend, threads=threads)
m.generate([1, 2], max_new_tokens=2, prompt_lookup=2)          # compile, map, warm
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    job = json.loads(line)
    times = []
    new = m.generate(job["ids"], max_new_tokens=job["n"], prompt_lookup=job["k"],
                     stream=lambda t: times.append(time.perf_counter()))
    print(json.dumps({"ids": new, "decode_s": times[-1] - times[0]}), flush=True)
"""

LLAMA_CHILD = r"""
import json, sys, time
import numpy as np
import llama_cpp
from llama_cpp.llama_speculative import LlamaPromptLookupDecoding
path, threads, K = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
kw = dict(model_path=path, n_ctx=2048, n_threads=threads, n_threads_batch=threads, verbose=False)
plain = llama_cpp.Llama(**kw)
drafting = llama_cpp.Llama(**kw, draft_model=LlamaPromptLookupDecoding(num_pred_tokens=K))
eos = {plain.token_eos(), *plain.tokenize(b"<|im_end|>", add_bos=False, special=True)}
print(json.dumps({"ready": True, "version": llama_cpp.__version__}), flush=True)
for line in sys.stdin:
    job = json.loads(line)
    llm = drafting if job["k"] else plain
    llm.reset()
    new, times = [], []
    for tok in llm.generate(job["ids"], top_k=1, temp=0.0, reset=True):
        new.append(int(tok))
        times.append(time.perf_counter())
        if tok in eos or len(new) == job["n"]:
            break
    print(json.dumps({"ids": new, "decode_s": times[-1] - times[0]}), flush=True)
"""


class Child:
    """A warm measuring process: one JSON job a line in, one JSON result a line out."""

    def __init__(self, cmd):
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        self.hello = json.loads(self.proc.stdout.readline())

    def run(self, ids, n, k) -> dict:
        self.proc.stdin.write(json.dumps({"ids": ids, "n": n, "k": k}) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-m", "--model", default=None)
    ap.add_argument("--backend", default="numba")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("-n", type=int, default=200)
    ap.add_argument("--llama-python", default=None)
    args = ap.parse_args()
    from qwen_np.apps.fetch import default_model_path
    from qwen_np.runtime.load import load
    path = args.model or default_model_path()
    model = load(path, backend="numpy")
    prompts = [model.chat_prompt_ids([{"role": "user", "content":
                                       f"{ask}\n\n```python\n{inspect.getsource(f)}```"}])
               for _, ask, f in TASKS]
    sides = {"qwen-np": Child([sys.executable, "-c", QWEN_CHILD, path, args.backend,
                               str(args.threads)])}
    if args.llama_python:
        sides["llama.cpp"] = Child([args.llama_python, "-c", LLAMA_CHILD, path,
                                    str(args.threads), str(args.k)])
    speeds = {(s, t, k): [] for s in sides for t in range(len(TASKS)) for k in (0, args.k)}
    outputs = {}
    for r in range(args.rounds):
        for t, ids in enumerate(prompts):
            for k in (0, args.k):
                for s, child in sides.items():
                    out = child.run(ids, args.n, k)
                    speeds[s, t, k].append((len(out["ids"]) - 1) / out["decode_s"])
                    outputs.setdefault((s, t, k), out["ids"])
                    assert outputs[s, t, k] == out["ids"], (s, t, k, "output changed")
        print(f"round {r + 1} of {args.rounds} done", file=sys.stderr, flush=True)
    for child in sides.values():
        child.close()
    print(f"{path}; {args.threads} threads; backend {args.backend}; K = {args.k}; up to "
          f"{args.n} tokens; {args.rounds} interleaved rounds, medians (min-max)")
    print("\n| task | prompt tokens | side | tokens | plain (tok/s) | lookup (tok/s) | "
          "speed-up | same output |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for t, (name, _, f) in enumerate(TASKS):
        for s in sides:
            a, b = speeds[s, t, 0], speeds[s, t, args.k]
            ratio = [y / x for x, y in zip(a, b)]
            print(f"| {name}: {f.__module__}.{f.__name__} | {len(prompts[t])} | {s} | "
                  f"{len(outputs[s, t, 0])} | {fmt(a)} | {fmt(b)} | {fmt(ratio, '.2f')}x | "
                  f"{outputs[s, t, 0] == outputs[s, t, args.k]} |")
    if "llama.cpp" in sides:
        print("\n| task | qwen-np / llama.cpp, plain | qwen-np / llama.cpp, lookup | "
              "same tokens as llama.cpp |")
        print("| --- | --- | --- | --- |")
        for t, (name, _, f) in enumerate(TASKS):
            cells = []
            for k in (0, args.k):
                ratio = [x / y for x, y in zip(speeds["qwen-np", t, k], speeds["llama.cpp", t, k])]
                cells.append(fmt(ratio, ".2f"))
            same = outputs["qwen-np", t, 0] == outputs["llama.cpp", t, 0]
            print(f"| {name}: {f.__module__}.{f.__name__} | {cells[0]} | {cells[1]} | {same} |")


def fmt(values, spec=".1f") -> str:
    return (f"{statistics.median(values):{spec}} ({min(values):{spec}}-"
            f"{max(values):{spec}})")


if __name__ == "__main__":
    main()
