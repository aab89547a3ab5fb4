"""The kernels that read row tiles (tiles.py lays them out): products with one token, with the
rows of a decode step and with a prefill's tokens, and tiles dequantized into float columns.

For a tile, with x in the codes' column order, lane r computes

    y[16t + r] = sum_g scale[t, g, r] * (sum_{c in g} q[t, c, r] * x[c]) + offset[t, g, r] * xsum[g]

where xsum[g] (x summed over group g) is computed once per call, before the tiles are
shared out among the threads. The inner loop over the 16 lanes is what LLVM vectorizes (one
512-bit register, or two 256-bit ones).

Each kind of work is written once, as a skeleton, and compiled once per code width, as a C++
template is instantiated once per argument (the CUDA kernels do just that, `template <int
FMT>` in backends/cuda/kernels.cu):

    skeleton     the work                            compiled per width as
    gemv         one token                           gemv_four_bit_tiles, gemv_five_bit_tiles,
                                                     gemv_six_bit_tiles, gemv_byte_tiles
    rows         the rows of a decode step (batch)   rows_four_bit_tiles, ...
    gemm         a prefill's tokens, four at a time  gemm_four_bit_tiles, ...
    dequantize   tiles as float columns (embedding)  dequantize_four_bit_tiles, ...

A width (CodeWidth) is how a lane's codes are read: a step of a few code bytes, decoded into
float32 codes by a small inlined function with shifts and masks by constants. Every kernel of
a width adds up a lane's products in the same order, so that a decode step's rows and one
token agree bit for bit. Every kernel takes (codes, high, scale, offset, ...) and a group's
size in code bytes (in code columns for 8 bits); 4- and 8-bit tiles pass a dummy high plane.
"""

from __future__ import annotations

import types as pytypes
from dataclasses import dataclass, fields

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from qwen_np.backends.numba.floats import LANE_MATH, as_f32
from qwen_np.backends.numba.tiles import LANES

U8 = np.uint8
U64 = np.uint64
BLOCK = 4       # tokens (rows) a step, in rows and gemm
PAIR = 2        # rows of the rows kernel's last pass when two are left


# -- sums on the stack, prefetching, group sums ---------------------------------------------------
# Three things decide whether LLVM compiles these loops into one 16-lane vector register per
# step (all measured on the 8- and 5-bit kernels):
# - the 16 lanes' sums live in a stack array (stack_lanes): LLVM then knows they share no
#   memory with the codes and keeps them in a register. An np.zeros array is heap memory to
#   LLVM, which re-checks at run time that the sums do not overlap the codes and stores them
#   after every step (the 8-bit kernel 3x slower);
# - a loop over the 16 lanes needs a body of some size: a one-line body is unrolled into 16
#   scalar lines, and the loop around it is vectorized instead, across code columns, with
#   gathers (3x slower). Hence a step of several code bytes;
# - the end of a group (sums scaled into the accumulators) loops over `lanes`, the tile
#   width read at run time (16): a loop of a known 16 is unrolled into 16 scalar float16
#   conversions, a loop of unknown length is vectorized into one (1.15x faster in all);
# - the fast-math flags allow fused multiply-adds only (LANE_MATH, see floats.py): with
#   reassoc as well, LLVM takes a lane's sum over the code columns for a reduction and
#   vectorizes across columns with gathers again (1.1-1.3x slower, each of the three).

@intrinsic
def _stack_float32(typingctx, size):
    def codegen(context, builder, signature, args):
        return cgutils.alloca_once(builder, context.get_value_type(types.float32), size=args[0])
    return types.CPointer(types.float32)(types.intp), codegen


BLOCK_LANES = BLOCK * LANES
PAIR_LANES = PAIR * LANES
STEP_CODES = 8                      # the most codes a step decodes (5 bits)
STEP_LANES = STEP_CODES * LANES


@njit(inline="always")
def stack_lanes():
    """16 float32 zeros on the stack (one per lane)."""
    a = numba.carray(_stack_float32(LANES), (LANES,))
    for r in range(LANES):
        a[r] = 0.0
    return a


@njit(inline="always")
def stack_block():
    """[4, 16] float32 zeros on the stack: token (row) i's sum in lane r at [i, r]."""
    a = numba.carray(_stack_float32(BLOCK_LANES), (BLOCK, LANES))
    for i in range(BLOCK):
        for r in range(LANES):
            a[i, r] = 0.0
    return a


