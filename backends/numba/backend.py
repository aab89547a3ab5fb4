"""Numba CPU kernels behind the backend interface: fused dequantize-and-multiply over
quantized matrices, and the small ops (RMSNorm, RoPE, SwiGLU, attention) compiled.

Decoding one token is a matrix-vector product that must read each weight byte once and do
little else. For a row o of a quantized matrix, with x already in the codes' column order:

    y[o] = sum_g scale[o, g] * (sum_{c in g} q[o, c] * x[c]) + offset[o, g] * xsum[g]

where xsum[g] (the sum of x over group g) is computed once per call. `prepare` re-lays the
quantized matrices as tiles of 16 rows (numba/tiles.py), whose kernels add up 16 rows lane
by lane; byte j of nibble-packed codes meets x[2j] and x[2j + 1].

Prefill (many tokens) runs the same tiles four tokens at a time, so that each code, once
converted, meets four activations (numba/tiles.py); attention over many tokens is BLAS
(numba/attention.py).

Every kernel is @njit(cache=True), so a second start loads them from the cache instead of
compiling; `parallel=True` with prange splits rows over threads; `nogil=True` lets other
Python threads run while a kernel does (the server's HTTP thread, beside its batcher's: with
the lock held through each kernel, one stream served decoded about 15% slower than the
batcher alone). Their fast-math flags are
chosen per kind of loop (numba/floats.py): never the ones that make inf or NaN undefined.
"""

from __future__ import annotations

import numpy as np

# Numba's thread spin and 512-bit vectors: set before the first kernel loads libgomp or
# compiles (backends/process_settings.py says what each does; an explicit setting wins).
from qwen_np.backends.process_settings import apply_speed_settings

apply_speed_settings(numba=True)

from qwen_np.tensors.int8_rows import Int8Rows, slot_rows
from qwen_np.tensors.dense import BFloat16Array, rows_as_compute
from qwen_np.errors import BackendUnavailable
from qwen_np.tensors.quantized import QuantizedTensor

from qwen_np.backends.numpy.backend import NumpyBackend

try:
    import numba
    from numba import njit, prange
except ImportError as e:  # reported by get_backend as a one-line error
    raise BackendUnavailable("backend 'numba' needs the numba package "
                             "(pip install numba)") from e

from qwen_np.backends.numba.attention import (attention_many_tokens, attention_one_token, attention_slots,
                              half_rows_to_float32)
from qwen_np.backends.numba.floats import LANE_MATH, ROW_SUM_MATH, as_f32, exp_of_nonpositive, kernel_floats
from qwen_np.backends.numba.tile_kernels import (
    BLOCK, dequantize_byte_tiles, dequantize_five_bit_tiles, dequantize_four_bit_tiles,
    dequantize_six_bit_tiles, gemm_byte_tiles, gemm_five_bit_tiles, gemm_four_bit_tiles,
    gemm_six_bit_tiles, gemv_byte_tiles, gemv_five_bit_tiles, gemv_four_bit_tiles, gemv_six_bit_tiles,
    rows_byte_tiles, rows_five_bit_tiles, rows_four_bit_tiles, rows_six_bit_tiles)
from qwen_np.backends.numba.tiles import LANES, ROW_TILES_VERSION, RowTiles, tiles_take, to_row_tiles

PREFILL_TILE_ELEMENTS = 1 << 20


# -- dequantizing tiles (prefill, embedding rows) ---------------------------------------------

@njit(cache=True, nogil=True, parallel=True, fastmath=LANE_MATH)
def dequantize_tile(codes, high, bits, scale, offset, group_of, n_in, row_ids, out):
    """out[r, c] = scale[o, g] * q[o, c] + offset[o, g] with g = group_of[c], for o = row_ids[r],
    in code order. `high` is ignored for 4 and 8 bits."""
    G = scale.shape[1]
    for r in prange(row_ids.shape[0]):
        o = row_ids[r]
        sc = np.empty(G, np.float32)
        of = np.empty(G, np.float32)
        for g in range(G):
            sc[g] = as_f32(scale[o, g])
            of[g] = as_f32(offset[o, g])
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


