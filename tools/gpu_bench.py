"""The CuPy backend's figures on a GPU: the GEMV's bandwidth against a measured streaming-read
ceiling, decode and prefill speed and peak device memory of a Qwen-7B-shaped int4 model.

    python tools/gpu_bench.py [--model /tmp/qwen-np-7b-int4] [--json OUT]

1. Ceiling: kernels.cu's read_bandwidth over a 4 GiB buffer (16-byte loads, a grid of 8 blocks
   per SM), the best of 20 runs.
2. GEMV: the backend's one-token product over the matrices of Qwen-7B (GPTQ int4 g128 with
   float16 scales, as the checkpoint holds them; the float16 LM head) and of Qwen2.5-0.5B
   (4-bit g32 codes; the LM head 8-bit), random codes. Each is timed as 200 launches captured
   in a CUDA graph (so that Python's launch cost is not counted), bytes = the matrix's device
   bytes + x + y; reported in GB/s and as a share of the ceiling.
3. The model (--model, written by tools/make_qwen7b_int4.py): qwen_np.load(backend="cupy"),
   a 128-token prefill, 64 greedy decoded tokens (wall clock, synchronised), then a 2048-token
   prompt in 512-token chunks plus 8 decoded tokens with the peak of CuPy's memory pool and
   of the device's used memory (cudaMemGetInfo, which includes the CUDA context) beside
   Qwen's 8.21 GB for Qwen-7B-Chat-Int4 (its README, A100, BF16 16.99 GB).

Without a usable GPU it prints why and exits 0: tools/gpu_check.sh runs it either way.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

QWEN_INT4_GB = 8.21      # Qwen-7B-Chat-Int4's peak memory, Qwen's README (A100)

SHAPES_7B = {"c_attn q/k/v": (4096, 4096), "c_proj": (4096, 4096), "w1/w2": (11008, 4096),
             "mlp.c_proj": (4096, 11008)}
SHAPES_05B = {"q_proj": (896, 896), "k/v_proj": (128, 896), "o_proj": (896, 896),
              "gate/up": (4864, 896), "down": (896, 4864)}


def random_q4(rows: int, n: int, group: int, rng, bits: int = 4):
    from qwen_np.tensors.packing import pack_codes
    from qwen_np.tensors.quantized import QuantizedTensor
    q = rng.integers(0, 1 << bits, (rows, n), dtype=np.uint8)
    G = -(-n // group)
    scale = rng.uniform(0.003, 0.005, (rows, G)).astype(np.float16)
    offset = (-8 * scale.astype(np.float32)).astype(np.float16)
    return QuantizedTensor((rows, n), bits, group, pack_codes(q, bits), scale, offset)


def graph_time(cp, fn, repeats: int) -> float:
    """Seconds per call of fn(): `repeats` calls captured in a CUDA graph, launched 5 times."""
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        fn()                                   # load the kernel before capturing
        stream.synchronize()
        stream.begin_capture()
        for _ in range(repeats):
            fn()
        graph = stream.end_capture()
        graph.launch(stream)
        stream.synchronize()
        start, stop = cp.cuda.Event(), cp.cuda.Event()
        best = float("inf")
        for _ in range(5):
            start.record(stream)
            graph.launch(stream)
            stop.record(stream)
            stop.synchronize()
            best = min(best, cp.cuda.get_elapsed_time(start, stop) / 1e3 / repeats)
    return best


def read_ceiling(cp, be) -> float:
    """Bytes per second of kernels.cu's read_bandwidth over 4 GiB, best of 20."""
    words = (4 << 30) // 16
    buf = cp.zeros(words * 16, dtype=np.uint8)
    out = cp.zeros(1, dtype=np.uint32)
    sms = cp.cuda.Device().attributes["MultiProcessorCount"]
    kernel = be.kernel("read_bandwidth")
    start, stop = cp.cuda.Event(), cp.cuda.Event()
    best = float("inf")
    for _ in range(20):
        start.record()
        kernel((8 * sms,), (512,), (buf, np.int64(words), np.uint32(1), out))
        stop.record()
        stop.synchronize()
        best = min(best, cp.cuda.get_elapsed_time(start, stop) / 1e3)
    del buf
    return words * 16 / best


def gemv_rows(cp, be, ceiling: float, shapes: dict, group: int, extra: dict, rng) -> list[dict]:
    rows_out = []
    mats = {name: be.prepare(random_q4(r, n, group, rng)) for name, (r, n) in shapes.items()}
    mats.update({name: be.prepare(w) for name, w in extra.items()})
    from qwen_np.backends.cuda import launch as ck
    for name, m in mats.items():
        x = be.asarray(rng.standard_normal((1, m.shape[1])).astype(np.float32))
        y = cp.empty((1, m.shape[0]), dtype=np.float32)
        arrays, sizes = be.weight_args(m)
        grid, block = ck.gemv_launch(m.shape[0])
        kernel = be.kernel(ck.templated("gemv", m.fmt, m.half_scales))
        args = (*arrays, x, *sizes, np.int32(m.shape[0]), y)   # what be.linear launches
        t = graph_time(cp, lambda: kernel((grid,), (block,), args), 200)
        nbytes = m.nbytes + 4 * (m.shape[0] + m.shape[1])
        rows_out.append({"matrix": name, "shape": list(m.shape), "format": m.dtype_name,
                         "bytes": nbytes, "us": t * 1e6, "GB/s": nbytes / t / 1e9,
                         "share_of_ceiling": nbytes / t / ceiling})
    return rows_out