@njit(inline="always")
def stack_pair():
    """[2, 16] float32 zeros on the stack: row i's sum in lane r at [i, r]."""
    a = numba.carray(_stack_float32(PAIR_LANES), (PAIR, LANES))
    for i in range(PAIR):
        for r in range(LANES):
            a[i, r] = 0.0
    return a


@njit(inline="always")
def stack_step():
    """[8, 16] float32 on the stack, not zeroed: a step's code k (at most 8) of lane r at
    [k, r]."""
    return numba.carray(_stack_float32(STEP_LANES), (STEP_CODES, LANES))


@intrinsic
def _prefetch(typingctx, flat, index):
    """Ask the CPU to start loading the cache line that holds flat[index] (LLVM's prefetch
    hint: no result, and no fault even past the end)."""
    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        ptr = builder.bitcast(builder.gep(data, [args[1]]), ir.IntType(8).as_pointer())
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(   # renamed by LLVM to its overloaded name
            builder.module, ir.FunctionType(ir.VoidType(), [ptr.type, i32, i32, i32]),
            "llvm.prefetch")
        builder.call(fn, [ptr, i32(0), i32(3), i32(1)])   # read, keep in all caches, data
        return context.get_dummy_value()
    return types.void(flat, types.intp), codegen


PREFETCH_DISTANCE = 4096


@njit(inline="always")
def prefetch_ahead(flat, start, n_bytes):
    """Prefetch n_bytes of flat (a uint8 array), starting PREFETCH_DISTANCE bytes after
    flat[start]."""
    begin = start + PREFETCH_DISTANCE
    for i in range(begin, min(begin + n_bytes, flat.shape[0]), 64):
        _prefetch(flat, i)


@njit(inline="always")
def group_sums(x, group_size, n_groups):
    """xsum[g]: x summed over each group of columns (the last group may be shorter); a
    serial loop, before the kernel's parallel one."""
    xsum = np.empty(n_groups, np.float32)
    for g in range(n_groups):
        s = np.float32(0.0)
        for c in range(g * group_size, min(x.shape[0], (g + 1) * group_size)):
            s += x[c]
        xsum[g] = s
    return xsum


@njit(inline="always")
def rows_group_sums(x, group_size, n_groups):
    """xsum [N, G]: group_sums of each row of x [N, in]."""
    xsum = np.empty((x.shape[0], n_groups), np.float32)
    for i in range(x.shape[0]):
        xsum[i] = group_sums(x[i], group_size, n_groups)
    return xsum


# -- code widths: a lane's codes, a step of code bytes at a time ---------------------------------
# A step is a few code bytes whose codes decode with shifts and masks by constants:
#   4 bits: bytes j, j + 1: codes 2j .. 2j + 3 (one byte would do, but is too small a body for
#           the loop over the lanes, see above)
#   5 bits: bytes j .. j + 3 (j a multiple of 4): codes 2j .. 2j + 7, whose fifth bits are
#           high byte j / 4, bit k for code 2j + k
#   6 bits: bytes j, j + 1 (j even): codes 2j .. 2j + 3, whose bits 4-5 are high byte j / 2,
#           two bits each from bit 0 up
#   8 bits: bytes j .. j + 3: codes j .. j + 3 (a step of one code is too small a body)
# The groups and rows of 4-, 5- and 6-bit tiles are whole steps (tiles_take); 8-bit groups
# are of any size, and their last few codes are read one at a time (byte_code).
# Codes are narrowed to uint8 before they become floats (Numba widens integer arithmetic to
# 64 bits, and 64-bit lanes would halve the vector width). A 5- or 6-bit code's high bits are
# put in place on bytes, with shifts and masks by constants, before the code becomes a
# float. Measured against one kernel for 4 and 5 bits that read the fifth bits from a 32-bit
# word per 32 codes (a test and a select of 16.0 per code; 4-bit tiles passed zero words),
# one thread, AMD EPYC: the 4-bit kernel without any of that is 1.6x faster on AVX2 and 1.2x
# on AVX-512, and the 5-bit kernel on a byte plane 1.12x and 1.15x. Each code still costs a
# widening, a conversion and a fused multiply-add per 8 (AVX2) or 16 (AVX-512) lanes: that,
# not memory, bounds these kernels on AVX2 (BENCHMARKS.md).
# A step's bytes (and dot's activations) are indexed with uint64 (U64): Numba checks every
# signed index for a negative one, to count from the end as Python does, and these checks, a
# few scalar instructions per index and step, made the 5-, 6- and 8-bit one-token kernels
# 1.1x, 1.1x and 1.3x slower (one thread, AMD EPYC, AVX2; the 4-bit one alike). Never mix a
# U64 with a signed integer in arithmetic: Numba makes uint64 + int64 a float64.