# -- the small ops ---------------------------------------------------------------------------

@njit(cache=True, nogil=True, parallel=True, fastmath=ROW_SUM_MATH)
def rms_norm_rows(x, w, eps, out):
    """A sum of squares past float32's range is inf, and the row becomes zeros (x / inf), as
    in the reference."""
    rows, n = x.shape
    for r in prange(rows):
        ss = np.float32(0.0)
        for i in range(n):
            ss += x[r, i] * x[r, i]
        inv = np.float32(1.0) / np.sqrt(ss / n + eps)
        for i in range(n):
            out[r, i] = x[r, i] * inv * w[i]


@njit(cache=True, nogil=True, parallel=True, fastmath=LANE_MATH)
def rope_rows(x, cos, sin, out):
    """x [T, h, Dh], cos/sin [T, n]: rotate-half over the first 2n dims, pairs (i, i + n);
    dims 2n.. are copied (partial rotary)."""
    T, h, d = x.shape
    half = cos.shape[1]
    for t in prange(T):
        for k in range(h):
            for i in range(half):
                a, b = x[t, k, i], x[t, k, i + half]
                out[t, k, i] = a * cos[t, i] - b * sin[t, i]
                out[t, k, i + half] = b * cos[t, i] + a * sin[t, i]
            for i in range(2 * half, d):
                out[t, k, i] = x[t, k, i]


@njit(cache=True, nogil=True, parallel=True, fastmath=ROW_SUM_MATH)
def gemv_half_rows(bits, lut, x, out):
    """out[o] = sum_i lut[bits[o, i]] * x[i]: a float16 or bfloat16 matrix (its 16-bit
    patterns) times one vector, each weight decoded through a 65,536-entry float32 table
    (exact for every pattern, inf and NaN included), read once."""
    rows, n = bits.shape
    for o in prange(rows):
        acc = np.float32(0.0)
        for i in range(n):
            acc += lut[bits[o, i]] * x[i]
        out[o] = acc


def half_table(kind: str) -> np.ndarray:
    """float32 value of every 16-bit pattern of float16 or bfloat16 (bfloat16: bits << 16)."""
    patterns = np.arange(1 << 16, dtype=np.uint32)
    if kind == "float16":
        return patterns.astype(np.uint16).view(np.float16).astype(np.float32)
    return (patterns << 16).view(np.float32)


HALF_TABLES = {"float16": half_table("float16"), "bfloat16": half_table("bfloat16")}


@njit(cache=True, nogil=True, parallel=True, fastmath=LANE_MATH)
def dequantize_kv_rows(codes, scale, zero, out):
    """out[s, k, i] = scale[s, k] * (codes[s, k, i] - zero[s, k]) (an int8 KV cache read)."""
    S, h, d = codes.shape
    for s in prange(S):
        for k in range(h):
            sc = np.float32(scale[s, k])
            z = np.float32(zero[s, k])
            for i in range(d):
                out[s, k, i] = sc * (np.float32(codes[s, k, i]) - z)


@njit(cache=True, nogil=True, parallel=True, fastmath=LANE_MATH)
def silu_mul_rows(gate, up, out):
    """silu(g) * u with e = exp(-|g|), which never overflows: g / (1 + e) for g >= 0, and
    g e / (1 + e) = g / (1 + exp(-g)) for g < 0. exp_of_nonpositive vectorizes (the C
    library's expf kept this loop scalar: 1.4 ms for a 128-token prefill's [128, 4864], most
    of it in expf). From g = -88.72284 down, where the reference's exp(-g) overflows float32,
    e is taken as 0 so that silu(g) = g * 0 = -0, as the reference's g / inf is."""
    rows, n = gate.shape
    for r in prange(rows):
        for i in range(n):
            g = gate[r, i]
            e = exp_of_nonpositive(-abs(g))
            if g <= EXP_OVERFLOWS_FROM:
                e = np.float32(0.0)
            out[r, i] = (g if g >= np.float32(0.0) else g * e) / (np.float32(1.0) + e) * up[r, i]


