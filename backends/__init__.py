"""The backend interface: the handful of ops the model calls, and choosing a backend by name.

A backend is an object with these members (shapes use T tokens, D hidden, H query heads,
Hkv key/value heads, Dh head dim, S cached positions):

    dtype                          the compute dtype (float32; float64 for oracle work)
    asarray(x)                     a host array -> the backend's array type, in `dtype`
    to_numpy(x)                    the backend's array -> a NumPy array
    zeros(shape, dtype=None)       a zero array (of `dtype` unless given) on the backend, its
                                   memory really held (KV cache storage)
    prepare(w)                     a weight matrix as the loader produced it -> the form this
                                   backend's linear and embed read (once, at load; the NumPy
                                   backend returns it as is, the Numba one re-lays quantized
                                   matrices as row tiles, in their own memory: w is not to be
                                   used afterwards). linear and embed also take the loader's
                                   form directly.
    embed(table, ids)              [V, D] table, [T] ids            -> [T, D]
    linear(x, w, bias=None)        [T, in] x, w [out, in]           -> [T, out]  (x @ w.T + bias)
    rms_norm(x, w, eps)            [..., n] x, [n] w                -> [..., n]
    rope(x, positions, inv_freq, scaling=1.0)
                                   [T, h, Dh] x, [T] positions      -> [T, h, Dh] (rotate-half
                                   over the first 2 * len(inv_freq) dims, cos and sin times
                                   `scaling` (YaRN); the rest unchanged)
    attention(q, k, v, start)      q [T, H, Dh], k/v [S, Hkv, Dh]; query t sits at position
                                   start + t and sees keys 0..start+t (causal, GQA); k/v
                                   are float arrays (any float dtype) or an int8 cache's
                                   Int8Rows (model/kv_cache.py), read as stored
                                                                    -> [T, H, Dh]
    silu_mul(gate, up)             [T, F], [T, F]                   -> [T, F]  silu(gate) * up
    dequantize_kv(codes, scale, zero)  uint8 [S, Hkv, Dh], [S, Hkv] x2  -> [S, Hkv, Dh]
                                   scale * (code - zero): an int8 KV cache read (model/kv_cache.py)

Optional members (runtime/generate.py uses them where present):
    kv_kinds                       the KV cache kinds it keeps (default: all of model/kv_cache.py's)
    greedy_token(logits)           the argmax of logits[-1] as an int, chosen where the logits
                                   are (the cupy backend: on the device)
    prepared_layout, prepared_types
                                   a version string of the form `prepare` returns, and the
                                   dataclasses it makes besides the loader's: with them the
                                   prepared-model cache (qwen_np/runtime/prepared_cache.py) may store
                                   its weights on disk (see prepared_form)

Weights are passed as the loader produced them (memory-mapped, in their file dtype), or as
`prepare` returned them; an op converts what it reads. The NumPy backend is the definition
of every op.
"""

from __future__ import annotations

from qwen_np.errors import BackendUnavailable

BACKENDS = ("numpy", "numba", "cupy")


def get_backend(name: str = "numpy", dtype: str = "float32", threads: int | None = None,
                notice=None):
    """A backend object by name; `dtype` is "float32" or "float64" (cupy: float32 only);
    `threads` (default: all cores) is honoured by the CPU backends' kernels and by BLAS.

    "auto" is the fast CPU backend, numba, in float32; float64 is the NumPy reference's. Where
    numba cannot load, it is numpy, and `notice(text)` (if given) gets one line saying why."""
    if dtype not in ("float32", "float64"):
        raise BackendUnavailable(f"dtype {dtype!r} is not supported (float32 or float64)")
    if name == "auto":
        if dtype == "float64":
            return get_backend("numpy", dtype, threads)
        try:
            return get_backend("numba", dtype, threads)
        except BackendUnavailable as e:
            if notice is not None:
                notice(f"{e}; running the numpy backend (the reference: slower)")
            return get_backend("numpy", dtype, threads)
    if threads is not None:
        set_blas_threads(threads)
    if name == "numpy":
        from qwen_np.backends.numpy.backend import NumpyBackend
        return NumpyBackend(dtype)
    if name == "numba":
        try:
            from qwen_np.backends.numba.backend import NumbaBackend
        except ImportError as e:
            raise BackendUnavailable(f"backend 'numba' cannot load ({e}); "
                                     f"pip install numba") from None
        return NumbaBackend(dtype, threads)
    if name == "cupy":
        from qwen_np.backends.cuda.backend import CupyBackend
        return CupyBackend(dtype)
    raise BackendUnavailable(f"backend {name!r} is not available "
                             f"(available: auto, {', '.join(BACKENDS)})")


def prepared_form(be) -> tuple[str, tuple[type, ...]] | None:
    """(layout version, the dataclasses `be.prepare` makes) of a backend whose prepared
    weights the prepared-model cache may store, or None: a backend that declares nothing is
    not cached (the cupy backend's weights live on the GPU)."""
    if getattr(be, "prepared_layout", None) is not None:
        return str(be.prepared_layout), tuple(getattr(be, "prepared_types", ()))
    return None


def set_blas_threads(threads: int) -> None:
    """Limit the BLAS NumPy calls into (OpenBLAS, MKL) to `threads`, via threadpoolctl when it
    is installed (a dependency, with numba)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(limits=threads, user_api="blas")