@njit(inline="always")
def four_bit_step(codes, high, t, j, r):
    """Codes 2j .. 2j + 3 of lane r as float32: the low, then the high nibble of bytes j and
    j + 1."""
    u = U64(j)
    b0 = codes[t, u, r]
    b1 = codes[t, u + U64(1), r]
    return (np.float32(U8(b0 & U8(15))), np.float32(U8(b0 >> U8(4))),
            np.float32(U8(b1 & U8(15))), np.float32(U8(b1 >> U8(4))))


@njit(inline="always")
def five_bit_step(codes, high, t, j, r):
    """Codes 2j .. 2j + 7 of lane r as float32: nibbles as for 4 bits, and bit k of high
    byte j / 4 as bit 4 of code 2j + k."""
    u = U64(j)
    h = high[t, u >> U64(2), r]
    b0 = codes[t, u, r]
    b1 = codes[t, u + U64(1), r]
    b2 = codes[t, u + U64(2), r]
    b3 = codes[t, u + U64(3), r]
    return (np.float32(U8((b0 & U8(15)) | ((h << U8(4)) & U8(16)))),    # code 2j, bit 0
            np.float32(U8((b0 >> U8(4)) | ((h << U8(3)) & U8(16)))),    # code 2j + 1, bit 1
            np.float32(U8((b1 & U8(15)) | ((h << U8(2)) & U8(16)))),
            np.float32(U8((b1 >> U8(4)) | ((h << U8(1)) & U8(16)))),
            np.float32(U8((b2 & U8(15)) | (h & U8(16)))),
            np.float32(U8((b2 >> U8(4)) | ((h >> U8(1)) & U8(16)))),
            np.float32(U8((b3 & U8(15)) | ((h >> U8(2)) & U8(16)))),
            np.float32(U8((b3 >> U8(4)) | ((h >> U8(3)) & U8(16)))))   # code 2j + 7, bit 7


@njit(inline="always")
def six_bit_step(codes, high, t, j, r):
    """Codes 2j .. 2j + 3 of lane r as float32: nibbles as for 4 bits, and two bits each of
    high byte j / 2 as their bits 4-5."""
    u = U64(j)
    h = high[t, u >> U64(1), r]
    b0 = codes[t, u, r]
    b1 = codes[t, u + U64(1), r]
    return (np.float32(U8((b0 & U8(15)) | ((h & U8(3)) << U8(4)))),     # code 2j
            np.float32(U8((b0 >> U8(4)) | ((h & U8(12)) << U8(2)))),    # code 2j + 1
            np.float32(U8((b1 & U8(15)) | (h & U8(48)))),               # code 2j + 2
            np.float32(U8((b1 >> U8(4)) | ((h & U8(192)) >> U8(2)))))   # code 2j + 3


@njit(inline="always")
def byte_step(codes, high, t, j, r):
    """Codes j .. j + 3 of lane r as float32."""
    u = U64(j)
    return (np.float32(codes[t, u, r]), np.float32(codes[t, u + U64(1), r]),
            np.float32(codes[t, u + U64(2), r]), np.float32(codes[t, u + U64(3), r]))


@njit(inline="always")
def byte_code(codes, t, j, r):
    """Code j of lane r as float32 (8 bits: a group's last codes, one at a time)."""
    return np.float32(codes[t, j, r])


@dataclass(frozen=True)
class CodeWidth:
    """How the kernels read one width of codes: the values of the names a skeleton leaves
    open (upper case: they are constants in the compiled kernel)."""
    name: str                   # in the kernels' names: gemv_{name}_tiles, ...
    CODES_PER_BYTE: int         # 2 (a nibble plane) or 1
    STEP: int                   # code bytes a step
    decode_step: object         # (codes, high, t, j, r) -> the codes of the step at byte j,
                                # lane r: a tuple of 4 or 8 float32
    BYTE_TAIL: bool = False     # groups of any size: their last codes one at a time
    PREFETCH: bool = False      # gemv and rows ask for the codes ahead (see gemv)