EXP_OVERFLOWS_FROM = -np.float32(88.72284)     # float32 exp(-g) is inf from here down


@njit(cache=True, nogil=True, inline="always", fastmath=ROW_SUM_MATH)
def softmax_in_place(scores):
    """scores -> exp(scores - max) / sum, in place. The maximum starts at -inf (defined: the
    flags leave out ninf) and is taken off before exp, which would overflow float32 for
    scores above about 88."""
    m = -np.inf
    for s in range(scores.shape[0]):
        m = max(m, scores[s])
    total = np.float32(0.0)
    for s in range(scores.shape[0]):
        scores[s] = np.exp(scores[s] - m)
        total += scores[s]
    for s in range(scores.shape[0]):
        scores[s] = scores[s] / total


@njit(cache=True, nogil=True, parallel=True, fastmath=ROW_SUM_MATH)
def attention_heads_int8(q, kc, ks, kz, vc, vs, vz, start, out):
    """attention_heads over an int8 cache read in place: key s of head kv is
    ks[s, kv] * (kc[s, kv, :] - kz[s, kv]), so a score is ks * (q . kc - kz * sum(q)); and
    likewise for the values, out = sum_s p_s vs_s vc[s] - sum_s p_s vs_s vz_s."""
    T, H, d = q.shape
    Hkv = kc.shape[1]
    rep = H // Hkv
    scale = np.float32(1.0 / np.sqrt(d))
    for job in prange(T * H):
        t, h = job // H, job % H
        kv = h // rep
        n = start + t + 1
        qsum = np.float32(0.0)
        for i in range(d):
            qsum += q[t, h, i]
        scores = np.empty(n, np.float32)
        for s in range(n):
            acc = np.float32(0.0)
            for i in range(d):
                acc += q[t, h, i] * np.float32(kc[s, kv, i])
            scores[s] = ks[s, kv] * (acc - kz[s, kv] * qsum) * scale
        softmax_in_place(scores)
        row = np.zeros(d, np.float32)
        shift = np.float32(0.0)
        for s in range(n):
            w = scores[s] * vs[s, kv]
            shift += w * vz[s, kv]
            for i in range(d):
                row[i] += w * np.float32(vc[s, kv, i])
        for i in range(d):
            out[t, h, i] = row[i] - shift


