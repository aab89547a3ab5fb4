"""What a batched decode step costs against one token: model.decode_step for B = 1..8 sequences
on the real GGUF (or -m PATH), beside `forward` on one token, in one process.

    python tools/bench_batch.py [-m PATH] [--threads 2] [--context 40] [--steps 16] [--rounds 3]

Each of 8 slots is prefilled with --context tokens; then, for each B, --steps decode steps of
B sequences are timed (after one untimed step), and forward on one token through a cache of
its own. Rounds alternate the sizes, so that a noisy machine spreads over all of them; the
table gives each size's fastest round. With --per-op, also where the time of a step of 1 and
of 4 goes (each backend op timed as it returns). Prints a Markdown table; writes nothing.
"""

from __future__ import annotations

import argparse
import collections
import time

import qwen_np
from qwen_np.model.kv_cache import new_kv_slots
from qwen_np.apps.fetch import default_model_path
from qwen_np.model.forward import decode_step, forward

SIZES = (1, 2, 3, 4, 5, 6, 8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-m", "--model", default=None)
    ap.add_argument("--backend", default="numba")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--context", type=int, default=40)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--per-op", action="store_true")
    args = ap.parse_args()
    m = qwen_np.load(args.model or default_model_path(), backend=args.backend,
                     threads=args.threads)
    cfg, w, be = m.config, m.weights, m.backend
    room = args.context + (args.rounds * len(SIZES) + 2) * (args.steps + 1) + 8
    slots = new_kv_slots(cfg, 8, room, be, m.kv_cache)
    for s in range(8):
        forward(cfg, w, be, [100 + s + i for i in range(args.context)], slots.caches[s],
                last_only=True)
    alone = m.new_cache(room)
    forward(cfg, w, be, list(range(100, 100 + args.context)), alone, last_only=True)

    def one_token():
        forward(cfg, w, be, [5], alone, last_only=True)

    def step(B):
        return lambda: decode_step(cfg, w, be, [5] * B, slots, list(range(B)))

    best = collections.defaultdict(lambda: float("inf"))
    for _ in range(args.rounds):
        for name, run in [("forward, 1 token", one_token)] + [(B, step(B)) for B in SIZES]:
            run()
            t = time.perf_counter()
            for _ in range(args.steps):
                run()
            best[name] = min(best[name], (time.perf_counter() - t) / args.steps)
    single = best["forward, 1 token"]
    print(f"{args.backend}, {be.threads if hasattr(be, 'threads') else ''} threads, "
          f"{args.context} cached tokens")
    print("| sequences | ms per step | tokens/s | x one token |")
    print("| --- | --- | --- | --- |")
    print(f"| forward, 1 token | {single * 1e3:.1f} | {1 / single:.1f} | 1.00 |")
    for B in SIZES:
        print(f"| {B} | {best[B] * 1e3:.1f} | {B / best[B]:.1f} | {B / best[B] * single:.2f} |")
    if args.per_op:
        for B in (1, 4):
            print(f"\nstep of {B}: ms per op")
            for name, seconds in per_op(be, step(B), args.steps):
                print(f"  {seconds * 1e3:6.2f}  {name}")


def per_op(be, run, steps: int):
    """(op, seconds per step) of each backend op, linear_rows by matrix kind and shape."""
    spent = collections.Counter()
    originals = {}
    for name in ("linear_rows", "attention_slots", "rms_norm", "rope", "silu_mul", "embed"):
        originals[name] = getattr(be, name)

        def timed(*a, _name=name, **k):
            t = time.perf_counter()
            out = originals[_name](*a, **k)
            key = _name if _name != "linear_rows" else \
                f"linear_rows {getattr(a[1], 'bits', 'float')}-bit {a[1].shape}"
            spent[key] += time.perf_counter() - t
            return out
        setattr(be, name, timed)
    try:
        run()
        spent.clear()
        t = time.perf_counter()
        for _ in range(steps):
            run()
        spent["(the whole step)"] = time.perf_counter() - t
    finally:
        for name in originals:
            delattr(be, name)           # the class's own method again
    return [(k, v / steps) for k, v in spent.most_common()]


if __name__ == "__main__":
    main()