FOUR_BIT = CodeWidth("four_bit", 2, 2, four_bit_step)
FIVE_BIT = CodeWidth("five_bit", 2, 4, five_bit_step)
SIX_BIT = CodeWidth("six_bit", 2, 2, six_bit_step)
BYTE = CodeWidth("byte", 1, 4, byte_step, BYTE_TAIL=True, PREFETCH=True)


# -- a step's codes put to use --------------------------------------------------------------------
# The functions that take a step's codes (a tuple of 4 or 8) are written out for each length,
# and Numba's overload picks one as it compiles: a loop over the tuple's items, even of a
# known length, left LLVM lane loops it vectorized worse (dequantize 2-3x slower, measured).

def dot(q, x, c):
    """q[0] x[c] + q[1] x[c + 1] + ... for a step's codes q, added up in this order (each
    product a rounding, or a fused multiply-add)."""


@overload(dot, inline="always")
def _dot(q, x, c):
    def dot4(q, x, c):
        u = U64(c)
        return q[0] * x[u] + q[1] * x[u + U64(1)] + q[2] * x[u + U64(2)] + q[3] * x[u + U64(3)]

    def dot8(q, x, c):
        u = U64(c)
        return (dot(q[:4], x, c) + q[4] * x[u + U64(4)] + q[5] * x[u + U64(5)] +
                q[6] * x[u + U64(6)] + q[7] * x[u + U64(7)])
    return dot4 if len(q) == 4 else dot8


@njit(inline="always")
def fma4(s, r, q, x, t0, c):
    """s[i, r] += q * x[t0 + i, c] for the four tokens i (written out: see gemm)."""
    s[0, r] += q * x[t0, c]
    s[1, r] += q * x[t0 + 1, c]
    s[2, r] += q * x[t0 + 2, c]
    s[3, r] += q * x[t0 + 3, c]


def fma4_step(s, r, q, x, t0, c):
    """fma4 for each of a step's codes q, at columns c, c + 1, ... A 5-bit step's eight codes
    index x with U64, the others' four with signed integers, each the faster for its length
    (1.1x, one thread, AMD EPYC, AVX2): both steps spill some of the 16 ymm registers, and
    the kind of index changes how many."""


@overload(fma4_step, inline="always")
def _fma4_step(s, r, q, x, t0, c):
    def fma4_step4(s, r, q, x, t0, c):
        fma4(s, r, q[0], x, t0, c)
        fma4(s, r, q[1], x, t0, c + 1)
        fma4(s, r, q[2], x, t0, c + 2)
        fma4(s, r, q[3], x, t0, c + 3)

    def fma4_step8(s, r, q, x, t0, c):
        u = U64(c)
        fma4(s, r, q[0], x, t0, u)
        fma4(s, r, q[1], x, t0, u + U64(1))
        fma4(s, r, q[2], x, t0, u + U64(2))
        fma4(s, r, q[3], x, t0, u + U64(3))
        fma4(s, r, q[4], x, t0, u + U64(4))
        fma4(s, r, q[5], x, t0, u + U64(5))
        fma4(s, r, q[6], x, t0, u + U64(6))
        fma4(s, r, q[7], x, t0, u + U64(7))
    return fma4_step4 if len(q) == 4 else fma4_step8


def dequantize_step(v, k, r, q, sc, of):
    """v[k + i, r] = sc * q[i] + of for each of a step's codes q."""


@overload(dequantize_step, inline="always")
def _dequantize_step(v, k, r, q, sc, of):
    def dequantize_step4(v, k, r, q, sc, of):
        v[k, r] = sc * q[0] + of
        v[k + 1, r] = sc * q[1] + of
        v[k + 2, r] = sc * q[2] + of
        v[k + 3, r] = sc * q[3] + of

    def dequantize_step8(v, k, r, q, sc, of):
        dequantize_step(v, k, r, q[:4], sc, of)
        dequantize_step(v, k + 4, r, q[4:], sc, of)
    return dequantize_step4 if len(q) == 4 else dequantize_step8


@njit(inline="always")
def add_group(acc, s, scale, offset, xsum, t, g, lanes):
    """The end of group g for one token: acc += s * scale + offset * xsum[g]."""
    xs = xsum[g]
    for r in range(lanes):
        acc[r] += s[r] * as_f32(scale[t, g, r]) + as_f32(offset[t, g, r]) * xs


