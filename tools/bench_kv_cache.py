"""The KV cache kinds on the real GGUF (Qwen2.5-Coder-0.5B-Instruct Q4_K_M): memory saved, the
logits' error against the float32 cache, and greedy agreement over 256 tokens.

    python tools/bench_kv_cache.py [--model PATH] [--backend numba] [--tokens 256]
                                   [--context 8192]

For each kind (float32, float16, int8), in a fresh process: load, generate `--tokens` greedy
tokens (no stop) after a fixed prompt into a cache of `--context` positions (allocated and
touched whole), and record the tokens and the peak RSS. Then, teacher-forced on the prompt plus
the float32 continuation, the logits of every position with each kind, against float32's:
max |difference| / max |float32 logit|, and how often the argmax agrees. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np

PROMPT = "def quicksort(items):\n    \"\"\"Sort a list of numbers.\"\"\"\n"
KINDS = ("float32", "float16", "int8")

CHILD = r"""
import json, sys
import numpy as np
import qwen_np
from qwen_np.model.kv_cache import kv_cache_bytes
from qwen_np.runtime.process_memory import rss_bytes
path, backend, kind, n, context, prompt, forced = sys.argv[1:8]
model = qwen_np.load(path, backend=backend, kv_cache=kind)
ids = model.tokenizer.encode(prompt)
cache = model.new_cache(int(context))
new = model.generate(ids, max_new_tokens=int(n), stop_ids=[], cache=cache)
out = {"tokens": new, "peak_rss": rss_bytes("VmHWM"),
       "kv_bytes": kv_cache_bytes(model.config, int(context), kind)}
forced = json.loads(forced)
if forced:
    np.save(sys.argv[8], model.logits(forced).astype(np.float32))
print(json.dumps(out))
"""


def child(args, kind, forced, out_npy) -> dict:
    r = subprocess.run([sys.executable, "-c", CHILD, args.model, args.backend, kind,
                        str(args.tokens), str(args.context), PROMPT, json.dumps(forced), out_npy],
                       capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{kind}: {r.stderr.strip().splitlines()[-1]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="a GGUF or model folder (default: the fetched GGUF)")
    p.add_argument("--backend", default="numba")
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--context", type=int, default=8192)
    p.add_argument("--workdir", default="/tmp/qwen-np-bench-kv")
    args = p.parse_args()
    if args.model is None:
        from qwen_np.apps.fetch import fetch_default_model
        args.model = fetch_default_model()
    os.makedirs(args.workdir, exist_ok=True)
    import qwen_np
    prompt_ids = qwen_np.load_tokenizer(args.model).encode(PROMPT)

    runs = {}
    base = child(args, "float32", [], "")
    forced = prompt_ids + base["tokens"]
    for kind in KINDS:
        npy = os.path.join(args.workdir, f"logits-{kind}.npy")
        runs[kind] = child(args, kind, forced, npy)
        runs[kind]["logits"] = np.load(npy)
    ref = runs["float32"]
    assert ref["tokens"] == base["tokens"]     # the float32 run is reproducible
    print(f"{args.model}\nbackend {args.backend}, {len(prompt_ids)}-token prompt, "
          f"{args.tokens} greedy tokens, cache of {args.context} positions\n")
    print("| KV cache | KV bytes | saved vs float32 | peak RSS (MiB) | max rel. logit error "
          "vs float32 (teacher-forced) | argmax agreement (teacher-forced) | greedy tokens "
          "equal to float32's | first divergence |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for kind in KINDS:
        r = runs[kind]
        err = float(np.max(np.abs(r["logits"] - ref["logits"])) / np.max(np.abs(ref["logits"])))
        tail = slice(len(prompt_ids) - 1, None)     # positions that predict a generated token
        agree = float(np.mean(r["logits"][tail].argmax(-1) == ref["logits"][tail].argmax(-1)))
        same = sum(a == b for a, b in zip(r["tokens"], ref["tokens"]))
        first = next((i for i, (a, b) in enumerate(zip(r["tokens"], ref["tokens"])) if a != b),
                     None)
        print(f"| {kind} | {r['kv_bytes']:,} | {1 - r['kv_bytes'] / ref['kv_bytes']:.1%} | "
              f"{r['peak_rss'] / 2**20:.0f} | {err:.2e} | {agree:.4f} | {same}/{len(ref['tokens'])} | "
              f"{'none' if first is None else first} |")


if __name__ == "__main__":
    main()
