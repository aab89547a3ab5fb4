"""Dense (unquantized) weights as they sit in the file, and their conversion to compute floats.

A dense weight is either a NumPy array (float32, float16 or float64; usually a read-only view
into a memory-mapped file) or a `BFloat16Array`, because NumPy has no bfloat16.

bfloat16 is the upper half of a float32:
    bit 15   14 .. 7    6 .. 0
        sign exponent   mantissa (7 bits)
so `float32 bits = bf16 bits << 16` decodes it exactly.

Weights stay in their file dtype; an op converts the part it needs to the compute dtype
(`as_compute`, or `rows_as_compute` for an embedding lookup) at the moment it uses it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BFloat16Array:
    bits: np.ndarray  # uint16, any shape: the raw bfloat16 bit patterns

    @property
    def shape(self) -> tuple[int, ...]:
        return self.bits.shape

    @property
    def nbytes(self) -> int:
        return self.bits.nbytes

    dtype_name = "bfloat16"


def bfloat16_to_float32(bits: np.ndarray) -> np.ndarray:
    """Decode bfloat16 bit patterns (uint16) to float32, exactly."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def dtype_name(w) -> str:
    """bfloat16 and quantized tensors name themselves; NumPy arrays by their dtype."""
    return getattr(w, "dtype_name", None) or str(w.dtype)


def as_compute(w, dtype) -> np.ndarray:
    """The whole weight in the compute dtype (a view, no copy, when it is already that dtype)."""
    if isinstance(w, BFloat16Array):
        return bfloat16_to_float32(w.bits).astype(dtype, copy=False)
    return np.asarray(w, dtype=dtype)


def rows_as_compute(w, rows: np.ndarray, dtype) -> np.ndarray:
    """Selected rows of a 2-D weight in the compute dtype; only those rows are read."""
    if isinstance(w, BFloat16Array):
        return bfloat16_to_float32(w.bits[rows]).astype(dtype, copy=False)
    return np.asarray(w[rows], dtype=dtype)
