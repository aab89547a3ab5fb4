"""Where a decoded token's time goes on the numba backend, and what the machine can read.

    python tools/profile_decode.py [--model PATH] [--threads 2] [--tokens 40]

Prints (1) the read bandwidth of a 2-thread Numba loop over a 400 MB array (the limit a
decoding kernel can approach), (2) the time per token of each backend op, and (3) the time per
token of each kind of quantized matrix-vector product (bits, shape, group), with its rate in
weights per second. The model is the cached default GGUF unless --model is given.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def read_bandwidth(threads: int) -> float:
    """GB/s of a parallel XOR over 400 MB of uint64 (every byte read once per pass)."""
    import numba
    from numba import njit, prange

    @njit(parallel=True)
    def xor_all(a, parts):
        per = a.shape[0] // parts
        out = np.zeros(parts, np.uint64)
        for p in prange(parts):
            s = np.uint64(0)
            for i in range(p * per, (p + 1) * per):
                s ^= a[i]
            out[p] = s
        return out

    numba.set_num_threads(threads)
    a = np.random.default_rng(0).integers(0, 2**62, 50_000_000, dtype=np.uint64)
    xor_all(a, 64)
    t = time.perf_counter()
    for _ in range(5):
        xor_all(a, 64)
    return a.nbytes * 5 / (time.perf_counter() - t) / 1e9


def main():
    import qwen_np
    from qwen_np.model.kv_cache import new_kv_cache
    from qwen_np.apps.fetch import default_model_path
    from qwen_np.model.forward import forward

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=default_model_path())
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=40)
    ap.add_argument("--context", type=int, default=100,
                    help="tokens cached before the decoded ones (prefilled 512 at a time)")
    a = ap.parse_args()

    m = qwen_np.load(a.model, backend="numba", threads=a.threads)   # (sets Numba's flags)
    print(f"read bandwidth, {a.threads} threads: {read_bandwidth(a.threads):.1f} GB/s")
    be, n = m.backend, a.tokens
    ctx = a.context
    cache = new_kv_cache(m.config, ctx + n + 1, be)
    prompt = [100 + i % 1000 for i in range(ctx)]
    for at in range(0, ctx, 512):
        forward(m.config, m.weights, be, prompt[at:at + 512], cache, last_only=True)
    forward(m.config, m.weights, be, [200], cache, last_only=True)       # decode kernels loaded

    op_time, op_calls = collections.defaultdict(float), collections.Counter()
    mat_time, mat_calls = collections.defaultdict(float), collections.Counter()

    def timed(name, f, key=None):
        def call(*args):
            t = time.perf_counter()
            r = f(*args)
            k = name if key is None else key(*args)
            (op_time if key is None else mat_time)[k] += time.perf_counter() - t
            (op_calls if key is None else mat_calls)[k] += 1
            return r
        return call

    for name in ["linear", "rms_norm", "rope", "attention", "silu_mul", "embed"]:
        setattr(be, name, timed(name, getattr(be, name)))
    nb = sys.modules[type(be).__module__]
    for name in ["gemv_tiles"]:   # the backend's one-token products, per matrix kind
        setattr(nb, name, timed(name, getattr(nb, name),
                                key=lambda x, w: (w.bits, w.shape, w.group_size)))
    t0 = time.perf_counter()
    for i in range(n):
        forward(m.config, m.weights, be, [201 + i], cache, last_only=True)
    total = time.perf_counter() - t0
    print(f"{n} tokens: {total / n * 1e3:.1f} ms per token ({n / total:.1f} tok/s)")
    for k, v in sorted(op_time.items(), key=lambda kv: -kv[1]):
        print(f"  {k:10s} {v / n * 1e3:7.2f} ms/token  ({op_calls[k] // n} calls)")
    print(f"  other      {(total - sum(op_time.values())) / n * 1e3:7.2f} ms/token")
    print("matrix-vector products (bits, shape, group):")
    for k, v in sorted(mat_time.items(), key=lambda kv: -kv[1]):
        rate = k[1][0] * k[1][1] * mat_calls[k] / v / 1e9
        print(f"  {str(k):28s} {v / n * 1e3:7.2f} ms/token  ({mat_calls[k] // n} calls, "
              f"{rate:5.2f} G weights/s)")


if __name__ == "__main__":
    main()