class NumbaBackend:
    name = "numba"
    # what `prepare` makes, for the prepared-model cache (qwen_np/runtime/prepared_cache.py)
    prepared_layout = f"row tiles of {LANES} rows, version {ROW_TILES_VERSION}"
    prepared_types = (RowTiles,)

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

    def prepare(self, w):
        """Quantized matrices the row-tile kernels take -> RowTiles: the same bytes, re-laid
        in the arrays' own memory where they are writable (`w` is not to be used after);
        every other weight as it is."""
        if isinstance(w, QuantizedTensor) and tiles_take(w):
            return to_row_tiles(w, in_place=True)
        return w

    # -- ops ---------------------------------------------------------------------------------
    def embed(self, table, ids):
        ids = np.asarray(ids, dtype=np.int64)
        if isinstance(table, RowTiles):
            return embed_from_tiles(table, ids)
        if isinstance(table, QuantizedTensor):
            out = np.empty((ids.shape[0], table.shape[1]), np.float32)
            dequantize_tile(table.codes, _high(table), table.bits, kernel_floats(table.scale),
                            kernel_floats(table.offset), _group_of(table), table.shape[1], ids,
                            out)
            return unpermuted(out, table.perm)
        return rows_as_compute(table, ids, self.dtype)

    def linear(self, x, w, bias=None):
        x = np.ascontiguousarray(x, dtype=np.float32)
        if isinstance(w, QuantizedTensor) and tiles_take(w):
            w = to_row_tiles(w)    # a matrix `prepare` did not see: re-laid for this call
        if isinstance(w, (QuantizedTensor, RowTiles)):
            if w.perm is not None:
                x = np.ascontiguousarray(x[:, w.perm])
            if isinstance(w, RowTiles):
                y = gemv_tiles(x[0], w)[None] if x.shape[0] == 1 else prefill_tiles(x, w)
            else:
                y = numpy_linear(x, w)
        elif isinstance(w, np.ndarray) and w.dtype == np.float32:
            y = x @ w.T
        elif x.shape[0] == 1 and (isinstance(w, BFloat16Array) or w.dtype == np.float16):
            # decoding: one pass over the 16-bit weights, decoded in the kernel
            kind = "bfloat16" if isinstance(w, BFloat16Array) else "float16"
            bits = w.bits if kind == "bfloat16" else w.view(np.uint16)
            y = np.empty((1, w.shape[0]), np.float32)
            gemv_half_rows(bits, HALF_TABLES[kind], x[0], y[0])
        else:  # float16 / bfloat16 matrices: a tile at a time, as the NumPy backend does
            y = np.empty((x.shape[0], w.shape[0]), np.float32)
            step = max(1, PREFILL_TILE_ELEMENTS // w.shape[1])
            for o in range(0, w.shape[0], step):
                y[:, o:o + step] = x @ rows_as_compute(w, slice(o, o + step), np.float32).T
        return y if bias is None else y + bias

    def linear_rows(self, x, w, bias=None):
        """[B, in] rows of B sequences decoded together -> [B, out], each row what linear
        gives for it alone: row-tiled matrices through the rows_* kernels, which read each
        tile once for all the rows (numba/tiles.py); other matrices a row at a time."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if isinstance(w, RowTiles) and x.shape[0] > 1:
            if w.perm is not None:
                x = np.ascontiguousarray(x[:, w.perm])
            y = rows_tiles(x, w)
            return y if bias is None else y + bias
        return np.concatenate([self.linear(x[b:b + 1], w, bias) for b in range(x.shape[0])])

    def attention_slots(self, q, k, v, slot_ids, lengths):
        """One new token of each of B sequences over its own slot (NumpyBackend's docstring):
        float32 and float16 slots in one kernel (numba/attention.py), whose every token's
        output is the one-token kernel's; int8 slots a token at a time."""
        if isinstance(k, Int8Rows):
            return np.concatenate([self.attention(q[b:b + 1], slot_rows(k, s, n),
                                                  slot_rows(v, s, n), n - 1)
                                   for b, (s, n) in enumerate(zip(slot_ids, lengths))])
        q = np.ascontiguousarray(q, dtype=np.float32)
        if k.dtype == np.float16:
            k, v = k.view(np.uint16), v.view(np.uint16)
        else:
            k, v = k.astype(np.float32, copy=False), v.astype(np.float32, copy=False)
        return attention_slots(q, k, v, slot_ids, lengths, self.threads)

    def rms_norm(self, x, w, eps):
        x2 = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, x.shape[-1])
        out = np.empty_like(x2)
        rms_norm_rows(x2, np.asarray(w, np.float32), np.float32(eps), out)
        return out.reshape(x.shape)

    def rope(self, x, positions, inv_freq, scaling=1.0):
        angle = np.asarray(positions, np.float64)[:, None] * np.asarray(inv_freq, np.float64)
        out = np.empty(x.shape, np.float32)
        rope_rows(np.ascontiguousarray(x, dtype=np.float32),
                  (np.cos(angle) * scaling).astype(np.float32),
                  (np.sin(angle) * scaling).astype(np.float32), out)
        return out

    def attention(self, q, k, v, start):
        """k, v: float arrays, or an int8 cache's Int8Rows, read where they lie (an int8 or
        float16 cache is not converted whole each step). One token: the compiled kernels
        (numba/attention.py; int8 below); many: BLAS, one KV head at a time."""
        q = np.ascontiguousarray(q, dtype=np.float32)
        T, Hkv = q.shape[0], k.shape[1]
        if isinstance(k, Int8Rows):
            if T > 1:
                return attention_many_tokens(q, _int8_head(k), _int8_head(v), int(start), Hkv)
            f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)  # noqa: E731
            out = np.empty(q.shape, np.float32)
            attention_heads_int8(q, np.ascontiguousarray(k.codes), f32(k.scale), f32(k.zero),
                                 np.ascontiguousarray(v.codes), f32(v.scale), f32(v.zero),
                                 int(start), out)
            return out
        if k.dtype == np.float16:
            k, v = np.ascontiguousarray(k).view(np.uint16), np.ascontiguousarray(v).view(np.uint16)
            rows = _half_head
        else:
            k = np.ascontiguousarray(k, dtype=np.float32)
            v = np.ascontiguousarray(v, dtype=np.float32)
            rows = _float_head
        if T == 1:
            return attention_one_token(q, k, v, int(start), self.threads)
        return attention_many_tokens(q, rows(k), rows(v), int(start), Hkv)

    def dequantize_kv(self, codes, scale, zero):
        out = np.empty(codes.shape, np.float32)
        dequantize_kv_rows(codes, np.ascontiguousarray(scale, dtype=np.float32),
                           np.ascontiguousarray(zero, dtype=np.float32), out)
        return out

    def silu_mul(self, gate, up):
        out = np.empty(gate.shape, np.float32)
        silu_mul_rows(np.ascontiguousarray(gate, dtype=np.float32),
                      np.ascontiguousarray(up, dtype=np.float32), out)
        return out


