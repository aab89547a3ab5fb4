"""Row tiles: the Numba backend's layout of a quantized matrix, and the kernels that read it.

A matrix-vector product over the canonical form (one row after another) must add up each
row's products into one number: a horizontal sum of a vector register per block of codes,
which costs about as much as the products themselves. Laid out as tiles of 16 rows, with
the 16 rows' copies of each code byte side by side, one vector register holds the same
code column of 16 rows: every lane is a row, and the 16 outputs are added up lane by lane,
with no horizontal sum at all.

    canonical codes [out, m]                row tiles codes [T, m, 16], T = out / 16
    (m bytes per row)                       (rounded up; pad rows are zero)

    row 0:  b[0, 0]   b[0, 1]  ...          tile t, byte column j: 16 bytes,
    row 1:  b[1, 0]   b[1, 1]  ...    ->      codes[t, j, :] = b[16t, j], b[16t + 1, j], ...,
    ...                                                        b[16t + 15, j]
    row 15: b[15, 0]  ...

The code bytes themselves are the canonical ones, untouched: for 4-, 5- and 6-bit codes
byte j holds code 2j in its low nibble and code 2j + 1 in its high nibble; 8-bit codes are
a byte each. Every per-row array tiles the same way:
- the 5-bit high plane as bytes, [T, m/4, 16]: byte i of row 16t + r sits at [t, i, r], and
  its bit k is bit 4 of code 8i + k (the canonical plane's byte);
- the 6-bit high plane as bytes, [T, m/2, 16]: byte i holds bits 4-5 of codes 4i..4i+3,
  two bits each from bit 0 up;
- scale and offset, [T, G, 16].
The bytes are the canonical form's, so the tiles take the same memory (plus at most 15 zero
rows), and `prepare` re-lays them in place.

For a tile, with x in the codes' column order, lane r computes

    y[16t + r] = sum_g scale[t, g, r] * (sum_{c in g} q[t, c, r] * x[c]) + offset[t, g, r] * xsum[g]

where xsum[g] (x summed over group g) is computed once per call, before the tiles are
shared out among the threads. The inner loop over the 16 lanes is what LLVM vectorizes (one
512-bit register, or two 256-bit ones).

Which matrices tile: 8-bit codes of any shape; 4/5-bit codes whose rows are whole 32-code
blocks and whose groups are whole blocks (GGUF Q4_0/Q4_1/Q5_0/Q5_1/Q4_K/Q5_K, GPTQ and AWQ
with groups of 32, 64, 128, or per channel); 6-bit codes whose rows and groups are a multiple
of 4 codes (Q6_K). Any number of rows tiles (the last tile is padded). The last group of a
row may be shorter than the others, when the group size does not divide the row (in 96,
groups of 64: 64 codes, then 32) or exceeds it (in 96, groups of 128: one group of 96); every
kernel stops at the row's end. Other shapes (4/5-bit rows or groups of part of a 32-code
block, 6-bit rows or groups not a multiple of 4 codes) stay canonical, and the backend
multiplies them with the NumPy reference's product.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from qwen_np.tensors.quantized import QuantizedTensor

from qwen_np.backends.numba.floats import LANE_MATH, as_f32, kernel_floats

LANES = 16
U8 = np.uint8
# The tiles' layout, for the prepared-model cache: bumped whenever a tile's arrays change
# (2: the 5-bit high plane as bytes, not 32-bit words)
ROW_TILES_VERSION = 2


@dataclass
class RowTiles:
    """A quantized matrix [out, in] as tiles of 16 rows (see the module docstring)."""
    shape: tuple[int, int]          # (out, in) of the float matrix it stands for
    bits: int                       # 4, 5, 6 or 8
    group_size: int
    codes: np.ndarray               # uint8 [T, m, 16]
    high: np.ndarray                # uint8 [T, in/8, 16] (5 bits), [T, in/4, 16] (6 bits),
                                    # [1, 1, 16] zeros (4 and 8 bits)
    scale: np.ndarray               # [T, G, 16], float16 as uint16 bits, or float32
    offset: np.ndarray              # [T, G, 16]
    perm: np.ndarray | None = None  # [in] or None, as in the canonical form

    @property
    def n_groups(self) -> int:
        return self.scale.shape[1]

    @property
    def nbytes(self) -> int:
        high = self.high.nbytes if self.bits in (5, 6) else 0
        extra = self.perm.nbytes if self.perm is not None else 0
        return self.codes.nbytes + high + self.scale.nbytes + self.offset.nbytes + extra

    @property
    def dtype_name(self) -> str:
        return f"q{self.bits}g{self.group_size}"

    def __repr__(self):
        return (f"RowTiles(shape={self.shape}, bits={self.bits}, group_size={self.group_size}, "
                f"nbytes={self.nbytes})")


def tiles_take(w: QuantizedTensor) -> bool:
    """Whether a canonical matrix has a row-tile kernel: 8-bit codes always; 4/5-bit codes
    when rows are whole 32-code blocks and a group is whole blocks; 6-bit codes when rows
    and groups are whole bytes of the high plane (4 codes). The last group may be partial."""
    if w.bits == 8:
        return True
    if w.bits == 6:
        return w.shape[1] % 4 == 0 and w.group_size % 4 == 0
    return w.bits in (4, 5) and w.shape[1] % 32 == 0 and w.group_size % 32 == 0


def to_row_tiles(w: QuantizedTensor, in_place: bool = False) -> RowTiles:
    """The canonical matrix's arrays re-laid as 16-row tiles (the bytes are not changed).
    With in_place, arrays that can be are re-laid in their own memory (no copy, so loading
    needs no extra memory), and `w` must not be used afterwards."""
    out_f, n_in = w.shape
    T = -(-out_f // LANES)

    def tiled(a):
        if in_place and out_f % LANES == 0 and a.flags.writeable and a.flags.c_contiguous:
            return tile_rows_in_place(a)
        return tile_rows(a, T)

    if w.bits in (5, 6):
        high = tiled(w.high)
    else:
        high = np.zeros((1, 1, LANES), np.uint8)
    return RowTiles(w.shape, w.bits, w.group_size, tiled(w.codes), high,
                    tiled(kernel_floats(w.scale)), tiled(kernel_floats(w.offset)), w.perm)


def tile_rows(a: np.ndarray, T: int) -> np.ndarray:
    """[rows, m] -> a new [T, m, 16] with out[t, j, r] = a[16t + r, j]; rows past the end
    are 0."""
    out = np.zeros((T, a.shape[1], LANES), a.dtype)
    _tile_rows(np.ascontiguousarray(a), out)
    return out


def tile_rows_in_place(a: np.ndarray) -> np.ndarray:
    """[16 T, m] -> [T, m, 16] in a's own memory (a 16-row tile is the same bytes in both
    layouts, so each is re-laid through a small copy of itself); a is overwritten."""
    out = a.reshape(-1).reshape(a.shape[0] // LANES, a.shape[1], LANES)
    _tile_rows_in_place(a, out)
    return out


@njit(cache=True, nogil=True, parallel=True)
def _tile_rows(a, out):
    rows, m = a.shape
    for t in prange(out.shape[0]):
        n_rows = min(LANES, rows - t * LANES)
        for j in range(m):
            for r in range(n_rows):
                out[t, j, r] = a[t * LANES + r, j]


@njit(cache=True, nogil=True, parallel=True)
def _tile_rows_in_place(a, out):
    m = a.shape[1]
    for t in prange(out.shape[0]):
        rows = a[t * LANES:(t + 1) * LANES].copy()      # [16, m]: the tile, set aside
        for j in range(m):
            for r in range(LANES):
                out[t, j, r] = rows[r, j]


# -- one token: matrix-vector products -------------------------------------------------------
# Three things decide whether LLVM compiles these loops into one 16-lane vector register per
# step (all measured on the 8- and 5-bit kernels):
# - the 16 lanes' sums live in a stack array (stack_lanes): LLVM then knows they share no
#   memory with the codes and keeps them in a register. An np.zeros array is heap memory to
#   LLVM, which re-checks at run time that the sums do not overlap the codes and stores them
#   after every step (the 8-bit kernel 3x slower);
# - a loop over the 16 lanes needs a body of some size: a one-line body is unrolled into 16
#   scalar lines, and the loop around it is vectorized instead, across code columns, with
#   gathers (3x slower). Hence several code bytes a step;
# - the end of a group (sums scaled into the accumulators) loops over `lanes`, the tile
#   width read at run time (16): a loop of a known 16 is unrolled into 16 scalar float16
#   conversions, a loop of unknown length is vectorized into one (1.15x faster in all);
# - the fast-math flags allow fused multiply-adds only (LANE_MATH, see numba_floats.py): with
#   reassoc as well, LLVM takes a lane's sum over the code columns for a reduction and
#   vectorizes across columns with gathers again (1.1-1.3x slower, each of the three).

@intrinsic
def _stack_float32(typingctx, size):
    def codegen(context, builder, signature, args):
        return cgutils.alloca_once(builder, context.get_value_type(types.float32), size=args[0])
    return types.CPointer(types.float32)(types.intp), codegen


@njit(inline="always")
def stack_lanes():
    """16 float32 zeros on the stack (one per lane)."""
    a = numba.carray(_stack_float32(LANES), (LANES,))
    for r in range(LANES):
        a[r] = 0.0
    return a


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


@njit(inline="always")
def prefetch_ahead(flat, start, n_bytes):
    """Prefetch n_bytes of flat (a uint8 array), starting PREFETCH_DISTANCE bytes after
    flat[start]."""
    begin = start + PREFETCH_DISTANCE
    for i in range(begin, min(begin + n_bytes, flat.shape[0]), 64):
        _prefetch(flat, i)


PREFETCH_DISTANCE = 4096


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


# Codes are narrowed to uint8 before they become floats (Numba widens integer arithmetic to
# 64 bits, and 64-bit lanes would halve the vector width). A 5- or 6-bit code's high bits are
# put in place on bytes, with shifts and masks by constants, before the code becomes a
# float. Measured against one kernel for 4 and 5 bits that read the fifth bits from a 32-bit
# word per 32 codes (a test and a select of 16.0 per code; 4-bit tiles passed zero words),
# one thread, AMD EPYC: the 4-bit kernel without any of that is 1.6x faster on AVX2 and 1.2x
# on AVX-512, and the 5-bit kernel on a byte plane 1.12x and 1.15x. Each code still costs a
# widening, a conversion and a fused multiply-add per 8 (AVX2) or 16 (AVX-512) lanes: that,
# not memory, bounds these kernels on AVX2 (BENCHMARKS.md).

@njit(cache=True, nogil=True, parallel=True, fastmath=LANE_MATH)
def gemv_four_bit_tiles(codes, scale, offset, x, bytes_per_group, out):
    """4-bit row tiles: byte j (lane r) meets x[2j] with its low nibble and x[2j + 1] with
    its high one. Two bytes a step (one byte a step is too small a body, see above); groups
    of bytes_per_group bytes (even), the last one shorter when the group size does not
    divide the row."""
    T, m, lanes = codes.shape
    xsum = group_sums(x, 2 * bytes_per_group, scale.shape[1])
    for t in prange(T):
        acc = stack_lanes()
        s = stack_lanes()
        for g in range(scale.shape[1]):
            for r in range(LANES):
                s[r] = 0.0
            for j in range(g * bytes_per_group, min(m, (g + 1) * bytes_per_group), 2):
                a0, c0, a1, c1 = x[2 * j], x[2 * j + 1], x[2 * j + 2], x[2 * j + 3]
                for r in range(LANES):
                    b0 = codes[t, j, r]
                    b1 = codes[t, j + 1, r]
                    s[r] += (np.float32(U8(b0 & U8(15))) * a0 + np.float32(U8(b0 >> U8(4))) * c0 +
                             np.float32(U8(b1 & U8(15))) * a1 + np.float32(U8(b1 >> U8(4))) * c1)
            xs = xsum[g]
            for r in range(lanes):
                acc[r] += s[r] * as_f32(scale[t, g, r]) + as_f32(offset[t, g, r]) * xs
        for r in range(LANES):
            out[t * LANES + r] = acc[r]


@njit(cache=True, nogil=True, parallel=True, fastmath=LANE_MATH)
def gemv_five_bit_tiles(codes, high, scale, offset, x, bytes_per_group, out):
    """5-bit row tiles: code bytes j = 4i .. 4i + 3 hold eight codes' low nibbles as for 4
    bits; high byte i (lane r) holds their fifth bits, bit k for code 8i + k (the canonical
    plane's byte). Four code bytes a step, so that every shift is a constant. Groups of
    bytes_per_group code bytes (a multiple of 16: whole 32-code blocks), the last one
    shorter when the group size does not divide the row."""
    T, m, lanes = codes.shape
    xsum = group_sums(x, 2 * bytes_per_group, scale.shape[1])
    for t in prange(T):
        acc = stack_lanes()
        s = stack_lanes()
        for g in range(scale.shape[1]):
            for r in range(LANES):
                s[r] = 0.0
            for i in range(g * bytes_per_group // 4, min(m, (g + 1) * bytes_per_group) // 4):
                c = 8 * i
                x0, x1, x2, x3 = x[c], x[c + 1], x[c + 2], x[c + 3]
                x4, x5, x6, x7 = x[c + 4], x[c + 5], x[c + 6], x[c + 7]
                for r in range(LANES):
                    h = high[t, i, r]
                    b0 = codes[t, 4 * i, r]
                    b1 = codes[t, 4 * i + 1, r]
                    b2 = codes[t, 4 * i + 2, r]
                    b3 = codes[t, 4 * i + 3, r]
                    q0 = U8((b0 & U8(15)) | ((h << U8(4)) & U8(16)))    # code 8i, bit 0
                    q1 = U8((b0 >> U8(4)) | ((h << U8(3)) & U8(16)))    # code 8i + 1, bit 1
                    q2 = U8((b1 & U8(15)) | ((h << U8(2)) & U8(16)))
                    q3 = U8((b1 >> U8(4)) | ((h << U8(1)) & U8(16)))
                    q4 = U8((b2 & U8(15)) | (h & U8(16)))
                    q5 = U8((b2 >> U8(4)) | ((h >> U8(1)) & U8(16)))
                    q6 = U8((b3 & U8(15)) | ((h >> U8(2)) & U8(16)))
                    q7 = U8((b3 >> U8(4)) | ((h >> U8(3)) & U8(16)))    # code 8i + 7, bit 7
                    s[r] += (np.float32(q0) * x0 + np.float32(q1) * x1 +
                             np.float32(q2) * x2 + np.float32(q3) * x3 +
                             np.float32(q4) * x4 + np.float32(q5) * x5 +
                             np.float32(q6) * x6 + np.float32(q7) * x7)
            xs = xsum[g]
            for r in range(lanes):
                acc[r] += s[r] * as_f32(scale[t, g, r]) + as_f32(offset[t, g, r]) * xs
        for r in range(LANES):
            out[t * LANES + r] = acc[r]


@njit(cache=True, nogil=True, parallel=True, fastmath=LANE_MATH)
def gemv_byte_tiles(codes, scale, offset, x, group_size, out):
    """8-bit row tiles: code column c (lane r) meets x[c]; groups of group_size columns, the
    last one shorter when group_size does not divide the row. Four columns a step: with one,
    LLVM unrolls the 16 lanes and vectorizes across columns instead (gathers, 3x slower).
    Each group first asks for the codes 4 KB ahead (prefetch_ahead): the hardware's own
    prefetcher kept 2 threads at about 14 GB/s on the LM head, and asking ahead reaches
    16-21 (measured in the model and alone). The other kernels did not gain from it (the 6-bit
    one lost), so only this one does it."""
    T, n, lanes = codes.shape
    xsum = group_sums(x, group_size, scale.shape[1])
    flat = codes.reshape(-1)
    for t in prange(T):
        acc = stack_lanes()
        s = stack_lanes()
        for g in range(scale.shape[1]):
            for r in range(LANES):
                s[r] = 0.0
            c = g * group_size
            end = min(n, c + group_size)
            prefetch_ahead(flat, (t * n + c) * LANES, (end - c) * LANES)
            while c + 4 <= end:
                x0, x1, x2, x3 = x[c], x[c + 1], x[c + 2], x[c + 3]
                for r in range(LANES):
                    s[r] += (np.float32(codes[t, c, r]) * x0 + np.float32(codes[t, c + 1, r]) * x1
                             + np.float32(codes[t, c + 2, r]) * x2
                             + np.float32(codes[t, c + 3, r]) * x3)
                c += 4
            while c < end:
                for r in range(LANES):
                    s[r] += np.float32(codes[t, c, r]) * x[c]
                c += 1
            xs = xsum[g]
            for r in range(lanes):
                acc[r] += s[r] * as_f32(scale[t, g, r]) + as_f32(offset[t, g, r]) * xs
        for r in range(LANES):
            out[t * LANES + r] = acc[r]


@njit(cache=True, nogil=True, parallel=True, fastmath=LANE_MATH)
def gemv_six_bit_tiles(codes, high, scale, offset, x, bytes_per_group, out):
    """6-bit row tiles: bytes j = 2i and 2i + 1 hold four codes' low nibbles as for 4 bits;
    high byte i (lane r) holds their high bits, two each, from bit 0 up (the canonical high
    plane's byte). Two code bytes a step, so every shift and mask is a constant on bytes.
    Groups of bytes_per_group code bytes (even), the last one shorter when the group size
    does not divide the row."""
    T, m, lanes = codes.shape
    xsum = group_sums(x, 2 * bytes_per_group, scale.shape[1])
    for t in prange(T):
        acc = stack_lanes()
        s = stack_lanes()
        for g in range(scale.shape[1]):
            for r in range(LANES):
                s[r] = 0.0
            for i in range(g * bytes_per_group // 2, min(m, (g + 1) * bytes_per_group) // 2):
                j = 2 * i
                a0, c0, a1, c1 = x[2 * j], x[2 * j + 1], x[2 * j + 2], x[2 * j + 3]
                for r in range(LANES):
                    h = high[t, i, r]
                    b0 = codes[t, j, r]
                    b1 = codes[t, j + 1, r]
                    lo0 = U8((b0 & U8(15)) | ((h & U8(3)) << U8(4)))       # code 2j
                    hi0 = U8((b0 >> U8(4)) | ((h & U8(12)) << U8(2)))      # code 2j + 1
                    lo1 = U8((b1 & U8(15)) | (h & U8(48)))                # code 2j + 2
                    hi1 = U8((b1 >> U8(4)) | ((h & U8(192)) >> U8(2)))     # code 2j + 3
                    s[r] += (np.float32(lo0) * a0 + np.float32(hi0) * c0 +
                             np.float32(lo1) * a1 + np.float32(hi1) * c1)
            xs = xsum[g]
            for r in range(lanes):
                acc[r] += s[r] * as_f32(scale[t, g, r]) + as_f32(offset[t, g, r]) * xs
        for r in range(LANES):
            out[t * LANES + r] = acc[r]




# -- a few tokens of different sequences (batched decoding) ------------------------------------
# Each row of a decode step belongs to its own sequence, and must come out as the one-token
# kernel computes it for that sequence alone. These kernels are the one-token kernels with
# four rows per lane instead of one: every product and sum of a row is the one-token
# kernel's, in its order (rows_* below write out the same expression for each of the four
# rows), so a row's result is the one-token result, bit for bit (tested). A job is a tile,
# and its codes are read once for all the rows: four rows a pass, the passes after the
# first finding the tile's codes in the core's cache. x is [N, in] with N a multiple of 4
# (zero rows pad it), xsum [N, G] each row's group sums as group_sums makes them.

@njit(inline="always")
def rows_sum4(s, r, q0, q1, q2, q3, x, t0, c):
    """s[i, r] += q0 x[t0 + i, c] + q1 x[., c + 1] + q2 x[., c + 2] + q3 x[., c + 3], for the
    four rows i, added up as the one-token kernels add up four products."""
    s[0, r] += (q0 * x[t0, c] + q1 * x[t0, c + 1] + q2 * x[t0, c + 2] + q3 * x[t0, c + 3])
    s[1, r] += (q0 * x[t0 + 1, c] + q1 * x[t0 + 1, c + 1] + q2 * x[t0 + 1, c + 2] +
                q3 * x[t0 + 1, c + 3])
    s[2, r] += (q0 * x[t0 + 2, c] + q1 * x[t0 + 2, c + 1] + q2 * x[t0 + 2, c + 2] +
                q3 * x[t0 + 2, c + 3])
    s[3, r] += (q0 * x[t0 + 3, c] + q1 * x[t0 + 3, c + 1] + q2 * x[t0 + 3, c + 2] +
                q3 * x[t0 + 3, c + 3])


@njit(inline="always")
def row_sum8(q0, q1, q2, q3, q4, q5, q6, q7, x, t, c):
    """q0 x[t, c] + ... + q7 x[t, c + 7], in the 5-bit one-token kernel's order."""
    return (q0 * x[t, c] + q1 * x[t, c + 1] + q2 * x[t, c + 2] + q3 * x[t, c + 3] +
            q4 * x[t, c + 4] + q5 * x[t, c + 5] + q6 * x[t, c + 6] + q7 * x[t, c + 7])


@njit(inline="always")
def rows_group_sums(x, group_size, n_groups):
    """xsum [N, G]: group_sums of each row of x [N, in]."""
    xsum = np.empty((x.shape[0], n_groups), np.float32)
    for i in range(x.shape[0]):
        xsum[i] = group_sums(x[i], group_size, n_groups)
    return xsum


@njit(cache=True, nogil=True, parallel=True, fastmath=LANE_MATH)
def rows_four_bit_tiles(codes, scale, offset, x, bytes_per_group, out):
    """gemv_four_bit_tiles for each row of x [N, in] (N a multiple of 4) -> out [N, 16 T]."""
    T, m, lanes = codes.shape
    xsum = rows_group_sums(x, 2 * bytes_per_group, scale.shape[1])
    for t in prange(T):
        for t0 in range(0, x.shape[0], BLOCK):
            acc = stack_block()
            s = stack_block()
            for g in range(scale.shape[1]):
                for j in range(g * bytes_per_group, min(m, (g + 1) * bytes_per_group), 2):
                    for r in range(LANES):
                        b0 = codes[t, j, r]
                        b1 = codes[t, j + 1, r]
                        rows_sum4(s, r, np.float32(U8(b0 & U8(15))), np.float32(U8(b0 >> U8(4))),
                                  np.float32(U8(b1 & U8(15))), np.float32(U8(b1 >> U8(4))),
                                  x, t0, 2 * j)
                add_block_group(acc, s, scale, offset, xsum, t, g, t0, lanes)
            store_block(acc, out, t, t0)


@njit(cache=True, nogil=True, parallel=True, fastmath=LANE_MATH)
def rows_five_bit_tiles(codes, high, scale, offset, x, bytes_per_group, out):
    """gemv_five_bit_tiles for each row of x [N, in] (N a multiple of 4) -> out [N, 16 T]."""
    T, m, lanes = codes.shape
    xsum = rows_group_sums(x, 2 * bytes_per_group, scale.shape[1])
    for t in prange(T):
        for t0 in range(0, x.shape[0], BLOCK):
            acc = stack_block()
            s = stack_block()
            for g in range(scale.shape[1]):
                for i in range(g * bytes_per_group // 4, min(m, (g + 1) * bytes_per_group) // 4):
                    c = 8 * i
                    for r in range(LANES):
                        h = high[t, i, r]
                        b0 = codes[t, 4 * i, r]
                        b1 = codes[t, 4 * i + 1, r]
                        b2 = codes[t, 4 * i + 2, r]
                        b3 = codes[t, 4 * i + 3, r]
                        q0 = np.float32(U8((b0 & U8(15)) | ((h << U8(4)) & U8(16))))
                        q1 = np.float32(U8((b0 >> U8(4)) | ((h << U8(3)) & U8(16))))
                        q2 = np.float32(U8((b1 & U8(15)) | ((h << U8(2)) & U8(16))))
                        q3 = np.float32(U8((b1 >> U8(4)) | ((h << U8(1)) & U8(16))))
                        q4 = np.float32(U8((b2 & U8(15)) | (h & U8(16))))
                        q5 = np.float32(U8((b2 >> U8(4)) | ((h >> U8(1)) & U8(16))))
                        q6 = np.float32(U8((b3 & U8(15)) | ((h >> U8(2)) & U8(16))))
                        q7 = np.float32(U8((b3 >> U8(4)) | ((h >> U8(3)) & U8(16))))
                        s[0, r] += row_sum8(q0, q1, q2, q3, q4, q5, q6, q7, x, t0, c)
                        s[1, r] += row_sum8(q0, q1, q2, q3, q4, q5, q6, q7, x, t0 + 1, c)
                        s[2, r] += row_sum8(q0, q1, q2, q3, q4, q5, q6, q7, x, t0 + 2, c)
                        s[3, r] += row_sum8(q0, q1, q2, q3, q4, q5, q6, q7, x, t0 + 3, c)
                add_block_group(acc, s, scale, offset, xsum, t, g, t0, lanes)
            store_block(acc, out, t, t0)


@njit(cache=True, nogil=True, parallel=True, fastmath=LANE_MATH)
def rows_six_bit_tiles(codes, high, scale, offset, x, bytes_per_group, out):
    """gemv_six_bit_tiles for each row of x [N, in] (N a multiple of 4) -> out [N, 16 T]."""
    T, m, lanes = codes.shape
    xsum = rows_group_sums(x, 2 * bytes_per_group, scale.shape[1])
    for t in prange(T):
        for t0 in range(0, x.shape[0], BLOCK):
            acc = stack_block()
            s = stack_block()
            for g in range(scale.shape[1]):
                for i in range(g * bytes_per_group // 2, min(m, (g + 1) * bytes_per_group) // 2):
                    j = 2 * i
                    for r in range(LANES):
                        h = high[t, i, r]
                        b0 = codes[t, j, r]
                        b1 = codes[t, j + 1, r]
                        rows_sum4(s, r, np.float32(U8((b0 & U8(15)) | ((h & U8(3)) << U8(4)))),
                                  np.float32(U8((b0 >> U8(4)) | ((h & U8(12)) << U8(2)))),
                                  np.float32(U8((b1 & U8(15)) | (h & U8(48)))),
                                  np.float32(U8((b1 >> U8(4)) | ((h & U8(192)) >> U8(2)))),
                                  x, t0, 2 * j)
                add_block_group(acc, s, scale, offset, xsum, t, g, t0, lanes)
            store_block(acc, out, t, t0)


@njit(cache=True, nogil=True, parallel=True, fastmath=LANE_MATH)
def rows_byte_tiles(codes, scale, offset, x, group_size, out):
    """gemv_byte_tiles for each row of x [N, in] (N a multiple of 4) -> out [N, 16 T]."""
    T, n, lanes = codes.shape
    xsum = rows_group_sums(x, group_size, scale.shape[1])
    flat = codes.reshape(-1)
    for t in prange(T):
        for t0 in range(0, x.shape[0], BLOCK):
            acc = stack_block()
            s = stack_block()
            for g in range(scale.shape[1]):
                c = g * group_size
                end = min(n, c + group_size)
                if t0 == 0:
                    prefetch_ahead(flat, (t * n + c) * LANES, (end - c) * LANES)
                while c + 4 <= end:
                    for r in range(LANES):
                        rows_sum4(s, r, np.float32(codes[t, c, r]), np.float32(codes[t, c + 1, r]),
                                  np.float32(codes[t, c + 2, r]), np.float32(codes[t, c + 3, r]),
                                  x, t0, c)
                    c += 4
                while c < end:
                    for r in range(LANES):
                        q = np.float32(codes[t, c, r])
                        s[0, r] += q * x[t0, c]
                        s[1, r] += q * x[t0 + 1, c]
                        s[2, r] += q * x[t0 + 2, c]
                        s[3, r] += q * x[t0 + 3, c]
                    c += 1
                add_block_group(acc, s, scale, offset, xsum, t, g, t0, lanes)
            store_block(acc, out, t, t0)


# -- many tokens: four at a time through the tiles (prefill) -----------------------------------
# The same loops as one token's, with four tokens' sums per lane instead of one: each code is
# widened and converted once and meets four activations, so the conversion, the costly part
# of a one-token product, is shared four ways, and nothing is written out but the results.
# The four tokens are written out one by one (fma4): a loop over them, even of a known 4, left
# LLVM keeping the sums in memory (18 GFLOP/s against 110 on one AVX-512 core, measured);
# written out, the 4 x 16 sums stay in registers (4 zmm, or 8 ymm on AVX2). Eight tokens
# measured no faster than four on AVX-512, and on AVX2 would not fit the 16 ymm registers.
# Measured against dequantizing tiles for BLAS (4-bit 4864 x 896, 128 tokens, AMD EPYC):
# about 2x on AVX-512 on one and two threads.

BLOCK = 4       # tokens a step


@intrinsic
def _stack_block(typingctx, size):
    def codegen(context, builder, signature, args):
        return cgutils.alloca_once(builder, context.get_value_type(types.float32), size=args[0])
    return types.CPointer(types.float32)(types.intp), codegen


BLOCK_LANES = BLOCK * LANES


@njit(inline="always")
def stack_block():
    """[4, 16] float32 zeros on the stack: token i's sum in lane r at [i, r]."""
    a = numba.carray(_stack_block(BLOCK_LANES), (BLOCK, LANES))
    for i in range(BLOCK):
        for r in range(LANES):
            a[i, r] = 0.0
    return a


@njit(inline="always")
def fma4(s, r, q, x, t0, c):
    """s[i, r] += q * x[t0 + i, c] for the four tokens i (written out: see above)."""
    s[0, r] += q * x[t0, c]
    s[1, r] += q * x[t0 + 1, c]
    s[2, r] += q * x[t0 + 2, c]
    s[3, r] += q * x[t0 + 3, c]


@njit(inline="always")
def add_block_group(acc, s, scale, offset, xsum, t, g, t0, lanes):
    """The end of group g for four tokens: acc[i] += s[i] * scale + offset * xsum[t0 + i, g];
    then s is zeroed for the next group."""
    for i in range(BLOCK):
        xs = xsum[t0 + i, g]
        for r in range(lanes):
            acc[i, r] += s[i, r] * as_f32(scale[t, g, r]) + as_f32(offset[t, g, r]) * xs
            s[i, r] = 0.0


@njit(inline="always")
def store_block(acc, out, t, t0):
    for i in range(BLOCK):
        for r in range(LANES):
            out[t0 + i, t * LANES + r] = acc[i, r]


@njit(cache=True, nogil=True, parallel=True, fastmath=LANE_MATH)
def gemm_four_bit_tiles(codes, scale, offset, x, xsum, bytes_per_group, out):
    """4-bit row tiles times x [N, in] (N a multiple of 4, in the codes' column order) into
    out [N, 16 T]: byte j meets columns 2j and 2j + 1, as for one token. xsum [N, G]."""
    T, m, lanes = codes.shape
    blocks = x.shape[0] // BLOCK
    for job in prange(T * blocks):
        t, t0 = job // blocks, (job % blocks) * BLOCK
        acc = stack_block()
        s = stack_block()
        for g in range(scale.shape[1]):
            for j in range(g * bytes_per_group, min(m, (g + 1) * bytes_per_group)):
                for r in range(LANES):
                    b = codes[t, j, r]
                    fma4(s, r, np.float32(U8(b & U8(15))), x, t0, 2 * j)
                    fma4(s, r, np.float32(U8(b >> U8(4))), x, t0, 2 * j + 1)
            add_block_group(acc, s, scale, offset, xsum, t, g, t0, lanes)
        store_block(acc, out, t, t0)


@njit(cache=True, nogil=True, parallel=True, fastmath=LANE_MATH)
def gemm_five_bit_tiles(codes, high, scale, offset, x, xsum, bytes_per_group, out):
    """5-bit row tiles times x [N, in] (N a multiple of 4): high byte i completes the codes of
    bytes 4i .. 4i + 3, as for one token."""
    T, m, lanes = codes.shape
    blocks = x.shape[0] // BLOCK
    for job in prange(T * blocks):
        t, t0 = job // blocks, (job % blocks) * BLOCK
        acc = stack_block()
        s = stack_block()
        for g in range(scale.shape[1]):
            for i in range(g * bytes_per_group // 4, min(m, (g + 1) * bytes_per_group) // 4):
                c = 8 * i
                for r in range(LANES):
                    h = high[t, i, r]
                    b0 = codes[t, 4 * i, r]
                    b1 = codes[t, 4 * i + 1, r]
                    b2 = codes[t, 4 * i + 2, r]
                    b3 = codes[t, 4 * i + 3, r]
                    q0 = U8((b0 & U8(15)) | ((h << U8(4)) & U8(16)))    # code 8i, bit 0
                    q1 = U8((b0 >> U8(4)) | ((h << U8(3)) & U8(16)))
                    q2 = U8((b1 & U8(15)) | ((h << U8(2)) & U8(16)))
                    q3 = U8((b1 >> U8(4)) | ((h << U8(1)) & U8(16)))
                    q4 = U8((b2 & U8(15)) | (h & U8(16)))
                    q5 = U8((b2 >> U8(4)) | ((h >> U8(1)) & U8(16)))
                    q6 = U8((b3 & U8(15)) | ((h >> U8(2)) & U8(16)))
                    q7 = U8((b3 >> U8(4)) | ((h >> U8(3)) & U8(16)))    # code 8i + 7, bit 7
                    fma4(s, r, np.float32(q0), x, t0, c)
                    fma4(s, r, np.float32(q1), x, t0, c + 1)
                    fma4(s, r, np.float32(q2), x, t0, c + 2)
                    fma4(s, r, np.float32(q3), x, t0, c + 3)
                    fma4(s, r, np.float32(q4), x, t0, c + 4)
                    fma4(s, r, np.float32(q5), x, t0, c + 5)
                    fma4(s, r, np.float32(q6), x, t0, c + 6)
                    fma4(s, r, np.float32(q7), x, t0, c + 7)
            add_block_group(acc, s, scale, offset, xsum, t, g, t0, lanes)
        store_block(acc, out, t, t0)


@njit(cache=True, nogil=True, parallel=True, fastmath=LANE_MATH)
def gemm_six_bit_tiles(codes, high, scale, offset, x, xsum, bytes_per_group, out):
    """6-bit row tiles times x [N, in] (N a multiple of 4): high byte i completes the codes of
    bytes 2i and 2i + 1, as for one token."""
    T, m, lanes = codes.shape
    blocks = x.shape[0] // BLOCK
    for job in prange(T * blocks):
        t, t0 = job // blocks, (job % blocks) * BLOCK
        acc = stack_block()
        s = stack_block()
        for g in range(scale.shape[1]):
            for i in range(g * bytes_per_group // 2, min(m, (g + 1) * bytes_per_group) // 2):
                j = 2 * i
                for r in range(LANES):
                    h = high[t, i, r]
                    b0 = codes[t, j, r]
                    b1 = codes[t, j + 1, r]
                    fma4(s, r, np.float32(U8((b0 & U8(15)) | ((h & U8(3)) << U8(4)))), x, t0, 2 * j)
                    fma4(s, r, np.float32(U8((b0 >> U8(4)) | ((h & U8(12)) << U8(2)))), x, t0,
                         2 * j + 1)
                    fma4(s, r, np.float32(U8((b1 & U8(15)) | (h & U8(48)))), x, t0, 2 * j + 2)
                    fma4(s, r, np.float32(U8((b1 >> U8(4)) | ((h & U8(192)) >> U8(2)))), x, t0,
                         2 * j + 3)
            add_block_group(acc, s, scale, offset, xsum, t, g, t0, lanes)
        store_block(acc, out, t, t0)


@njit(cache=True, nogil=True, parallel=True, fastmath=LANE_MATH)
def gemm_byte_tiles(codes, scale, offset, x, xsum, group_size, out):
    """8-bit row tiles times x [N, in] (N a multiple of 4): code column c meets x[:, c]."""
    T, n, lanes = codes.shape
    blocks = x.shape[0] // BLOCK
    for job in prange(T * blocks):
        t, t0 = job // blocks, (job % blocks) * BLOCK
        acc = stack_block()
        s = stack_block()
        for g in range(scale.shape[1]):
            c = g * group_size
            end = min(n, c + group_size)
            while c + 2 <= end:
                for r in range(LANES):
                    fma4(s, r, np.float32(codes[t, c, r]), x, t0, c)
                    fma4(s, r, np.float32(codes[t, c + 1, r]), x, t0, c + 1)
                c += 2
            if c < end:
                for r in range(LANES):
                    fma4(s, r, np.float32(codes[t, c, r]), x, t0, c)
            add_block_group(acc, s, scale, offset, xsum, t, g, t0, lanes)
        store_block(acc, out, t, t0)


# -- tiles dequantized (embedding lookups) -----------------------------------------------------
# A tile dequantizes into columns: out[c, 16 i + r] is code column c of row 16 (t0 + i) + r,
# so the 16 lanes' values are one contiguous store. (The prefill multiplied such columns
# with BLAS before the four-token kernels above, which are about twice as fast.) Nibble
# codes come in split order: row c < m is code 2c (the low nibble of byte c), row m + c is
# code 2c + 1; embed_from_tiles puts them back in code order. The lanes are computed into
# stack arrays first and then copied out: computed straight into `out`, the loop stays
# scalar (LLVM cannot rule out that `out`
# overlaps the codes; measured 2.5x slower).

@njit(cache=True, nogil=True, parallel=True, fastmath=LANE_MATH)
def dequantize_nibble_tiles(codes, high, has_high, scale, offset, bytes_per_group, t0,
                            out):
    """Tiles t0.. of 4/5-bit row tiles as float columns (split order). 5-bit tiles: high
    byte i holds the fifth bits of the codes in bytes 4i .. 4i + 3, as for the products;
    4-bit tiles pass has_high False (and one byte of zeros per lane). A byte's group
    is found by division, so a partial last group needs nothing more."""
    m, lanes = codes.shape[1], codes.shape[2]
    for i in prange(out.shape[1] // LANES):
        t = t0 + i
        lo = stack_lanes()
        hi = stack_lanes()
        for j in range(m):
            g = j // bytes_per_group
            th = t if has_high else 0
            hb = j // 4 if has_high else 0
            up = U8(2 * (j % 4))    # bits up, up + 1 of the high byte: codes 2j, 2j + 1
            for r in range(LANES):
                b = codes[t, j, r]
                h = U8(high[th, hb, r] >> up)
                sc = as_f32(scale[t, g, r])
                of = as_f32(offset[t, g, r])
                lo[r] = sc * np.float32(U8((b & U8(15)) | ((h & U8(1)) << U8(4)))) + of
                hi[r] = sc * np.float32(U8((b >> U8(4)) | ((h & U8(2)) << U8(3)))) + of
            for r in range(lanes):
                out[j, i * LANES + r] = lo[r]
                out[m + j, i * LANES + r] = hi[r]


@njit(cache=True, nogil=True, parallel=True, fastmath=LANE_MATH)
def dequantize_six_bit_tiles(codes, high, scale, offset, bytes_per_group, t0, out):
    """Tiles t0.. of 6-bit row tiles as float columns (split order)."""
    m, lanes = codes.shape[1], codes.shape[2]
    for i in prange(out.shape[1] // LANES):
        t = t0 + i
        lo0, hi0, lo1, hi1 = stack_lanes(), stack_lanes(), stack_lanes(), stack_lanes()
        for hb in range(m // 2):
            j = 2 * hb
            g = j // bytes_per_group     # bytes j and j + 1 share a group (groups are even)
            for r in range(LANES):
                h = high[t, hb, r]
                b0 = codes[t, j, r]
                b1 = codes[t, j + 1, r]
                sc = as_f32(scale[t, g, r])
                of = as_f32(offset[t, g, r])
                lo0[r] = sc * np.float32(U8((b0 & U8(15)) | ((h & U8(3)) << U8(4)))) + of
                hi0[r] = sc * np.float32(U8((b0 >> U8(4)) | ((h & U8(12)) << U8(2)))) + of
                lo1[r] = sc * np.float32(U8((b1 & U8(15)) | (h & U8(48)))) + of
                hi1[r] = sc * np.float32(U8((b1 >> U8(4)) | ((h & U8(192)) >> U8(2)))) + of
            for r in range(lanes):
                out[j, i * LANES + r] = lo0[r]
                out[m + j, i * LANES + r] = hi0[r]
                out[j + 1, i * LANES + r] = lo1[r]
                out[m + j + 1, i * LANES + r] = hi1[r]


@njit(cache=True, nogil=True, parallel=True, fastmath=LANE_MATH)
def dequantize_byte_tiles(codes, scale, offset, group_size, t0, out):
    """Tiles t0.. of 8-bit row tiles as float columns (code order)."""
    n, lanes = codes.shape[1], codes.shape[2]
    for i in prange(out.shape[1] // LANES):
        t = t0 + i
        v0, v1 = stack_lanes(), stack_lanes()
        for c in range(0, n - 1, 2):
            g0 = c // group_size
            g1 = (c + 1) // group_size
            for r in range(LANES):
                v0[r] = as_f32(scale[t, g0, r]) * np.float32(codes[t, c, r]) + \
                    as_f32(offset[t, g0, r])
                v1[r] = as_f32(scale[t, g1, r]) * np.float32(codes[t, c + 1, r]) + \
                    as_f32(offset[t, g1, r])
            for r in range(lanes):
                out[c, i * LANES + r] = v0[r]
                out[c + 1, i * LANES + r] = v1[r]
        if n % 2:
            c = n - 1
            g0 = c // group_size
            for r in range(LANES):
                v0[r] = as_f32(scale[t, g0, r]) * np.float32(codes[t, c, r]) + \
                    as_f32(offset[t, g0, r])
            for r in range(lanes):
                out[c, i * LANES + r] = v0[r]
