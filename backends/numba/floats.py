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
from numba import njit
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


@intrinsic
def int32_bits_to_float32(typingctx, bits):
    """The float32 whose bit pattern is `bits` (an int32)."""
    if not (isinstance(bits, types.Integer) and bits.bitwidth == 32):
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(bits), codegen


LOG2E = np.float32(1.4426950408889634)
LN2_HI = np.float32(0.693145751953125)      # ln 2 in two parts: LN2_HI has 16 significant
LN2_LO = np.float32(1.4286068203094173e-06)  # bits, so k * LN2_HI is exact for |k| < 2^8


@njit(inline="always", fastmath={"contract"})
def exp_of_nonpositive(x):
    """exp(x) for x <= 0 (or -inf) in float32, within 1.1 ulp of the exact value (measured,
    tests/test_numba_attention.py), subnormal results included, in operations LLVM
    vectorizes (a loop calling the C library's expf stays scalar). Softmax weights are
    exp(score - max), never of a positive argument; silu uses exp(-|g|).
    exp(x) = 2^k exp(r) with k = round(x / ln 2) and |r| <= ln 2 / 2; exp(r) by its Taylor
    series to r^8 / 8! (the next term is below 2^-27 of it); 2^k built from exponent bits,
    as 2^k1 2^k2 with k1 = max(k, -126), so that a result below float32's normal range is
    rounded once, by the last product. Below -104 the result is 0 (the exact value is below
    half the smallest subnormal)."""
    if x < np.float32(-104.0):
        return np.float32(0.0)
    k = np.float32(np.floor(x * LOG2E + np.float32(0.5)))
    r = (x - k * LN2_HI) - k * LN2_LO
    p = np.float32(1.0 / 40320.0)
    p = p * r + np.float32(1.0 / 5040.0)
    p = p * r + np.float32(1.0 / 720.0)
    p = p * r + np.float32(1.0 / 120.0)
    p = p * r + np.float32(1.0 / 24.0)
    p = p * r + np.float32(1.0 / 6.0)
    p = p * r + np.float32(0.5)
    p = p * r + np.float32(1.0)
    p = p * r + np.float32(1.0)
    k1 = max(np.int64(k), -126)
    k2 = np.int64(k) - k1                                     # -24 .. 0
    return (p * power_of_two(k2)) * power_of_two(k1)


@njit(inline="always")
def power_of_two(k):
    """2^k as float32, for k in -126 .. 127, from its exponent bits."""
    return int32_bits_to_float32(np.int32((k + 127) << 23))


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
