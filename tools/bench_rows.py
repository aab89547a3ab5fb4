"""The rows kernel (backends/numba/tile_kernels.py `rows`: the rows of a batched decode step,
each tile's codes read once for all of them) against one-token products, for each code width:

    one-token x N   the gemv kernel once per row
    fours           the rows kernel over the N rows padded with zero rows to a multiple of 4:
                    four-row passes only (what it did before it had a pass of two)
    fours + pair    the rows kernel over the N rows padded to an even count: four-row
                    passes, then a pass of two when two rows are left (what it does)

Each candidate's time is given over the one-token products' in the same round (median and
range over the rounds, in alternating order), one thread unless NUMBA_NUM_THREADS says
otherwise. Every row of every candidate is checked to equal its one-token product bit for
bit. Random codes and float32 scales; groups of 32 (16 for 6 bits, as Q6_K).

    python tools/bench_rows.py [--rounds 15] [--calls 10] [--rows 2,4,6]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("NUMBA_NUM_THREADS", "1")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402

from qwen_np.backends.numba.backend import TILE_KERNELS, tile_operands  # noqa: E402
from qwen_np.backends.numba.tiles import LANES, RowTiles  # noqa: E402

SHAPES = [(4864, 896), (896, 4864)]          # Qwen2.5-0.5B's MLP: gate/up, down
WIDTHS = [(4, 32), (5, 32), (6, 16), (8, 32)]


def random_tiles(bits: int, group: int, out_f: int, n_in: int, seed: int = 0) -> RowTiles:
    rng = np.random.default_rng(seed)
    T, G = out_f // LANES, -(-n_in // group)
    m = n_in if bits == 8 else n_in // 2
    n_high = {5: n_in // 8, 6: n_in // 4}.get(bits)
    codes = rng.integers(0, 256, (T, m, LANES), dtype=np.uint8)
    high = rng.integers(0, 256, (T, n_high, LANES), dtype=np.uint8) if n_high else \
        np.zeros((1, 1, LANES), np.uint8)
    scale = rng.uniform(0.001, 0.02, (T, G, LANES)).astype(np.float32)
    offset = rng.uniform(-0.1, 0.1, (T, G, LANES)).astype(np.float32)
    return RowTiles((out_f, n_in), bits, group, codes, high, scale, offset)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--calls", type=int, default=10)
    ap.add_argument("--rows", default="2,4,6")
    a = ap.parse_args()
    print(f"NUMBA_NUM_THREADS={os.environ['NUMBA_NUM_THREADS']}; {a.rounds} rounds of "
          f"{a.calls} calls; time / one-token x N: median [min-max]")
    for bits, group in WIDTHS:
        for o, i in SHAPES:
            w = random_tiles(bits, group, o, i)
            arrays, per_group = tile_operands(w)
            gemv, rows = TILE_KERNELS[bits][0], TILE_KERNELS[bits][1]
            for N in map(int, a.rows.split(",")):
                x = np.random.default_rng(N).standard_normal((N, i)).astype(np.float32)
                fours = np.zeros((-(-N // 4) * 4, i), np.float32)
                fours[:N] = x
                laid = np.zeros((N + N % 2, i), np.float32)
                laid[:N] = x
                y1 = np.empty(o, np.float32)
                y4 = np.empty((len(fours), o), np.float32)
                y42 = np.empty((len(laid), o), np.float32)
                cands = {"one-token x N": lambda: [gemv(*arrays, x[k], per_group, y1)
                                                   for k in range(N)],
                         "fours": lambda: rows(*arrays, fours, per_group, y4),
                         "fours + pair": lambda: rows(*arrays, laid, per_group, y42)}
                for f in cands.values():
                    f(), f()
                for k in range(N):
                    gemv(*arrays, x[k], per_group, y1)
                    assert all(np.array_equal(y[k], y1) for y in (y4, y42)), (bits, N, k)
                times = {k: [] for k in cands}
                names = list(cands)
                for rnd in range(a.rounds):
                    for k in (names if rnd % 2 == 0 else names[::-1]):
                        t0 = time.perf_counter()
                        for _ in range(a.calls):
                            cands[k]()
                        times[k].append((time.perf_counter() - t0) / a.calls)
                base = np.array(times["one-token x N"])
                line = f"{bits}-bit g{group} {o} x {i}, N = {N}: one-token x N " \
                       f"{np.median(base) * 1e6:6.0f} us"
                for k in names[1:]:
                    r = np.array(times[k]) / base
                    line += f" | {k} {np.median(r):.2f} [{r.min():.2f}-{r.max():.2f}]"
                print(line, flush=True)


if __name__ == "__main__":
    main()