def _float_head(a):
    """KV head kv of a float32 cache [S, Hkv, Dh], copied: [S, Dh] (NumPy's matmul multiplies
    the strided view without BLAS, measured 10x slower)."""
    return lambda kv: np.ascontiguousarray(a[:, kv])


def _half_head(bits):
    """KV head kv of a float16 cache's bits [S, Hkv, Dh], converted: float32 [S, Dh]."""
    def head(kv):
        out = np.empty((bits.shape[0], bits.shape[2]), np.float32)
        half_rows_to_float32(bits, kv, out)
        return out
    return head


def _int8_head(rows: Int8Rows):
    """KV head kv of an int8 cache, dequantized: float32 [S, Dh]."""
    def head(kv):
        scale = rows.scale[:, kv, None].astype(np.float32)
        zero = rows.zero[:, kv, None].astype(np.float32)
        return scale * (rows.codes[:, kv].astype(np.float32) - zero)
    return head


_NO_HIGH = np.zeros((1, 1), np.uint8)


# The kernels of each code width (tile_kernels.py): one token, the rows of a decode step, a
# prefill's tokens, tiles as float columns. Each takes tile_operands(w), then x (and xsum for a
# prefill; t0 for dequantizing), the group parameter, and the output.
TILE_KERNELS = {8: (gemv_byte_tiles, rows_byte_tiles, gemm_byte_tiles, dequantize_byte_tiles),
                6: (gemv_six_bit_tiles, rows_six_bit_tiles, gemm_six_bit_tiles,
                    dequantize_six_bit_tiles),
                5: (gemv_five_bit_tiles, rows_five_bit_tiles, gemm_five_bit_tiles,
                    dequantize_five_bit_tiles),
                4: (gemv_four_bit_tiles, rows_four_bit_tiles, gemm_four_bit_tiles,
                    dequantize_four_bit_tiles)}


