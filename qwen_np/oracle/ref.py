"""The stable single-op reference API: what people testing their own kernels, ports and
quantizers import.

    from qwen_np import ref
    w = ref.dequantize_gptq(qweight, qzeros, scales, g_idx, bits=4, group_size=128)
    y = ref.attention(q, k, v, start=0, dtype="float64")

Stability: these names, their arguments and what they return are a promise. They do not change
within a major version; new keyword arguments may be added with defaults that keep today's
results. Everything else in qwen_np is free to change.

Conventions of every function here:
  - inputs are NumPy arrays (anything np.asarray takes) and are not modified;
  - results are NumPy arrays of `dtype`: "float32" (the default, as the models compute) or
    "float64" (the same expressions evaluated in float64, for oracle work);
  - quantized tensors are taken exactly as stored in the file (the safetensors or GGUF bytes),
    so that a port can feed its own reader's output and compare;
  - shapes are NumPy's, row-major: a weight is [out, in] as in torch.nn.Linear.
The models themselves run these same computations (the NumPy backend and the format
converters): there is one definition of each op in the project, and this module names it.
"""

from __future__ import annotations

import numpy as np

from qwen_np.backends.numpy.backend import NumpyBackend
from qwen_np.tensors.dense import BFloat16Array, as_compute
from qwen_np.errors import FormatError
from qwen_np.formats.awq import awq_to_canonical
from qwen_np.formats.gguf_blocks import BLOCK_TYPES, block_rows_to_canonical
from qwen_np.formats.gptq import gptq_to_canonical
from qwen_np.tensors.quantized import QuantizedTensor, dequantize

__all__ = ["dequantize_gptq", "dequantize_awq", "dequantize_gguf", "linear", "rms_norm",
           "rope", "rope_inv_freq", "attention", "silu_mul"]

GGUF_FLOAT_TYPES = {0: "F32", 1: "F16", 30: "BF16"}


def _ops(dtype) -> NumpyBackend:
    if str(np.dtype(dtype)) not in ("float32", "float64"):
        raise ValueError(f"dtype must be float32 or float64, not {dtype}")
    return NumpyBackend(str(np.dtype(dtype)))


# -- dequantizing the formats on disk ---------------------------------------------------------

