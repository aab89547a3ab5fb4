"""Numba CPU kernels behind the backend interface: fused dequantize-and-multiply over the
canonical quantized form, and the small ops (RMSNorm, RoPE, SwiGLU, attention) compiled.

Decoding one token is a matrix-vector product that must read each weight byte once and do
little else. For a row o of a quantized matrix, with x already in the codes' column order:

    y[o] = sum_g scale[o, g] * (sum_{c in g} q[o, c] * x[c]) + offset[o, g] * xsum[g]

where xsum[g] (the sum of x over group g) is computed once per call. The inner sums run over
16-byte blocks of codes (see the section on matrix-vector products). Nibble-packed codes pair
with x split into its even and odd columns (xe, xo), so that byte j meets xe[j] and xo[j].

Prefill (many tokens) dequantizes a tile of rows once into float32 and lets BLAS multiply it
with all the tokens (compute-bound, not dequantize-bound).

Every kernel is @njit(cache=True), so a second start loads them from the cache instead of
compiling; `parallel=True` with prange splits rows over threads.
"""

from __future__ import annotations

import os

import numpy as np

# Numba's OpenMP threads spin after each parallel kernel (GOMP_SPINCOUNT, 300000 by default),
# which takes the cores away from OpenBLAS's threads in the prefill's matrix products (measured
# here: a 128-token prefill 2.6x slower). A short spin keeps decoding as fast. Set before the
# first parallel kernel loads libgomp; an explicit setting in the environment wins.
os.environ.setdefault("GOMP_SPINCOUNT", "10000")

from qwen_np.dense import rows_as_compute
from qwen_np.errors import BackendUnavailable
from qwen_np.quant import MappedQuantizedRows, QuantizedTensor

from .numpy_backend import NumpyBackend

try:
    import numba
    from numba import njit, prange, types
    from numba.extending import overload
except ImportError as e:  # reported by get_backend as a one-line error
    raise BackendUnavailable("backend 'numba' needs the numba package "
                             "(pip install 'qwen-np[numba]')") from e

ROWS_PER_CHUNK = 16          # rows a thread takes at a time in a matrix-vector product
PREFILL_TILE_ELEMENTS = 1 << 20


# Numba has no float16 arrays: float16 scales and offsets reach the kernels as their uint16
# bit patterns and are decoded through a 65536-entry table (exact, one lookup per group).
HALF_TABLE = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)


def as_f32(v, table):
    """A scale or offset element as float32 (a uint16 is float16 bits, looked up)."""


@overload(as_f32)
def _as_f32(v, table):
    if isinstance(v, types.Integer):
        return lambda v, table: table[v]
    return lambda v, table: np.float32(v)


def kernel_floats(a: np.ndarray) -> np.ndarray:
    """float16 arrays as their bits (uint16) for the kernels; float32 as they are."""
    return a.view(np.uint16) if a.dtype == np.float16 else a


# -- matrix-vector products, one token -------------------------------------------------------
# Per row: y = sum_g scale[g] * (sum of q * x over group g) + sum_g offset[g] * xsum[g], with
# xsum[g] (x summed over group g) computed once per call and the offsets' sum a loop of its
# own. The group sums are plain float32 reductions over short contiguous runs, written so
# that LLVM's loop vectorizer takes them (16 or 32 codes at a time in vector registers):
# codes are narrowed to uint8 before they become floats (Numba widens integer arithmetic to
# 64 bits, and 64-bit lanes would halve the vector width), and a high bit is a mask test on
# the block's word that adds 16.0 (a select) rather than a variable shift. Shapes the
# kernels cannot take (rows not a multiple of 32 codes, other group sizes) go to the NumPy
# tiles.

