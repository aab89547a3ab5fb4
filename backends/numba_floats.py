"""Scales and offsets inside Numba kernels. Numba has no float16 arrays, so float16 values
reach the kernels as their uint16 bit patterns and become float32 through LLVM's own
half-to-float conversion (exact for every value; one vcvtph2ps instruction for 8 or 16 lanes
on x86 CPUs with F16C); float32 values are used as they are."""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload


@intrinsic
def half_bits_to_float32(typingctx, bits):
    """The float16 whose bit pattern is `bits` (a uint16), as float32."""
    if not (isinstance(bits, types.Integer) and bits.bitwidth == 16):
        return None

    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())
    return types.float32(bits), codegen


def as_f32(v):
    """A scale or offset element as float32 (a uint16 holds float16 bits)."""


@overload(as_f32)
def _as_f32(v):
    if isinstance(v, types.Integer):
        return lambda v: half_bits_to_float32(v)
    return lambda v: np.float32(v)


def kernel_floats(a: np.ndarray) -> np.ndarray:
    """float16 arrays as their bits (uint16) for the kernels; float32 as they are."""
    return a.view(np.uint16) if a.dtype == np.float16 else a
