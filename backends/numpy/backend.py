"""The reference ops, in plain NumPy. Every other backend is checked against these.

Each op computes in `self.dtype` throughout (float32, or float64 for oracle work); weights are
converted from their file dtype as they are read.
"""

from __future__ import annotations

import numpy as np

from qwen_np.tensors.int8_rows import Int8Rows, slot_rows
from qwen_np.tensors.dense import rows_as_compute
from qwen_np.tensors.quantized import QuantizedTensor, dequantize_rows

# A quantized matrix is dequantized this many floats at a time (4 MiB in float32), so a
# product never holds more than one tile of a layer in float.
TILE_ELEMENTS = 1 << 20


def matmul_transposed(x, m):
    return x @ m.T


def rows_apart(x, m):
    """x @ m.T a row of x at a time."""
    return np.concatenate([x[b:b + 1] @ m.T for b in range(x.shape[0])])


class NumpyBackend:
    name = "numpy"
    # what `prepare` returns, for the prepared-model cache (backends/__init__.py
    # prepared_form): the loader's own form, unchanged
    prepared_layout = "loader form"
    prepared_types = ()

    def __init__(self, dtype: str = "float32"):
        self.dtype = np.dtype(dtype)

    # -- placement -------------------------------------------------------------------------
    def asarray(self, x):
        return np.asarray(x, dtype=self.dtype)

    def to_numpy(self, x):
        return np.asarray(x)

    def zeros(self, shape, dtype=None):
        a = np.zeros(shape, dtype=self.dtype if dtype is None else dtype)
        a.fill(0)  # touch every page now: preallocated memory is really held (a predictable peak)
        return a

    # -- ops -------------------------------------------------------------------------------
    def prepare(self, w):
        """Weights stay as the loader gave them: every op reads them in that form."""
        return w

    def embed(self, table, ids):
        if isinstance(table, QuantizedTensor):  # only the looked-up rows are dequantized
            return dequantize_rows(table, np.asarray(ids), self.dtype)
        return rows_as_compute(table, np.asarray(ids), self.dtype)  # [T, D]

    def linear(self, x, w, bias=None, product=None):
        """x @ w.T (+ bias). `product(x, m)`, x @ m.T by default, multiplies x by each float
        tile m of w."""
        product = product or matmul_transposed
        if isinstance(w, QuantizedTensor):
            y = self.linear_tiled(x[:, w.perm] if w.perm is not None else x, w.shape,
                                  lambda rows: dequantize_rows(w, rows, self.dtype, reorder=False),
                                  product)
        elif isinstance(w, np.ndarray) and w.dtype == self.dtype:
            y = product(x, w)                                            # [T, out]
        else:  # float16 / bfloat16 / another float: converted a tile at a time
            y = self.linear_tiled(x, w.shape, lambda rows: rows_as_compute(w, rows, self.dtype),
                                  product)
        return y if bias is None else y + bias

    def linear_rows(self, x, w, bias=None):
        """[B, in] rows of B sequences decoded together -> [B, out]: each row multiplied on
        its own, so that it is what linear gives for that row alone (BLAS may add up a
        product of several rows in another order); each tile of w is made once for all."""
        return self.linear(x, w, bias, product=rows_apart)

    def linear_tiled(self, x, shape, rows_as_float, product):
        """x @ W.T, where rows_as_float(slice) gives a tile of W's rows as floats: never more
        than TILE_ELEMENTS of W exist in float at once. For GPTQ act-order x arrives gathered
        by the codes' column order."""
        out, n_in = shape
        y = np.empty((x.shape[0], out), dtype=self.dtype)
        step = max(1, TILE_ELEMENTS // n_in)
        for o in range(0, out, step):
            y[:, o:o + step] = product(x, rows_as_float(slice(o, o + step)))   # [T, rows]
        return y

    def rms_norm(self, x, w, eps):
        # x / sqrt(mean(x^2) + eps) * w, over the last axis (Qwen2RMSNorm)
        mean_sq = np.mean(x * x, axis=-1, keepdims=True)
        return x / np.sqrt(mean_sq + self.dtype.type(eps)) * w

    def rope(self, x, positions, inv_freq, scaling=1.0):
        """Rotate-half ("NeoX") RoPE over the first 2n = 2 * len(inv_freq) dims of each head:
        element i pairs with element i + n; dims from 2n on pass through unchanged (partial
        rotary, as the original Qwen's rotary_pct < 1).

        angle[t, j] = positions[t] * inv_freq[j]           j < n
        x'[..., :n]   = x1 * cos - x2 * sin
        x'[..., n:2n] = x2 * cos + x1 * sin
        cos and sin are multiplied by `scaling` (YaRN's attention factor; else 1). The angles
        and their cos/sin are computed in float64, then rounded to the compute dtype.
        """
        angle = np.asarray(positions, np.float64)[:, None] * np.asarray(inv_freq, np.float64)
        cos = (np.cos(angle) * scaling).astype(self.dtype)[:, None, :]  # [T, 1, n]
        sin = (np.sin(angle) * scaling).astype(self.dtype)[:, None, :]
        n = angle.shape[1]
        x1, x2, rest = x[..., :n], x[..., n:2 * n], x[..., 2 * n:]
        return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest], axis=-1)

    def attention(self, q, k, v, start):
        k, v = self.kv_as_compute(k), self.kv_as_compute(v)
        T, H, Dh = q.shape
        S, Hkv, _ = k.shape
        rep = H // Hkv  # query heads per KV head; query head h reads KV head h // rep
        qg = q.reshape(T, Hkv, rep, Dh).transpose(1, 2, 0, 3)        # [Hkv, rep, T, Dh]
        kg = k.transpose(1, 2, 0)[:, None]                            # [Hkv, 1, Dh, S]
        vg = v.transpose(1, 0, 2)[:, None]                            # [Hkv, 1, S, Dh]
        scores = (qg @ kg) * self.dtype.type(1.0 / np.sqrt(Dh))       # [Hkv, rep, T, S]
        visible = np.arange(S)[None, :] <= (start + np.arange(T))[:, None]   # [T, S]
        scores = np.where(visible, scores, -np.inf)
        scores = scores - scores.max(axis=-1, keepdims=True)
        p = np.exp(scores)
        p = p / p.sum(axis=-1, keepdims=True)                         # softmax over keys
        out = p @ vg                                                  # [Hkv, rep, T, Dh]
        return out.transpose(2, 0, 1, 3).reshape(T, H, Dh)

    def attention_slots(self, q, k, v, slot_ids, lengths):
        """One new token of each of B sequences: q [B, H, Dh]; k, v the KV slots of a layer,
        [n_slots, S, Hkv, Dh] (or Int8Rows); token b is at position lengths[b] - 1 of slot
        slot_ids[b] and sees its keys 0 .. lengths[b] - 1. Each row is `attention` of that
        token alone."""
        rows = [self.attention(q[b:b + 1], slot_rows(k, s, n), slot_rows(v, s, n), n - 1)
                for b, (s, n) in enumerate(zip(slot_ids, lengths))]
        return np.concatenate(rows)                                   # [B, H, Dh]

    def kv_as_compute(self, x):
        """Cached keys or values in the compute dtype: an int8 cache's Int8Rows dequantized,
        a float16 cache's array converted."""
        if isinstance(x, Int8Rows):
            return self.dequantize_kv(x.codes, x.scale, x.zero)
        return np.asarray(x, dtype=self.dtype)

    def dequantize_kv(self, codes, scale, zero):
        """An int8 KV cache's codes [S, Hkv, Dh] (uint8) with scale, zero [S, Hkv]:
        scale * (code - zero), in the compute dtype (model/kv_cache.py)."""
        return scale.astype(self.dtype)[..., None] * (codes.astype(self.dtype)
                                                      - zero.astype(self.dtype)[..., None])

    def silu_mul(self, gate, up):
        with np.errstate(over="ignore"):  # exp(-g) -> inf for very negative g gives silu -> -0
            return gate / (1 + np.exp(-gate)) * up