@njit(inline="always")
def add_block_group(acc, s, scale, offset, xsum, t, g, t0, lanes):
    """The end of group g for four tokens (or two: s [2, 16]): acc[i] += s[i] * scale +
    offset * xsum[t0 + i, g]; then s is zeroed for the next group."""
    for i in range(s.shape[0]):
        xs = xsum[t0 + i, g]
        for r in range(lanes):
            acc[i, r] += s[i, r] * as_f32(scale[t, g, r]) + as_f32(offset[t, g, r]) * xs
            s[i, r] = 0.0


@njit(inline="always")
def store_block(acc, out, t, t0):
    """out[t0 + i, 16t + r] = acc[i, r] for the four (or two) tokens i."""
    for i in range(acc.shape[0]):
        for r in range(LANES):
            out[t0 + i, t * LANES + r] = acc[i, r]


# -- the skeletons ---------------------------------------------------------------------------------
# Plain Python functions, never called as they are: kernel_for_width (at the end) compiles a
# copy of each for each width, in which the upper-case names and decode_step are the width's.
# `if BYTE_TAIL:` and `if PREFETCH:` test constants, and Numba drops the branch not taken
# before it compiles. bytes_per_group is a group's size in code bytes (the last group is
# shorter when the group size does not divide the row). A group is walked a step at a time,
# from its first byte; an 8-bit group's last 1-3 codes, one at a time.

# -- one token: matrix-vector products -----------------------------------------------------------

def gemv(codes, high, scale, offset, x, bytes_per_group, out):
    """One token: row tiles times x [in] (in the codes' column order) into out [16 T]. A
    step's products are added up (dot) before they join the lane's sum. The 8-bit kernel
    first asks, for each group, for the codes 4 KB ahead (prefetch_ahead): the hardware's own
    prefetcher kept 2 threads at about 14 GB/s on the LM head, and asking ahead reaches 16-21
    (measured in the model and alone). The other widths did not gain from it (6 bits lost)."""
    T, m, lanes = codes.shape
    xsum = group_sums(x, CODES_PER_BYTE * bytes_per_group, scale.shape[1])
    flat = codes.reshape(-1)
    for t in prange(T):
        acc = stack_lanes()
        s = stack_lanes()
        for g in range(scale.shape[1]):
            for r in range(LANES):
                s[r] = 0.0
            j = g * bytes_per_group
            end = min(m, j + bytes_per_group)
            if PREFETCH:
                prefetch_ahead(flat, (t * m + j) * LANES, (end - j) * LANES)
            while j + STEP <= end:
                c = CODES_PER_BYTE * j
                for r in range(LANES):
                    s[r] += dot(decode_step(codes, high, t, j, r), x, c)
                j += STEP
            if BYTE_TAIL:
                while j < end:
                    for r in range(LANES):
                        s[r] += byte_code(codes, t, j, r) * x[j]
                    j += 1
            add_group(acc, s, scale, offset, xsum, t, g, lanes)
        for r in range(LANES):
            out[t * LANES + r] = acc[r]


# -- a few tokens of different sequences (batched decoding) --------------------------------------
# Each row of a decode step belongs to its own sequence, and must come out as the one-token
# kernel computes it for that sequence alone. This is the one-token kernel with four rows per
# lane instead of one: every product and sum of a row is the one-token kernel's, in its
# order (the same dot of the same step), so a row's result is the one-token result, bit for
# bit (tested). A job is a tile, and its codes are read once for all the rows: four rows a
# pass, the passes after the first finding the tile's codes in the core's cache; when two
# rows are left, a pass of two. x is [N, in] with N even (a zero row pads an odd N), xsum
# [N, G] each row's group sums as group_sums makes them.
# Measured with tools/bench_rows.py (one thread, AMD EPYC Zen 3, AVX2, 4-, 5-, 6- and 8-bit
# tiles of 4864 x 896 and 896 x 4864; times over N one-token products, medians of 11
# interleaved rounds): two rows in a four-row pass (two of them zero) cost 1.01-1.16x of two
# one-token products, in a pass of two 0.62-0.64x; six rows in two four-row passes
# 0.68-0.78x, in one of four and one of two 0.53-0.61x; four rows 0.52-0.58x.