def model_figures(cp, model_dir: str) -> dict:
    import qwen_np
    from qwen_np.runtime.generate import generate
    pool = cp.get_default_memory_pool()
    free0, total = cp.cuda.runtime.memGetInfo()
    t0 = time.perf_counter()
    m = qwen_np.load(model_dir, backend="cupy")
    cp.cuda.Device().synchronize()
    load_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    V = m.config.vocab_size
    prompt = rng.integers(0, 151643, 128).tolist() if V > 151643 else rng.integers(0, V, 128).tolist()
    cache = m.new_cache(128 + 64)
    from qwen_np.model.forward import forward
    cp.cuda.Device().synchronize()
    t = time.perf_counter()
    logits = forward(m.config, m.weights, m.backend, prompt, cache, last_only=True)
    m.backend.greedy_token(logits)
    prefill_s = time.perf_counter() - t
    token = m.backend.greedy_token(logits)
    t = time.perf_counter()
    for _ in range(64):
        logits = forward(m.config, m.weights, m.backend, [token], cache, last_only=True)
        token = m.backend.greedy_token(logits)
    decode_s = time.perf_counter() - t
    del cache, logits
    peak_used = [0]

    def sample(_):
        peak_used[0] = max(peak_used[0], total - cp.cuda.runtime.memGetInfo()[0])
    long_prompt = (prompt * 16)[:2048]
    cache = m.new_cache(2048 + 8)
    generate(m.config, m.weights, m.backend, long_prompt, max_new_tokens=8, cache=cache,
             stream=sample)
    cp.cuda.Device().synchronize()
    sample(None)
    return {"load_s": load_s, "prefill_tokens": 128, "prefill_tok_s": 128 / prefill_s,
            "decode_tokens": 64, "decode_tok_s": 64 / decode_s,
            "context_2048_pool_peak_GB": pool.total_bytes() / 1e9,
            "context_2048_device_used_GB": peak_used[0] / 1e9,
            "device_used_before_load_GB": (total - free0) / 1e9,
            "qwen_int4_GB": QWEN_INT4_GB, "cache_length": cache.length}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="/tmp/qwen-np-7b-int4")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args(argv)
    from qwen_np.errors import BackendUnavailable
    try:
        from qwen_np.backends import get_backend
        be = get_backend("cupy")
    except BackendUnavailable as e:
        print(f"gpu_bench: skipped: {e}")
        return 0
    import cupy as cp
    props = cp.cuda.runtime.getDeviceProperties(0)
    out = {"device": props["name"].decode() if isinstance(props["name"], bytes) else props["name"],
           "cupy": cp.__version__}
    rng = np.random.default_rng(0)
    ceiling = read_ceiling(cp, be)
    out["read_ceiling_GB_s"] = ceiling / 1e9
    print(f"{out['device']}: streaming read {ceiling / 1e9:.0f} GB/s", flush=True)
    head7 = rng.standard_normal((151936, 4096), dtype=np.float32).astype(np.float16)
    out["gemv_7b"] = gemv_rows(cp, be, ceiling, SHAPES_7B, 128, {"lm_head f16": head7}, rng)
    del head7
    head05 = random_q4(151936, 896, 32, rng, bits=8)
    out["gemv_05b"] = gemv_rows(cp, be, ceiling, SHAPES_05B, 32, {"lm_head q8": head05}, rng)
    for key in ("gemv_7b", "gemv_05b"):
        print(f"\n{key}: matrix | shape | format | us | GB/s | share of ceiling")
        for r in out[key]:
            print(f"{r['matrix']} | {r['shape']} | {r['format']} | {r['us']:.1f} | "
                  f"{r['GB/s']:.0f} | {r['share_of_ceiling']:.0%}")
    if os.path.exists(os.path.join(args.model, "config.json")):
        out["model"] = model_figures(cp, args.model)
        mf = out["model"]
        print(f"\n7B-shaped int4 model: load {mf['load_s']:.1f} s, prefill {mf['prefill_tok_s']:.0f} "
              f"tok/s (128 tokens), decode {mf['decode_tok_s']:.1f} tok/s (64 tokens)")
        print(f"2048-token context: pool peak {mf['context_2048_pool_peak_GB']:.2f} GB, device "
              f"used {mf['context_2048_device_used_GB']:.2f} GB (CUDA context included); Qwen's "
              f"Int4: {QWEN_INT4_GB} GB")
    else:
        print(f"\nno model at {args.model}: tools/make_qwen7b_int4.py writes one")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