@njit(cache=True, parallel=True, fastmath=True)
def gemv_q8(codes, scale, offset, x, xsum, group_size, table, out):
    """8-bit codes [rows, in], one byte each: a sum per group (32 bytes make a long enough
    loop to vectorize), scaled once per group."""
    rows, n = codes.shape
    G = scale.shape[1]
    full = n // group_size                       # whole groups; a shorter last one after
    for o in prange(rows):
        acc = np.float32(0.0)
        for g in range(full):
            s = np.float32(0.0)
            base = g * group_size
            for j in range(group_size):
                s += np.float32(codes[o, base + j]) * x[base + j]
            acc += as_f32(scale[o, g], table) * s + as_f32(offset[o, g], table) * xsum[g]
        if full < G:
            s = np.float32(0.0)
            for j in range(full * group_size, n):
                s += np.float32(codes[o, j]) * x[j]
            acc += as_f32(scale[o, full], table) * s + as_f32(offset[o, full], table) * xsum[full]
        out[o] = acc


@njit(cache=True, parallel=True, fastmath=True)
def gemv_nibbles(codes, high32, mask_lo, mask_hi, scale, offset, xe, xo, xsum, hg, table, out):
    """4- and 5-bit codes (nibble plane: byte j holds codes 2j and 2j + 1) whose groups are
    whole 16-byte blocks (32 codes). For 5 bits, the block's 32 high bits are one uint32 word
    of the high plane (bit c = bit 4 of code 32 blk + c), so byte k finds its two codes' high
    bits under mask_lo[k] = 1 << 2k and mask_hi[k] = 2 << 2k. 4-bit codes pass one row of
    zero words for every row (high32.shape[0] == 1)."""
    rows, nb = codes.shape
    one_high_row = high32.shape[0] == 1
    for o in prange(rows):
        cr = codes[o]
        hr = high32[0] if one_high_row else high32[o]
        acc = np.float32(0.0)
        for blk in range(nb // 16):
            word = hr[blk]
            base = blk * 16
            s = np.float32(0.0)
            for k in range(16):
                b = cr[base + k]
                lo = (np.float32(np.uint8(b & np.uint8(15))) +
                      (np.float32(16.0) if word & mask_lo[k] else np.float32(0.0)))
                hi = (np.float32(np.uint8(b >> np.uint8(4))) +
                      (np.float32(16.0) if word & mask_hi[k] else np.float32(0.0)))
                s += lo * xe[base + k] + hi * xo[base + k]
            acc += s * as_f32(scale[o, base // hg], table)
        for g in range(scale.shape[1]):
            acc += as_f32(offset[o, g], table) * xsum[g]
        out[o] = acc


MASK_LO = (np.uint32(1) << (2 * np.arange(16, dtype=np.uint32))).astype(np.uint32)
MASK_HI = (np.uint32(2) << (2 * np.arange(16, dtype=np.uint32))).astype(np.uint32)


@njit(cache=True, parallel=True, fastmath=True)
def gemv_q6_blocks(codes, high64, scale, offset, xe, xo, xsum, hg, table, out):
    """6-bit codes in 16-byte blocks (32 codes) whose groups are 8 bytes or a multiple: the
    block's 64 high bits are one uint64 word of the high plane (bits 2c..2c+1 = bits 4-5 of
    code 32 blk + c), so byte k finds its two codes' high bits at bits 4k..4k+3. Lanes 0-7 and
    8-15 take the scales of the block's two halves (different groups for Q6_K's 16 codes)."""
    rows, nb = codes.shape
    for chunk in prange((rows + ROWS_PER_CHUNK - 1) // ROWS_PER_CHUNK):
        lanes = np.zeros(16, np.float32)
        for o in range(chunk * ROWS_PER_CHUNK, min(rows, (chunk + 1) * ROWS_PER_CHUNK)):
            acc = np.float32(0.0)
            for k in range(16):
                lanes[k] = 0.0
            for blk in range(nb // 16):
                base = blk * 16
                s0 = as_f32(scale[o, base // hg], table)
                s1 = as_f32(scale[o, (base + 8) // hg], table)
                word = high64[o, blk]
                for k in range(16):
                    b = np.uint64(codes[o, base + k])
                    h = word >> np.uint64(4 * k)
                    lo = (b & 15) | ((h & 3) << 4)
                    hi = (b >> 4) | ((h & 12) << 2)
                    v = np.float32(lo) * xe[base + k] + np.float32(hi) * xo[base + k]
                    lanes[k] += v * (s0 if k < 8 else s1)
            for g in range(scale.shape[1]):
                acc += as_f32(offset[o, g], table) * xsum[g]
            for k in range(16):
                acc += lanes[k]
            out[o] = acc


# -- dequantizing tiles (prefill, embedding rows) ---------------------------------------------

@njit(cache=True, parallel=True, fastmath=True)
def dequantize_tile(codes, high, bits, scale, offset, group_of, n_in, row_ids, table, out):
    """out[r, c] = scale[o, g] * q[o, c] + offset[o, g] with g = group_of[c], for o = row_ids[r],
    in code order. `high` is ignored for 4 and 8 bits."""
    G = scale.shape[1]
    for r in prange(row_ids.shape[0]):
        o = row_ids[r]
        sc = np.empty(G, np.float32)
        of = np.empty(G, np.float32)
        for g in range(G):
            sc[g] = as_f32(scale[o, g], table)
            of[g] = as_f32(offset[o, g], table)
        if bits == 8:
            for c in range(n_in):
                g = group_of[c]
                out[r, c] = sc[g] * np.float32(codes[o, c]) + of[g]
        else:
            for j in range(n_in // 2):
                b = np.int32(codes[o, j])
                lo = b & 15
                hi = b >> 4
                c = 2 * j
                if bits == 5:
                    h = np.int32(high[o, c >> 3]) >> (c & 7)
                    lo |= (h & 1) << 4
                    hi |= (h & 2) << 3
                elif bits == 6:
                    h = np.int32(high[o, c >> 2]) >> (2 * (c & 3))
                    lo |= (h & 3) << 4
                    hi |= (h & 12) << 2
                g0 = group_of[c]
                g1 = group_of[c + 1]
                out[r, c] = sc[g0] * np.float32(lo) + of[g0]
                out[r, c + 1] = sc[g1] * np.float32(hi) + of[g1]
            if n_in % 2:
                c = n_in - 1
                q = np.int32(codes[o, c >> 1]) & 15
                if bits == 5:
                    q |= ((np.int32(high[o, c >> 3]) >> (c & 7)) & 1) << 4
                elif bits == 6:
                    q |= ((np.int32(high[o, c >> 2]) >> (2 * (c & 3))) & 3) << 4
                g = group_of[c]
                out[r, c] = sc[g] * np.float32(q) + of[g]


# Split order: out[r, j] is code 2j (the low nibble of byte j), out[r, nb + j] is code 2j + 1.
# The caller orders x the same way ([x[0::2], x[1::2]]), so every store is contiguous and the
# loops vectorize as the matrix-vector kernels' do (one kernel per code width).

@njit(cache=True, parallel=True, fastmath=True)
def dequantize_tile_nibbles(codes, high32, mask_lo, mask_hi, scale, offset, hg, row0, table,
                            out):
    """Rows row0.. of a 4- or 5-bit matrix whose groups are whole 16-byte blocks, in split
    order; the high bits as in gemv_nibbles (one row of zero words for 4-bit codes). The loop
    body repeats gemv_nibbles' lines on purpose: the same lines in a shared
    @njit(inline="always") helper compiled to code half as fast (measured)."""
    R, nb = out.shape[0], codes.shape[1]
    one_high_row = high32.shape[0] == 1
    for r in prange(R):
        o = row0 + r
        cr = codes[o]
        hr = high32[0] if one_high_row else high32[o]
        lo_out = out[r, :nb]
        hi_out = out[r, nb:]
        for blk in range(nb // 16):
            word = hr[blk]
            base = blk * 16
            sc = as_f32(scale[o, base // hg], table)
            of = as_f32(offset[o, base // hg], table)
            for k in range(16):
                b = cr[base + k]
                lo = (np.float32(np.uint8(b & np.uint8(15))) +
                      (np.float32(16.0) if word & mask_lo[k] else np.float32(0.0)))
                hi = (np.float32(np.uint8(b >> np.uint8(4))) +
                      (np.float32(16.0) if word & mask_hi[k] else np.float32(0.0)))
                lo_out[base + k] = sc * lo + of
                hi_out[base + k] = sc * hi + of


@njit(cache=True, parallel=True, fastmath=True)
def dequantize_tile_q6_blocks(codes, high64, scale, offset, hg, row0, table, out):
    """Rows row0.. of a 6-bit matrix in 16-byte blocks (groups of 8 bytes or a multiple), in
    split order; the high bits as in gemv_q6_blocks."""
    R, nb = out.shape[0], codes.shape[1]
    for r in prange(R):
        o = row0 + r
        cr = codes[o]
        lo_out = out[r, :nb]
        hi_out = out[r, nb:]
        for blk in range(nb // 16):
            base = blk * 16
            s0 = as_f32(scale[o, base // hg], table)
            s1 = as_f32(scale[o, (base + 8) // hg], table)
            f0 = as_f32(offset[o, base // hg], table)
            f1 = as_f32(offset[o, (base + 8) // hg], table)
            word = high64[o, blk]
            for k in range(16):
                b = np.uint64(cr[base + k])
                h = word >> np.uint64(4 * k)
                lo = np.uint8((b & 15) | ((h & 3) << 4))
                hi = np.uint8((b >> 4) | ((h & 12) << 2))
                sc = s0 if k < 8 else s1
                of = f0 if k < 8 else f1
                lo_out[base + k] = sc * np.float32(lo) + of
                hi_out[base + k] = sc * np.float32(hi) + of




@njit(cache=True, parallel=True, fastmath=True)
def dequantize_tile_bytes(codes, scale, offset, group_size, row0, table, out):
    """Rows row0.. of an 8-bit matrix as floats (code order)."""
    R, n = out.shape
    G = scale.shape[1]
    for r in prange(R):
        o = row0 + r
        for g in range(G):
            sc = as_f32(scale[o, g], table)
            of = as_f32(offset[o, g], table)
            for c in range(g * group_size, min(n, (g + 1) * group_size)):
                out[r, c] = sc * np.float32(codes[o, c]) + of


# -- the small ops ---------------------------------------------------------------------------

@njit(cache=True, parallel=True, fastmath=True)
def rms_norm_rows(x, w, eps, out):
    rows, n = x.shape
    for r in prange(rows):
        ss = np.float32(0.0)
        for i in range(n):
            ss += x[r, i] * x[r, i]
        inv = np.float32(1.0) / np.sqrt(ss / n + eps)
        for i in range(n):
            out[r, i] = x[r, i] * inv * w[i]


@njit(cache=True, parallel=True, fastmath=True)
def rope_rows(x, cos, sin, out):
    """x [T, h, Dh], cos/sin [T, Dh/2]: rotate-half, pairs (i, i + Dh/2)."""
    T, h, d = x.shape
    half = d // 2
    for t in prange(T):
        for k in range(h):
            for i in range(half):
                a, b = x[t, k, i], x[t, k, i + half]
                out[t, k, i] = a * cos[t, i] - b * sin[t, i]
                out[t, k, i + half] = b * cos[t, i] + a * sin[t, i]


@njit(cache=True, parallel=True, fastmath=True)
def silu_mul_rows(gate, up, out):
    rows, n = gate.shape
    for r in prange(rows):
        for i in range(n):
            g = gate[r, i]
            out[r, i] = g / (np.float32(1.0) + np.exp(-g)) * up[r, i]


@njit(cache=True, parallel=True, fastmath=True)
def attention_heads(q, k, v, start, out):
    """q [T, H, Dh], k/v [S, Hkv, Dh]; query t (position start + t) sees keys 0..start+t;
    query head h reads KV head h // (H / Hkv)."""
    T, H, d = q.shape
    Hkv = k.shape[1]
    rep = H // Hkv
    scale = np.float32(1.0 / np.sqrt(d))
    for job in prange(T * H):
        t, h = job // H, job % H
        kv = h // rep
        n = start + t + 1
        scores = np.empty(n, np.float32)
        m = -np.inf
        for s in range(n):
            acc = np.float32(0.0)
            for i in range(d):
                acc += q[t, h, i] * k[s, kv, i]
            scores[s] = acc * scale
            m = max(m, scores[s])
        total = np.float32(0.0)
        for s in range(n):
            scores[s] = np.exp(scores[s] - m)
            total += scores[s]
        for i in range(d):
            out[t, h, i] = 0.0
        for s in range(n):
            p = scores[s] / total
            for i in range(d):
                out[t, h, i] += p * v[s, kv, i]


class NumbaBackend:
    name = "numba"

    def __init__(self, dtype: str = "float32", threads: int | None = None):
        if dtype != "float32":
            raise BackendUnavailable(f"backend 'numba' computes in float32, not {dtype} "
                                     f"(use the numpy backend for float64)")
        self.dtype = np.dtype(np.float32)
        if threads is not None:
            numba.set_num_threads(threads)
        self.threads = numba.get_num_threads()

    # -- placement: host NumPy arrays, as the NumPy backend places them --------------------
    asarray = NumpyBackend.asarray
    to_numpy = NumpyBackend.to_numpy
    zeros = NumpyBackend.zeros

    # -- ops ---------------------------------------------------------------------------------
    def embed(self, table, ids):
        ids = np.asarray(ids, dtype=np.int64)
        if isinstance(table, MappedQuantizedRows):  # converted from the file row by row
            table, ids = table.rows(ids), np.arange(len(ids), dtype=np.int64)
        if isinstance(table, QuantizedTensor):
            out = np.empty((ids.shape[0], table.shape[1]), np.float32)
            dequantize_tile(table.codes, _high(table), table.bits, kernel_floats(table.scale),
                            kernel_floats(table.offset), _group_of(table), table.shape[1], ids,
                            HALF_TABLE, out)
            if table.perm is not None:
                unsorted = np.empty_like(out)
                unsorted[:, table.perm] = out
                out = unsorted
            return out
        return rows_as_compute(table, ids, self.dtype)

    def linear(self, x, w, bias=None):
        x = np.ascontiguousarray(x, dtype=np.float32)
        if isinstance(w, QuantizedTensor):
            if w.perm is not None:
                x = np.ascontiguousarray(x[:, w.perm])
            y = self._gemv(x[0], w)[None] if x.shape[0] == 1 else self._prefill(x, w)
        elif isinstance(w, np.ndarray) and w.dtype == np.float32:
            y = x @ w.T
        else:  # float16 / bfloat16 matrices: a tile at a time, as the NumPy backend does
            y = np.empty((x.shape[0], w.shape[0]), np.float32)
            step = max(1, PREFILL_TILE_ELEMENTS // w.shape[1])
            for o in range(0, w.shape[0], step):
                y[:, o:o + step] = x @ rows_as_compute(w, slice(o, o + step), np.float32).T
        return y if bias is None else y + bias

    def _gemv(self, x, w: QuantizedTensor):
        """One token: the kernel for the code width, or the NumPy tiles for other shapes."""
        if not kernels_take(w):
            return numpy_linear(x[None], w)[0]
        out_f, n_in = w.shape
        g, groups = w.group_size, w.n_groups
        xpad = np.zeros(groups * g, np.float32)
        xpad[:n_in] = x
        xsum = xpad.reshape(groups, g).sum(axis=1)
        y = np.empty(out_f, np.float32)
        scale, offset = kernel_floats(w.scale), kernel_floats(w.offset)
        if w.bits == 8:
            gemv_q8(w.codes, scale, offset, x, xsum, g, HALF_TABLE, y)
            return y
        xe, xo = np.ascontiguousarray(x[0::2]), np.ascontiguousarray(x[1::2])
        if w.bits == 6:
            gemv_q6_blocks(w.codes, w.high.view(np.uint64), scale, offset, xe, xo, xsum, g // 2,
                           HALF_TABLE, y)
        else:
            gemv_nibbles(w.codes, _high_words(w), MASK_LO, MASK_HI, scale, offset, xe, xo, xsum,
                         g // 2, HALF_TABLE, y)
        return y

    def _prefill(self, x, w: QuantizedTensor):
        """Dequantize a tile of rows once, then one BLAS product for all the tokens."""
        if not kernels_take(w):
            return numpy_linear(x, w)
        out_f, n_in = w.shape
        scale, offset = kernel_floats(w.scale), kernel_floats(w.offset)
        width = n_in
        if w.bits != 8:     # split order: even columns, then odd ones
            x = np.ascontiguousarray(np.concatenate([x[:, 0::2], x[:, 1::2]], axis=1))
        y = np.empty((x.shape[0], out_f), np.float32)
        step = max(1, PREFILL_TILE_ELEMENTS // width)
        tile = np.empty((min(step, out_f), width), np.float32)
        hg = w.group_size // 2
        for o in range(0, out_f, step):
            t = tile[:min(step, out_f - o)]
            if w.bits == 8:
                dequantize_tile_bytes(w.codes, scale, offset, w.group_size, o, HALF_TABLE, t)
            elif w.bits == 6:
                dequantize_tile_q6_blocks(w.codes, w.high.view(np.uint64), scale, offset, hg, o,
                                          HALF_TABLE, t)
            else:
                dequantize_tile_nibbles(w.codes, _high_words(w), MASK_LO, MASK_HI, scale, offset,
                                        hg, o, HALF_TABLE, t)
            y[:, o:o + t.shape[0]] = x @ t.T
        return y

    def rms_norm(self, x, w, eps):
        x2 = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, x.shape[-1])
        out = np.empty_like(x2)
        rms_norm_rows(x2, np.asarray(w, np.float32), np.float32(eps), out)
        return out.reshape(x.shape)

    def rope(self, x, positions, inv_freq):
        angle = np.asarray(positions, np.float64)[:, None] * np.asarray(inv_freq, np.float64)
        out = np.empty(x.shape, np.float32)
        rope_rows(np.ascontiguousarray(x, dtype=np.float32), np.cos(angle).astype(np.float32),
                  np.sin(angle).astype(np.float32), out)
        return out

    def attention(self, q, k, v, start):
        out = np.empty(q.shape, np.float32)
        attention_heads(np.ascontiguousarray(q, dtype=np.float32),
                        np.ascontiguousarray(k, dtype=np.float32),
                        np.ascontiguousarray(v, dtype=np.float32), int(start), out)
        return out

    def silu_mul(self, gate, up):
        out = np.empty(gate.shape, np.float32)
        silu_mul_rows(np.ascontiguousarray(gate, dtype=np.float32),
                      np.ascontiguousarray(up, dtype=np.float32), out)
        return out


_NO_HIGH = np.zeros((1, 1), np.uint8)


def numpy_linear(x, w):
    """The NumPy reference product, for shapes the kernels do not take."""
    return NumpyBackend("float32").linear(x, w)


def _group_of(w: QuantizedTensor) -> np.ndarray:
    """The group of each code column, [in] int32 (a table lookup beats a division per code)."""
    return (np.arange(w.shape[1] + 1) // w.group_size).astype(np.int32)


def kernels_take(w: QuantizedTensor) -> bool:
    """Whether the block kernels take this matrix: 8-bit codes always; 4/5/6-bit codes when
    rows are whole 16-byte blocks (32 codes) and a group is whole blocks (4/5 bits) or whole
    8-byte halves (6 bits). Other shapes use the NumPy tiles."""
    if w.bits == 8:
        return True
    if w.bits not in (4, 5, 6) or w.shape[1] % 32 or w.group_size % 2:
        return False
    return (w.group_size // 2) % (8 if w.bits == 6 else 16) == 0


def _high_words(w: QuantizedTensor) -> np.ndarray:
    """The high plane of 5-bit codes as one uint32 word per 16-byte block; for 4-bit codes one
    row of zero words that every row reads."""
    if w.bits == 5:
        return w.high.view(np.uint32)
    return np.zeros((1, w.codes.shape[1] // 16), np.uint32)


def _high(w: QuantizedTensor) -> np.ndarray:
    return w.high if w.high is not None else _NO_HIGH