def rows(codes, high, scale, offset, x, bytes_per_group, out):
    """gemv for each row of x [N, in] (N even) -> out [N, 16 T]: four rows a pass while four
    are left, then two."""
    T, m, lanes = codes.shape
    N = x.shape[0]
    fours = N - N % BLOCK
    xsum = rows_group_sums(x, CODES_PER_BYTE * bytes_per_group, scale.shape[1])
    flat = codes.reshape(-1)
    for t in prange(T):
        for t0 in range(0, fours, BLOCK):
            x0, x1, x2, x3 = x[t0], x[t0 + 1], x[t0 + 2], x[t0 + 3]
            acc = stack_block()
            s = stack_block()
            for g in range(scale.shape[1]):
                j = g * bytes_per_group
                end = min(m, j + bytes_per_group)
                if PREFETCH:
                    if t0 == 0:
                        prefetch_ahead(flat, (t * m + j) * LANES, (end - j) * LANES)
                while j + STEP <= end:
                    c = CODES_PER_BYTE * j
                    for r in range(LANES):
                        q = decode_step(codes, high, t, j, r)
                        s[0, r] += dot(q, x0, c)
                        s[1, r] += dot(q, x1, c)
                        s[2, r] += dot(q, x2, c)
                        s[3, r] += dot(q, x3, c)
                    j += STEP
                if BYTE_TAIL:
                    while j < end:
                        for r in range(LANES):
                            q = byte_code(codes, t, j, r)
                            s[0, r] += q * x0[j]
                            s[1, r] += q * x1[j]
                            s[2, r] += q * x2[j]
                            s[3, r] += q * x3[j]
                        j += 1
                add_block_group(acc, s, scale, offset, xsum, t, g, t0, lanes)
            store_block(acc, out, t, t0)
        if fours < N:                       # two rows left: the same, two rows a lane
            t0 = fours
            x0, x1 = x[t0], x[t0 + 1]
            acc = stack_pair()
            s = stack_pair()
            for g in range(scale.shape[1]):
                j = g * bytes_per_group
                end = min(m, j + bytes_per_group)
                if PREFETCH:
                    if t0 == 0:
                        prefetch_ahead(flat, (t * m + j) * LANES, (end - j) * LANES)
                while j + STEP <= end:
                    c = CODES_PER_BYTE * j
                    for r in range(LANES):
                        q = decode_step(codes, high, t, j, r)
                        s[0, r] += dot(q, x0, c)
                        s[1, r] += dot(q, x1, c)
                    j += STEP
                if BYTE_TAIL:
                    while j < end:
                        for r in range(LANES):
                            q = byte_code(codes, t, j, r)
                            s[0, r] += q * x0[j]
                            s[1, r] += q * x1[j]
                        j += 1
                add_block_group(acc, s, scale, offset, xsum, t, g, t0, lanes)
            store_block(acc, out, t, t0)


# -- many tokens: four at a time through the tiles (prefill) -------------------------------------
# The same loops as one token's, with four tokens' sums per lane instead of one: each code is
# widened and converted once and meets four activations, so the conversion, the costly part
# of a one-token product, is shared four ways, and nothing is written out but the results.
# The four tokens are written out one by one (fma4): a loop over them, even of a known 4, left
# LLVM keeping the sums in memory (18 GFLOP/s against 110 on one AVX-512 core, measured);
# written out, the 4 x 16 sums stay in registers (4 zmm, or 8 ymm on AVX2). Eight tokens
# measured no faster than four on AVX-512, and on AVX2 would not fit the 16 ymm registers.
# Measured against dequantizing tiles for BLAS (4-bit 4864 x 896, 128 tokens, AMD EPYC):
# about 2x on AVX-512 on one and two threads. A product joins its token's sum on its own, in
# column order, whatever the step.

def gemm(codes, high, scale, offset, x, xsum, bytes_per_group, out):
    """Row tiles times x [N, in] (N a multiple of 4, in the codes' column order) into out
    [N, 16 T]; xsum [N, G] sums x over each group."""
    T, m, lanes = codes.shape
    blocks = x.shape[0] // BLOCK
    for job in prange(T * blocks):
        t, t0 = job // blocks, (job % blocks) * BLOCK
        acc = stack_block()
        s = stack_block()
        for g in range(scale.shape[1]):
            j = g * bytes_per_group
            end = min(m, j + bytes_per_group)
            while j + STEP <= end:
                c = CODES_PER_BYTE * j
                for r in range(LANES):
                    fma4_step(s, r, decode_step(codes, high, t, j, r), x, t0, c)
                j += STEP
            if BYTE_TAIL:
                while j < end:
                    for r in range(LANES):
                        fma4(s, r, byte_code(codes, t, j, r), x, t0, j)
                    j += 1
            add_block_group(acc, s, scale, offset, xsum, t, g, t0, lanes)
        store_block(acc, out, t, t0)


