"""Floats inside Numba kernels: which fast-math liberties the kernels grant LLVM, and how
scales and offsets are read.

Fast math. Numba's fastmath=True grants all seven of LLVM's flags. Two of them, ninf (no
value is infinite) and arcp (x / y may be x * (1 / y)), together turned silu's g / (1 +
exp(-g)) into NaN for every gate below about -88.7, where exp(-g) overflows and the reference
returns -0; one NaN reaches every later logit. The kernels grant only the flags they were
measured to need (one token and 128, on an AVX-512 EPYC), so that inf, NaN and the sign of
zero keep their IEEE meaning:
- LANE_MATH = {"contract"}: a * b + c may become one fused multiply-add (one rounding
  instead of two). For the row-tile kernels, whose 16 lanes are 16 independent sums, and for
  the elementwise ops. With reassoc as well, the one-token kernels ran 1.1-1.3x slower: LLVM
  then takes a lane's sum over the code columns for a reduction and vectorizes it across the
  columns, with gathers, instead of across the 16 lanes.
- ROW_SUM_MATH = {"contract", "reassoc"}: sums along a row may also be re-ordered, so that
  they vectorize into partial sums (RMSNorm's sum of squares, attention's dot products and
  softmax total: 3-8x faster than without reassoc).
Left out: nnan and ninf (infinities occur: exp overflows, so does a huge row's sum of
squares), nsz, arcp (silu's 1 / (1 + exp(-g)) is subnormal near g = -88; arcp saved 4 us on
a 128-row RMSNorm and nothing elsewhere) and afn (approximate exp, division and square root:
no kernel ran faster with it).

Scales and offsets. Numba has no float16 arrays, so float16 values reach the kernels as their
uint16 bit patterns and become float32 through LLVM's own half-to-float conversion (exact for
every value; one vcvtph2ps instruction for 8 or 16 lanes on x86 CPUs with F16C); float32
values are used as they are."""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload

LANE_MATH = {"contract"}
ROW_SUM_MATH = {"contract", "reassoc"}


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