def dequantize_gptq(qweight, qzeros, scales, g_idx=None, bits: int = 4, group_size: int = 128,
                    checkpoint_format: str = "gptq", dtype="float32") -> np.ndarray:
    """A GPTQ linear's float weight [out, in] from its stored tensors.

        qweight  int32 [in * bits / 32, out]   codes packed along the input, low bits first
        qzeros   int32 [groups, out * bits / 32]  zero points packed along the output
        scales   float16 (or bfloat16 as uint16 bits, or float32) [groups, out]
        g_idx    int32 [in] or None             the group of each input column (act-order:
                                                scattered); None means i // group_size
        bits     4 or 8;  group_size: -1 (or 0) for one group per column
        checkpoint_format  "gptq" (v1: stored zero = zero - 1, AutoGPTQ and GPTQModel's
                           default on disk) or "gptq_v2" (stored zero = zero)

    w[o, i] = scales[g, o] * (q[i, o] - zero[g, o]) with g = g_idx[i].
    """
    if checkpoint_format not in ("gptq", "gptq_v2"):
        raise FormatError(f"checkpoint_format {checkpoint_format!r}: gptq or gptq_v2")
    out, n_in = np.shape(scales)[1], np.shape(qweight)[0] * 32 // bits
    if g_idx is None:
        g = n_in if group_size in (-1, 0) else group_size
        g_idx = (np.arange(n_in) // g).astype(np.int32)
    qt = gptq_to_canonical("gptq", np.asarray(qweight), np.asarray(qzeros), np.asarray(scales),
                           np.asarray(g_idx), bits, group_size, checkpoint_format == "gptq_v2",
                           (out, n_in))
    return dequantize(qt, np.dtype(dtype))


def dequantize_awq(qweight, qzeros, scales, bits: int = 4, group_size: int = 128,
                   dtype="float32") -> np.ndarray:
    """An AWQ (GEMM layout) linear's float weight [out, in] from its stored tensors.

        qweight  int32 [in, out / 8]       eight 4-bit codes per word along the output, in
                                           AWQ's interleaved order 0, 2, 4, 6, 1, 3, 5, 7
        qzeros   int32 [groups, out / 8]   zero points, same packing
        scales   float16 [groups, out]

    w[o, i] = scales[g, o] * (q[i, o] - zero[g, o]) with g = i // group_size.
    """
    out, n_in = np.shape(scales)[1], np.shape(qweight)[0]
    qt = awq_to_canonical("awq", np.asarray(qweight), np.asarray(qzeros), np.asarray(scales),
                          bits, group_size, (out, n_in))
    return dequantize(qt, np.dtype(dtype))


def dequantize_gguf(raw, ggml_type, shape, dtype="float32") -> np.ndarray:
    """A GGUF tensor's float values [rows, cols] from its bytes as stored in the file.

        raw        uint8 bytes of the tensor's data (rows * bytes_per_row of them)
        ggml_type  the tensor's ggml type: its number (2 = Q4_0, 12 = Q4_K ...) or its name
                   ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K", "F32",
                   "F16", "BF16")
        shape      (rows, cols) in NumPy's order: GGUF lists dimensions fastest first, so a
                   tensor whose header says [cols, rows] is (rows, cols) here

    Every block type is drawn, bit by bit, in qwen_np/formats/gguf_blocks.py; the values equal
    gguf-py's gguf.quants.dequantize (tests/formats/test_gguf_blocks.py, tests/test_ref.py).
    """
    names = {v[0]: k for k, v in BLOCK_TYPES.items()}
    names.update({v: k for k, v in GGUF_FLOAT_TYPES.items()})
    type_id = names.get(ggml_type, ggml_type) if isinstance(ggml_type, str) else int(ggml_type)
    rows, cols = (int(s) for s in shape)
    raw = np.ascontiguousarray(np.asarray(raw, np.uint8).reshape(-1))
    if type_id in GGUF_FLOAT_TYPES:
        kind = GGUF_FLOAT_TYPES[type_id]
        item = {"F32": 4, "F16": 2, "BF16": 2}[kind]
        if raw.size != rows * cols * item:
            raise FormatError(f"{kind} tensor of shape {[rows, cols]} needs {rows * cols * item} "
                              f"bytes, {raw.size} given")
        a = raw.view({"F32": np.float32, "F16": np.float16, "BF16": np.uint16}[kind])
        a = BFloat16Array(a) if kind == "BF16" else a
        return as_compute(a, np.dtype(dtype)).reshape(rows, cols).copy()
    if type_id not in BLOCK_TYPES:
        raise FormatError(f"ggml type {ggml_type!r} is not one this version reads "
                          f"(supported: {', '.join(v[0] for v in BLOCK_TYPES.values())}, "
                          f"F32, F16, BF16)")
    name, block, type_size, _, _ = BLOCK_TYPES[type_id]
    if cols % block or raw.size != rows * cols // block * type_size:
        raise FormatError(f"{name} tensor of shape {[rows, cols]}: rows must be whole "
                          f"{block}-value blocks of {type_size} bytes ({raw.size} bytes given)")
    qt = block_rows_to_canonical(raw.reshape(rows, -1), type_id, (rows, cols))
    return dequantize(qt, np.dtype(dtype))


# -- the model's ops ----------------------------------------------------------------------------

def linear(x, w, bias=None, dtype="float32") -> np.ndarray:
    """x [T, in] @ w.T (+ bias [out]) -> [T, out]. w is a float array [out, in] (any float
    dtype; converted as read) or a qwen_np.tensors.quantized.QuantizedTensor (dequantized a tile at a
    time, in `dtype`)."""
    ops = _ops(dtype)
    w = w if isinstance(w, (QuantizedTensor, BFloat16Array)) else np.asarray(w)
    return ops.linear(np.asarray(x, ops.dtype), w,
                      None if bias is None else np.asarray(bias, ops.dtype))


def rms_norm(x, weight, eps: float = 1e-6, dtype="float32") -> np.ndarray:
    """x [..., n] / sqrt(mean(x^2 over n) + eps) * weight [n] (Qwen2RMSNorm; the original
    Qwen's RMSNorm is the same, with its own eps)."""
    ops = _ops(dtype)
    return ops.rms_norm(np.asarray(x, ops.dtype), np.asarray(weight, ops.dtype), eps)


def rope_inv_freq(rotary_dim: int, theta: float = 10000.0, ntk_alpha: float = 1.0) -> np.ndarray:
    """inv_freq[j] = 1 / base^(2j / rotary_dim), j < rotary_dim / 2, float64; base = theta,
    or theta * alpha^(d / (d - 2)) with the original Qwen's dynamic-NTK alpha (1, 3, 7 ...)."""
    base = theta if ntk_alpha == 1.0 else theta * ntk_alpha ** (rotary_dim / (rotary_dim - 2))
    return 1.0 / base ** (np.arange(0, rotary_dim, 2, dtype=np.float64) / rotary_dim)


def rope(x, positions, theta: float = 10000.0, rotary_dim: int | None = None,
         ntk_alpha: float = 1.0, dtype="float32") -> np.ndarray:
    """Rotate-half RoPE (transformers' rotate_half; GGUF's "NEOX" mode): x [T, heads, head_dim]
    at positions [T] -> [T, heads, head_dim]. The first rotary_dim (default head_dim) dims of
    each head rotate, element i with element i + rotary_dim / 2; the rest pass unchanged (the
    original Qwen's rotary_pct < 1). Angles, cos and sin are computed in float64 and rounded
    to `dtype`."""
    ops = _ops(dtype)
    x = np.asarray(x, ops.dtype)
    inv = rope_inv_freq(rotary_dim or x.shape[-1], theta, ntk_alpha)
    return ops.rope(x, np.asarray(positions), inv)


def attention(q, k, v, start: int = 0, dtype="float32") -> np.ndarray:
    """Causal grouped-query attention: q [T, H, Dh] for positions start .. start + T - 1,
    k and v [S, Hkv, Dh] for positions 0 .. S - 1 (S >= start + T; the keys a query may not
    see are masked). Query head h reads KV head h // (H / Hkv). Scores q.k / sqrt(Dh), a
    softmax over the visible keys (its maximum taken off first) -> [T, H, Dh]."""
    ops = _ops(dtype)
    return ops.attention(np.asarray(q, ops.dtype), np.asarray(k, ops.dtype),
                         np.asarray(v, ops.dtype), int(start))


def silu_mul(gate, up, dtype="float32") -> np.ndarray:
    """SwiGLU's product: gate / (1 + exp(-gate)) * up, elementwise (for a gate below about
    -88.7 in float32, exp(-gate) is inf and the product a signed zero, never NaN)."""
    ops = _ops(dtype)
    return ops.silu_mul(np.asarray(gate, ops.dtype), np.asarray(up, ops.dtype))