# -- tiles dequantized (embedding lookups) -------------------------------------------------------
# A tile dequantizes into columns: out[c, 16 i + r] is code column c of row 16 (t0 + i) + r,
# so the 16 lanes' values are one contiguous store. (The prefill multiplied such columns
# with BLAS before the four-token kernels above, which are about twice as fast.) Nibble
# codes come in split order: row c < m is code 2c (the low nibble of byte c), row m + c is
# code 2c + 1; embed_from_tiles puts them back in code order. The lanes are computed into
# a stack array first and then copied out: computed straight into `out`, the loop stays
# scalar (LLVM cannot rule out that `out` overlaps the codes; measured 2.5x slower).

def dequantize(codes, high, scale, offset, bytes_per_group, t0, out):
    """Tiles t0 .. of row tiles as float columns into out [in, 16 tiles]: split order for a
    nibble plane, code order for 8-bit codes."""
    m, lanes = codes.shape[1], codes.shape[2]
    for i in prange(out.shape[1] // LANES):
        t = t0 + i
        v = stack_step()
        for g in range(scale.shape[1]):
            j = g * bytes_per_group
            end = min(m, j + bytes_per_group)
            while j + STEP <= end:
                for r in range(LANES):
                    dequantize_step(v, 0, r, decode_step(codes, high, t, j, r),
                                    as_f32(scale[t, g, r]), as_f32(offset[t, g, r]))
                for k in range(STEP * CODES_PER_BYTE):
                    row = (k % CODES_PER_BYTE) * m + j + k // CODES_PER_BYTE   # of code k
                    for r in range(lanes):
                        out[row, i * LANES + r] = v[k, r]
                j += STEP
            if BYTE_TAIL:
                while j < end:
                    for r in range(LANES):
                        v[0, r] = as_f32(scale[t, g, r]) * byte_code(codes, t, j, r) + \
                            as_f32(offset[t, g, r])
                    for r in range(lanes):
                        out[j, i * LANES + r] = v[0, r]
                    j += 1


# -- the kernels: each skeleton compiled for each width ----------------------------------------

def kernel_for_width(skeleton, width: CodeWidth):
    """`skeleton` compiled for one code width, as {skeleton}_{width.name}_tiles: a copy of
    the function that finds the width's values for its open names among its globals. Not a
    closure made by a factory: Numba's on-disk cache keys a closure by a pickle of its cells,
    and a jitted function's pickle holds an id drawn anew in each process, so a closure over
    the decoders would be compiled again at every start."""
    name = f"{skeleton.__name__}_{width.name}_tiles"
    opened = {f.name: getattr(width, f.name) for f in fields(width) if f.name != "name"}
    fn = pytypes.FunctionType(skeleton.__code__, {**skeleton.__globals__, **opened}, name)
    fn.__qualname__ = name      # the cache's files are named after it: one set per width
    fn.__doc__ = skeleton.__doc__
    return njit(cache=True, nogil=True, parallel=True, fastmath=LANE_MATH)(fn)


WIDTHS = (FOUR_BIT, FIVE_BIT, SIX_BIT, BYTE)
gemv_four_bit_tiles, gemv_five_bit_tiles, gemv_six_bit_tiles, gemv_byte_tiles = (
    kernel_for_width(gemv, w) for w in WIDTHS)
rows_four_bit_tiles, rows_five_bit_tiles, rows_six_bit_tiles, rows_byte_tiles = (
    kernel_for_width(rows, w) for w in WIDTHS)
gemm_four_bit_tiles, gemm_five_bit_tiles, gemm_six_bit_tiles, gemm_byte_tiles = (
    kernel_for_width(gemm, w) for w in WIDTHS)
dequantize_four_bit_tiles, dequantize_five_bit_tiles, dequantize_six_bit_tiles, \
    dequantize_byte_tiles = (kernel_for_width(dequantize, w) for w in WIDTHS)
