"""Our quantizer: round-to-nearest, per group of `group_size` inputs, as GPTQ's quantizer
defines the grid (so the result is an ordinary GPTQ checkpoint), without GPTQ's error feedback.

For a group x of one output row, with maxq = 2^bits - 1:
  symmetric   scale = 2 max|x| / maxq,             zero = (maxq + 1) / 2
  asymmetric  scale = (max(x, 0) - min(x, 0)) / maxq,  zero = round(-min(x, 0) / scale)
  q = clamp(round(x / scale) + zero, 0, maxq);   x ~ scale * (q - zero)

The scale is stored in float16 and rounded *up* to the next float16, so that the group's range
still fits the codes and every element is within half a step of its value. A zero point of 0
(an all-positive group) would be stored as -1 in GPTQ v1 files, which some loaders misread,
so such a group uses zero 1 and scale max(x) / (maxq - 1) instead.
"""

from __future__ import annotations

import numpy as np

from qwen_np.tensors.quantized import QuantizedTensor, smallest_exact_float
from qwen_np.tensors.packing import pack_codes


def round_up_float16(x: np.ndarray) -> np.ndarray:
    """The smallest float16 >= x, elementwise."""
    x = np.asarray(x, np.float32)
    h = x.astype(np.float16)
    low = h.astype(np.float32) < x
    h[low] = np.nextafter(h[low], np.float16(np.inf))
    return h


def quantize_rtn(w: np.ndarray, bits: int = 4, group_size: int = 128, sym: bool = True):
    """W [out, in] float -> (q uint8 [out, in], zero uint8 [out, G], scale float16 [out, G])."""
    w = np.asarray(w, np.float32)
    out, n_in = w.shape
    g = n_in if group_size in (-1, 0) else group_size
    maxq = (1 << bits) - 1
    groups = -(-n_in // g)
    pad = groups * g - n_in
    wp = np.pad(w, ((0, 0), (0, pad))).reshape(out, groups, g)          # [out, G, g]
    present = np.pad(np.ones(n_in, bool), (0, pad)).reshape(groups, g)   # the tail's real columns
    lo = np.where(present, wp, np.inf).min(-1)
    hi = np.where(present, wp, -np.inf).max(-1)
    lo, hi = np.minimum(lo, 0.0), np.maximum(hi, 0.0)                    # the grid holds 0
    if sym:
        amax = np.maximum(-lo, hi)
        amax = np.where(amax == 0, 1.0, amax)                            # an all-zero group
        scale = round_up_float16(2 * amax / maxq)
        zero = np.full(scale.shape, (maxq + 1) // 2, np.int64)
    else:
        span = np.where(hi - lo == 0, 1.0, hi - lo)
        scale = round_up_float16(span / maxq)
        zero = np.round(-lo / scale.astype(np.float32)).astype(np.int64)
        positive = zero == 0                                             # v1 cannot store zero 0
        scale[positive] = round_up_float16(np.where(hi == 0, 1.0, hi)[positive] / (maxq - 1))
        zero[positive] = 1
    s32 = scale.astype(np.float32)[..., None]
    q = np.clip(np.round(wp / s32) + zero[..., None], 0, maxq).astype(np.uint8)
    return q.reshape(out, groups * g)[:, :n_in], zero.astype(np.uint8), scale


def rtn_to_canonical(q, zero, scale, bits: int, group_size: int) -> QuantizedTensor:
    out, n_in = q.shape
    offset = smallest_exact_float(-(scale.astype(np.float32) * zero.astype(np.float32)))
    return QuantizedTensor(shape=(out, n_in), bits=bits,
                           group_size=n_in if group_size in (-1, 0) else group_size,
                           codes=pack_codes(q, bits), scale=scale, offset=offset)
