"""Attention over the KV cache for the Numba backend: one token at a time in a compiled
kernel, many tokens with BLAS.

One token (decoding). The H query heads read Hkv KV heads, rep = H / Hkv query heads each
(grouped-query attention). A job takes one KV head, the rep query heads that read it, and
one part of the keys, so each cached key and value row is read once for all rep heads (a
job per query head read each row rep times: at 8192 cached positions the cache of a layer
no longer fits the core's caches, and those re-reads came from far away). The keys are
split into parts so that there are jobs for every thread even when Hkv is 2:

    part p of the keys of KV head kv, for query heads j = 0 .. rep-1:
        m[p, j]    = max_s score[j, s]                      score = q_j . k_s / sqrt(Dh)
        l[p, j]    = sum_s exp(score[j, s] - m[p, j])
        o[p, j, :] = sum_s exp(score[j, s] - m[p, j]) v_s
    then, over the parts, with M = max_p m[p, j]:
        out_j = sum_p exp(m[p, j] - M) o[p, j, :] / sum_p exp(m[p, j] - M) l[p, j]

which is the softmax-weighted sum of the values, as the reference computes it in one piece
(the same idea as the GPU backend's attention_split and attention_combine).

Many tokens (prefill). Query t sees keys 0 .. start + t. For each KV head, the scores of
its rep query heads and a piece of the tokens are one matrix product with the keys (BLAS),
[P * rep, Dh] @ [Dh, n]; a compiled pass scales them, takes the softmax over the keys each
token sees and zeroes the others (causal_softmax_rows); a second product adds up the
values, [P * rep, n] @ [n, Dh]. Pieces of tokens keep the scores to about PIECE_ELEMENTS
floats.

The cache is read where it lies: float32 rows as they are, float16 rows as their bits
(uint16) converted in the kernel; for BLAS, one KV head's rows are converted at a time.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from qwen_np.backends.numba.floats import ROW_SUM_MATH, as_f32, exp_of_nonpositive

PIECE_ELEMENTS = 1 << 21        # scores of one BLAS piece: 8 MB of float32
KEYS_PER_PART = 256             # at least this many keys in a part of the one-token kernel


def attention_one_token(q, k, v, start: int, threads: int) -> np.ndarray:
    """q [1, H, Dh]; k, v [S, Hkv, Dh] float32, or float16 bits (uint16), with S >= start + 1:
    the new token's attention output [1, H, Dh] over keys 0 .. start."""
    return attention_slots(q, k[None], v[None], np.zeros(1, np.int64),
                           np.array([start + 1], np.int64), threads)


