"""AWQ's quantization grid: AutoAWQ 0.2.9's `pseudo_quantize_tensor` with zero_point=True (the
only grid its GEMM checkpoints hold), for a weight W [out, in] in groups of g inputs.

For a group x of g consecutive inputs of one output row, maxq = 2^bits - 1:

    scale = max(max(x) - min(x), 1e-5) / maxq
    zero  = clamp(-round(min(x) / scale), 0, maxq)
    q     = clamp(round(x / scale) + zero, 0, maxq)          x ~ scale * (q - zero)

Unlike tensors/rtn.py's grid the range is the group's own [min, max], not widened to hold 0:
an all-positive group gets zero 0 (AWQ stores true zeros, so 0 is fine) and its minimum on
the grid. Rounding is half to even (torch.round, np.round).

Every step is computed in the dtype of x, as torch does: float32 while the scales and the
clipping are searched (`fake_quantize`), float16 for the checkpoint (`quantize_awq`: AutoAWQ's
`_apply_quant` casts the scaled weight to half before quantizing it, so the scales, zeros and
codes it writes come from float16 arithmetic). NumPy's float16 + - * / compute in float32 and
round to float16, as torch's CPU half kernels do: the same result, operation by operation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qwen_np.tensors.packing import pack_codes
from qwen_np.tensors.quantized import QuantizedTensor, smallest_exact_float

MIN_RANGE = 1e-5            # AutoAWQ's clamp of max - min: a constant group keeps a step


def group_grid(x: np.ndarray, bits: int = 4):
    """(scale, zero) [..., 1] of the groups x [..., g], in x's dtype."""
    maxq = x.dtype.type((1 << bits) - 1)
    hi = x.max(-1, keepdims=True)
    lo = x.min(-1, keepdims=True)
    scale = np.maximum(hi - lo, x.dtype.type(MIN_RANGE)) / maxq
    zero = np.clip(-np.round(lo / scale), 0, maxq)
    return scale, zero


def fake_quantize(w: np.ndarray, group_size: int, bits: int = 4) -> np.ndarray:
    """Q(W): W [..., in] rounded onto its groups' grids and back to floats, in W's dtype."""
    shape = w.shape
    x = w.reshape(-1, group_size)                                        # [rows * G, g]
    scale, zero = group_grid(x, bits)
    maxq = (1 << bits) - 1
    q = np.clip(np.round(x / scale) + zero, 0, maxq)
    return ((q - zero) * scale).reshape(shape)


@dataclass
class AWQResult:
    """One quantized matrix, as the AWQ writer (formats/awq.py:awq_from_codes) takes it.

    q      uint8 [out, in]   codes
    zero   uint8 [out, G]    true zero points
    scale  float16 [out, G]
    W[o, i] ~ scale[o, i // g] * (q[o, i] - zero[o, i // g])
    """
    q: np.ndarray
    zero: np.ndarray
    scale: np.ndarray
    group_size: int

    def dequantize(self) -> np.ndarray:
        """The float32 matrix [out, in] the codes stand for."""
        s = np.repeat(self.scale.astype(np.float32), self.group_size, axis=1)
        z = np.repeat(self.zero.astype(np.float32), self.group_size, axis=1)
        return s * (self.q.astype(np.float32) - z)

    def to_quantized(self) -> QuantizedTensor:
        out, n_in = self.q.shape
        offset = smallest_exact_float(-(self.scale.astype(np.float32) * self.zero))
        return QuantizedTensor(shape=(out, n_in), bits=4, group_size=self.group_size,
                               codes=pack_codes(self.q, 4), scale=self.scale.copy(),
                               offset=offset)


def quantize_awq(w: np.ndarray, group_size: int, bits: int = 4) -> AWQResult:
    """W [out, in] (scaled and clipped, float32) -> the checkpoint's codes, as AutoAWQ writes
    them: W cast to float16, then the grid in float16 arithmetic."""
    w16 = np.asarray(w).astype(np.float16)
    out, n_in = w16.shape
    x = w16.reshape(out, n_in // group_size, group_size)                 # [out, G, g]
    scale, zero = group_grid(x, bits)                                    # [out, G, 1] float16
    q = np.clip(np.round(x / scale) + zero, 0, (1 << bits) - 1)
    return AWQResult(q=q.reshape(out, n_in).astype(np.uint8), zero=zero[..., 0].astype(np.uint8),
                     scale=scale[..., 0], group_size=group_size)