def tile_operands(w: RowTiles):
    """(the tiles' arrays the kernels read, a group's code bytes): codes, high plane (a
    dummy for 4 and 8 bits), scale, offset; a group is group_size bytes of 8-bit codes,
    group_size / 2 of the others."""
    return (w.codes, w.high, w.scale, w.offset), (w.group_size if w.bits == 8 else w.group_size // 2)


def gemv_tiles(x, w: RowTiles) -> np.ndarray:
    """One token through a row-tiled matrix: [in] -> [out]."""
    y = np.empty(w.codes.shape[0] * LANES, np.float32)
    arrays, group = tile_operands(w)
    TILE_KERNELS[w.bits][0](*arrays, x, group, y)
    return y[:w.shape[0]]


def rows_tiles(x, w: RowTiles) -> np.ndarray:
    """Rows of B sequences through a row-tiled matrix, each row as gemv_tiles computes it:
    [B, in] -> [B, out]. An odd B gets a zero row (the kernel takes four rows a pass, then
    two)."""
    B = x.shape[0]
    if B % 2:
        x = np.concatenate([x, np.zeros((1, x.shape[1]), np.float32)])
    y = np.empty((x.shape[0], w.codes.shape[0] * LANES), np.float32)
    arrays, group = tile_operands(w)
    TILE_KERNELS[w.bits][1](*arrays, x, group, y)
    return y[:B, :w.shape[0]]


def padded_to_block(x):
    """x [N, in] with zero rows added up to a multiple of BLOCK (4) rows."""
    if x.shape[0] % BLOCK == 0:
        return x
    return np.concatenate([x, np.zeros((BLOCK - x.shape[0] % BLOCK, x.shape[1]), np.float32)])


def dequantize_tiles(w: RowTiles, t0: int, out: np.ndarray) -> None:
    """Tiles t0 .. t0 + out.shape[1] / 16 of a row-tiled matrix as float columns, out
    [in, 16 tiles]: code order for 8-bit codes, split order (even columns, then odd ones)
    for the others."""
    arrays, group = tile_operands(w)
    TILE_KERNELS[w.bits][3](*arrays, group, t0, out)


def prefill_tiles(x, w: RowTiles) -> np.ndarray:
    """Many tokens through a row-tiled matrix, four at a time (numba/tiles.py): [N, in] ->
    [N, out]. x is padded with zero rows to a multiple of 4; xsum [N, G] sums x over each
    group (the last may be shorter)."""
    out_f, n_in = w.shape
    N = x.shape[0]
    x = padded_to_block(x)
    xsum = np.ascontiguousarray(np.add.reduceat(x, np.arange(0, n_in, w.group_size), axis=1),
                                dtype=np.float32)
    y = np.empty((x.shape[0], w.codes.shape[0] * LANES), np.float32)
    arrays, group = tile_operands(w)
    TILE_KERNELS[w.bits][2](*arrays, x, xsum, group, y)
    return y[:N, :out_f]


def embed_from_tiles(w: RowTiles, ids) -> np.ndarray:
    """Embedding rows of a row-tiled table: each id's tile of 16 rows dequantized, its row
    taken (a lookup reads a handful of rows, so the other 15 cost little)."""
    out_f, n_in = w.shape
    out = np.empty((len(ids), n_in), np.float32)
    tile = np.empty((n_in, LANES), np.float32)
    for i, o in enumerate(ids):
        dequantize_tiles(w, int(o) // LANES, tile)
        row = tile[:, int(o) % LANES]
        if w.bits == 8:
            out[i] = row
        else:           # split order back to code order
            out[i, 0::2], out[i, 1::2] = row[:n_in // 2], row[n_in // 2:]
    return unpermuted(out, w.perm)


def unpermuted(out: np.ndarray, perm) -> np.ndarray:
    """Rows in sorted-column order (act-order GPTQ) back in the matrix's own column order."""
    if perm is None:
        return out
    unsorted = np.empty_like(out)
    unsorted[:, perm] = out
    return unsorted


def numpy_linear(x, w):
    """The NumPy reference product, for shapes the kernels do not take."""
    return NumpyBackend("float32").linear(x, w)


def _group_of(w: QuantizedTensor) -> np.ndarray:
    """The group of each code column, [in] int32 (a table lookup beats a division per code)."""
    return (np.arange(w.shape[1] + 1) // w.group_size).astype(np.int32)


def _high(w: QuantizedTensor) -> np.ndarray:
    return w.high if w.high is not None else _NO_HIGH