def attention_slots(q, k, v, slot_ids, lengths, threads: int) -> np.ndarray:
    """One new token of each of B sequences: q [B, H, Dh]; k, v [n_slots, S, Hkv, Dh] float32,
    or float16 bits (uint16); token b sees keys 0 .. lengths[b] - 1 of slot slot_ids[b].
    -> [B, H, Dh]. Each token's keys are cut into parts as they would be for it alone, so its
    output is the one it gets alone."""
    B, H, d = q.shape
    Hkv = k.shape[2]
    lengths = np.asarray(lengths, np.int64)
    parts = np.maximum(1, np.minimum(-(-threads // Hkv) * 2, lengths // KEYS_PER_PART))
    P, rep = int(parts.max()), H // Hkv
    m = np.empty((B, Hkv, P, rep), np.float32)
    l = np.empty((B, Hkv, P, rep), np.float32)
    o = np.empty((B, Hkv, P, rep, d), np.float32)
    attend_parts(q, k, v, np.asarray(slot_ids, np.int64), lengths, parts, m, l, o)
    out = np.empty((B, H, d), np.float32)
    combine_parts(m, l, o, out)
    return out


@njit(cache=True, nogil=True, parallel=True, fastmath=ROW_SUM_MATH)
def attend_parts(q, k, v, slot_ids, lengths, parts, m, l, o):
    """q [B, H, Dh]; token b reads keys and values 0 .. lengths[b] - 1 of slot slot_ids[b] of
    k, v [n_slots, S, Hkv, Dh], in parts[b] parts; m, l [B, Hkv, P, rep] and
    o [B, Hkv, P, rep, Dh] get each part's max, sum of weights and weighted values (see the
    module docstring). An empty part (past parts[b], or more parts than keys) gets m = -inf,
    l = 0, o = 0."""
    B, Hkv, P, rep = m.shape
    d = q.shape[2]
    scale = np.float32(1.0 / np.sqrt(d))
    for job in prange(B * Hkv * P):
        b, kv, p = job // (Hkv * P), (job // P) % Hkv, job % P
        n, slot = lengths[b], slot_ids[b]
        per = -(-n // parts[b])
        s0 = p * per
        s1 = min(n, s0 + per) if p < parts[b] else s0
        h0 = kv * rep
        scores = np.empty((rep, max(s1 - s0, 0)), np.float32)
        maxima = np.full(rep, -np.inf, np.float32)    # taken as the scores are made: a
        for s in range(s0, s1):                       # loop of its own stays scalar
            for j in range(rep):
                acc = np.float32(0.0)
                for i in range(d):
                    acc += q[b, h0 + j, i] * as_f32(k[slot, s, kv, i])
                scores[j, s - s0] = acc * scale
                maxima[j] = max(maxima[j], scores[j, s - s0])
        rows = np.zeros((rep, d), np.float32)
        for j in range(rep):
            mx = maxima[j]
            total = np.float32(0.0)
            for s in range(s1 - s0):
                e = exp_of_nonpositive(scores[j, s] - mx)
                scores[j, s] = e
                total += e
            m[b, kv, p, j] = mx
            l[b, kv, p, j] = total
        for s in range(s0, s1):
            for j in range(rep):
                w = scores[j, s - s0]
                for i in range(d):
                    rows[j, i] += w * as_f32(v[slot, s, kv, i])
        for j in range(rep):
            for i in range(d):
                o[b, kv, p, j, i] = rows[j, i]


@njit(cache=True, nogil=True, fastmath=ROW_SUM_MATH)
def combine_parts(m, l, o, out):
    """out [B, H, Dh] from the parts' m, l [B, Hkv, P, rep] and o [B, Hkv, P, rep, Dh]:
    out_j = sum_p exp(m_p - M) o_p / sum_p exp(m_p - M) l_p, M the largest m_p (empty parts
    add nothing)."""
    B, Hkv, parts, rep = m.shape
    d = o.shape[4]
    for b in range(B):
        for kv in range(Hkv):
            for j in range(rep):
                mx = -np.inf
                for p in range(parts):
                    mx = max(mx, m[b, kv, p, j])
                total = np.float32(0.0)
                row = np.zeros(d, np.float32)
                for p in range(parts):
                    if l[b, kv, p, j] == 0.0:      # an empty part (m = -inf)
                        continue
                    w = exp_of_nonpositive(m[b, kv, p, j] - mx)
                    total += w * l[b, kv, p, j]
                    for i in range(d):
                        row[i] += w * o[b, kv, p, j, i]
                for i in range(d):
                    out[b, kv * rep + j, i] = row[i] / total


def attention_many_tokens(q, k_rows, v_rows, start: int, Hkv: int) -> np.ndarray:
    """q [T, H, Dh]; k_rows(kv), v_rows(kv): the cached keys and values of KV head kv as
    float32 [S, Dh], S >= start + T. Query t (position start + t) sees keys 0 .. start + t."""
    T, H, d = q.shape
    rep = H // Hkv
    scale = np.float32(1.0 / np.sqrt(d))
    out = np.empty((T, H, d), np.float32)
    piece = max(1, min(T, PIECE_ELEMENTS // (rep * (start + T))))
    for kv in range(Hkv):
        keys, values = k_rows(kv), v_rows(kv)                          # [S, Dh] each
        for t0 in range(0, T, piece):
            t1 = min(T, t0 + piece)
            n = start + t1                                             # keys the piece sees
            qs = q[t0:t1, kv * rep:(kv + 1) * rep].reshape(-1, d)      # [P * rep, Dh]
            scores = qs @ keys[:n].T                                   # [P * rep, n]
            causal_softmax_rows(scores, scale, rep, start + t0)
            rows = scores @ values[:n]                                 # [P * rep, Dh]
            out[t0:t1, kv * rep:(kv + 1) * rep] = rows.reshape(t1 - t0, rep, d)
    return out


@njit(cache=True, nogil=True, parallel=True, fastmath=ROW_SUM_MATH)
def causal_softmax_rows(scores, scale, rep, first):
    """scores [P * rep, n]: row i belongs to token i // rep, at position first + i // rep,
    which sees keys 0 .. first + i // rep. Each row becomes the softmax of scale * scores
    over those keys, exp(x - max) / sum, and 0 past them."""
    rows, n = scores.shape
    for i in prange(rows):
        seen = min(n, first + i // rep + 1)
        mx = -np.inf
        for s in range(seen):
            scores[i, s] *= scale
            mx = max(mx, scores[i, s])
        total = np.float32(0.0)
        for s in range(seen):
            e = exp_of_nonpositive(scores[i, s] - mx)
            scores[i, s] = e
            total += e
        for s in range(seen):
            scores[i, s] = scores[i, s] / total
        for s in range(seen, n):
            scores[i, s] = 0.0


@njit(cache=True, nogil=True, parallel=True)
def half_rows_to_float32(bits, kv, out):
    """out [S, Dh] = the float16 values of KV head kv of bits [S, Hkv, Dh] (uint16)."""
    for s in prange(out.shape[0]):
        for i in range(out.shape[1]):
            out[s, i] = as_f32(bits[s, kv, i])
