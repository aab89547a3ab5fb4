"""The Qwen2 / Qwen2.5 / Qwen3 transformer, one forward pass, written against backend ops.

    ids [T]
     -> embed                                          h [T, D]
     -> for each layer:
          h = h + attention(rms_norm(h))               (q/k/v projections, RoPE, GQA, o_proj)
          h = h + mlp(rms_norm(h))                     (SwiGLU: down(silu(gate) * up))
     -> rms_norm -> lm_head                            logits [T, V]

Qwen3 differs only inside attention: a per-head RMSNorm on q and k before RoPE, and no biases.
Source: transformers' modeling_qwen2.py and modular_qwen3.py.

Qwen2-MoE and Qwen3-MoE differ only in the MLP of their sparse layers: a router sends each
token to k of E SwiGLU experts (mlp.py). YaRN changes only RoPE's frequencies and multiplies
its cos and sin by a factor (rope.py).

The original Qwen (Qwen's own modeling_qwen.py) differs from Qwen2 in four small, named ways,
all but the last in attention:
  partial rotary   only the first cfg.rope_dim dims of each head rotate (be.rope leaves the rest)
  dynamic NTK      RoPE's base is base * alpha^(d / (d - 2)), d = rope_dim, with alpha chosen
                   from the length L of a prefill (a forward pass on an empty cache):
                       alpha = max(2^ceil(log2(L / seq_length) + 1) - 1, 1)   (1, 3, 7, 15 ...)
                   and kept by the cache for every later pass (decoding, or more prompt chunks)
  logn attention   when the keys reach past seq_length, the query at position p is multiplied
                   by log(p + 1) / log(seq_length) if p + 1 > seq_length (else by 1)
  int8 KV cache    with use_cache_quantization, keys and values are stored through Qwen's
                   quantizer (kv_cache.py) and attention reads them back dequantized
Its MLP is the same SwiGLU (w2 is the gate, w1 the up projection: formats/qwen_v1.py).

A pass is one of two kinds, through the same layers (`transformer`, `decoder_layer`): `forward`
runs T tokens of one sequence (a prefill, a chunk of a long prompt, one decoded token) over its
KVCache; `decode_step` runs one new token of each of B sequences decoded together over KVSlots.
What the kinds do their own way is the pass's PassOps: the matrix product (for B sequences,
be.linear_rows reads each weight once for all B rows, and computes each row as be.linear would
alone), RoPE at the pass's positions, and where keys and values are stored and read (each
token's own sequence's cache). A sequence's tokens are therefore those it gets when decoded
alone. A traced pass hands every intermediate to a recorder under transformers' module names
(model/tracing.py; oracle/trace.py lists them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from qwen_np.errors import CacheFull
from qwen_np.model.config import QwenConfig
from qwen_np.model.kv_cache import (KVCache, KVSlots, default_kv_kind, new_kv_cache, read_kv,
                                    read_kv_slots, write_kv, write_kv_rows)
from qwen_np.model.mlp import mlp_or_experts
from qwen_np.model.rope import config_inv_freq, cos_sin_factor
from qwen_np.model.tracing import NO_TRACE, Trace
from qwen_np.model.weights import LayerWeights, ModelWeights
from qwen_np.tensors.mapped import lookup_rows


def forward(cfg: QwenConfig, w: ModelWeights, be, ids, cache: KVCache | None = None,
            last_only: bool = False, prompt_length: int | None = None, record=None):
    """Logits for `ids`, the tokens that follow the `cache.length` positions already cached.

    With no cache this is the full forward pass over `ids` from position 0 (through a cache
    of the config's default kind, made for this call). With a cache, the new keys/values are
    written into it and attention reads all cached positions. `last_only` computes the LM
    head for the last token alone (what generation needs). `prompt_length`: when this pass is
    the first chunk of a longer prompt, that prompt's length, from which dynamic NTK chooses
    its alpha, as one pass over the whole prompt would (runtime/generate.py prefills in chunks).
    `record(name, x)`, when given, is called with every intermediate under its Hugging Face
    module name (oracle/trace.py lists them): the oracle's trace.
    """
    T = len(ids)
    if cache is None:
        cache = new_kv_cache(cfg, T, be, default_kv_kind(cfg, be))
    if cache.length == 0:   # a prefill: dynamic NTK chooses its alpha here, for later passes too
        cache.ntk_alpha = ntk_alpha(cfg, prompt_length or T)
    ops = chunk_ops(cfg, be, cache, T)
    logits = transformer(cfg, w, ids, ops, Trace(record) if record else NO_TRACE, last_only)
    cache.length += T
    return logits


def decode_step(cfg: QwenConfig, w: ModelWeights, be, tokens, slots: KVSlots, slot_ids):
    """Logits [B, V] of the next tokens of sequences decoded together: tokens[b] follows
    the slot_ids[b] slot's cached positions (each slot at its own length, prefilled by
    `forward` through slots.caches[slot]). A slot named k times takes k consecutive tokens
    (a token and the drafts that follow it: runtime/batch.py's prompt lookup), in the order
    given. Each row equals forward's logits for that token decoded alone."""
    for s in set(slot_ids):
        c, n = slots.caches[s], list(slot_ids).count(s)
        if c.length + n > c.max_tokens:
            raise CacheFull(f"KV cache slot holds {c.max_tokens} positions; "
                            f"{c.length + n} were asked for")
    logits = transformer(cfg, w, tokens, rows_ops(cfg, be, slots, slot_ids), NO_TRACE)
    for s in slot_ids:
        slots.caches[s].length += 1
    return logits


def forward_as_decoded(cfg: QwenConfig, w: ModelWeights, be, ids, cache: KVCache):
    """Logits [T, V] of the T tokens `ids` that follow the cache's positions, row t bit for
    bit what `forward` gives for ids[t] decoded alone after ids[:t]: one pass checks the
    drafted tokens of speculative decoding (runtime/generate.py) as plain decoding would have
    computed them. The cache then holds all T positions; the caller cuts `cache.length` back
    to the tokens it keeps."""
    T = len(ids)
    if cache.length + T > cache.max_tokens:
        raise CacheFull(f"KV cache holds {cache.max_tokens} positions; "
                        f"{cache.length + T} were asked for")
    logits = transformer(cfg, w, ids, decoded_rows_ops(cfg, be, cache, T), NO_TRACE)
    cache.length += T
    return logits


def transformer(cfg: QwenConfig, w: ModelWeights, ids, ops: PassOps, trace, last_only=False):
    """Logits [T, V] of the T tokens `ids`, at the positions and over the cache of `ops`."""
    be, model = ops.be, trace.scope("model")
    h = be.embed(*lookup_rows(w.embed, ids))                         # [T, D]
    model("embed_tokens", h)
    for i, layer in enumerate(w.layers):
        name = f"layers.{i}"
        h = decoder_layer(cfg, i, layer, h, ops, model.scope(name))
        model(name, h)                                               # the layer's output
    if last_only:
        h = h[-1:]
    h = be.rms_norm(h, w.norm, cfg.rms_norm_eps)
    model("norm", h)
    logits = ops.linear(h, w.lm_head)                                # [T, V]
    trace("lm_head", logits)
    return logits


def decoder_layer(cfg: QwenConfig, i: int, layer: LayerWeights, h, ops: PassOps, trace):
    """Layer i's residual stream [T, D] after it, from h [T, D] before it."""
    be = ops.be
    x = be.rms_norm(h, layer.attn_norm, cfg.rms_norm_eps)
    trace("input_layernorm", x)
    h = h + attention(cfg, i, layer, x, ops, trace.scope("self_attn"))
    trace("attn_residual", h)
    x = be.rms_norm(h, layer.mlp_norm, cfg.rms_norm_eps)
    trace("post_attention_layernorm", x)
    return h + mlp_or_experts(cfg, layer, x, ops, trace.scope("mlp"))


def attention(cfg: QwenConfig, i: int, layer: LayerWeights, x, ops: PassOps, trace):
    """Layer i's grouped-query attention [T, D] of x [T, D] over the pass's cache."""
    T = x.shape[0]
    q, k, v = project_qkv(cfg, layer, x, ops, trace)                 # [T, H or Hkv, Dh]
    q, k = ops.rope(q, k)                     # the first cfg.rope_dim dims of each head rotate
    trace("q_rope", q), trace("k_rope", k)
    if ops.logn is not None:                  # the original Qwen's logn attention
        q = q * ops.logn
    out = ops.attend(i, q, k, v)                                     # [T, H, Dh]
    out = out.reshape(T, cfg.num_attention_heads * cfg.head_dim)     # [T, H*Dh]
    trace("o_proj.input", out)
    out = ops.linear(out, layer.o, layer.o_bias)                     # [T, D]
    trace("o_proj", out)
    return out


def project_qkv(cfg: QwenConfig, layer: LayerWeights, x, ops: PassOps, trace):
    """q [T, H, Dh], k and v [T, Hkv, Dh] of x [T, D], before RoPE (Qwen3's q/k norms done)."""
    T = x.shape[0]
    H, Hkv, Dh = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    q = ops.linear(x, layer.q, layer.q_bias)                         # [T, H*Dh]
    k = ops.linear(x, layer.k, layer.k_bias)                         # [T, Hkv*Dh]
    v = ops.linear(x, layer.v, layer.v_bias)                         # [T, Hkv*Dh]
    trace("q_proj", q), trace("k_proj", k), trace("v_proj", v)
    q, k, v = q.reshape(T, H, Dh), k.reshape(T, Hkv, Dh), v.reshape(T, Hkv, Dh)
    if cfg.qk_norm:  # Qwen3: RMSNorm over each head's Dh values, before RoPE
        q = ops.be.rms_norm(q, layer.q_norm, cfg.rms_norm_eps)
        k = ops.be.rms_norm(k, layer.k_norm, cfg.rms_norm_eps)
        trace("q_norm", q), trace("k_norm", k)
    return q, k, v


@dataclass(slots=True)
class PassOps:
    """What a pass does its own way: T tokens of one sequence (chunk_ops), the same as if
    decoded one at a time (decoded_rows_ops), or one token of each of B sequences (rows_ops;
    T = B)."""
    be: object            # the backend
    linear: Callable      # (x [T, in], w, bias=None) -> [T, out]: be.linear or be.linear_rows
    rope: Callable        # (q, k) -> (q, k) turned to the pass's positions
    attend: Callable      # (layer i, q [T, H, Dh], k, v [T, Hkv, Dh]) -> [T, H, Dh]: k and v
                          # stored in the pass's cache, then attention over what it holds
    logn: object          # the original Qwen's logn factor of each query [T, 1, 1], or None


def chunk_ops(cfg: QwenConfig, be, cache: KVCache, T: int) -> PassOps:
    """The ops of T tokens at positions cache.length, cache.length + 1, ... of one sequence,
    each attending over the cache up to itself."""
    start = cache.length
    positions = np.arange(start, start + T)                          # [T]
    inv_freq = config_inv_freq(cfg, ntk_rope_base(cfg, cache.ntk_alpha))

    def attend(i, q, k, v):
        write_kv(cache, i, start, k, v)       # append this chunk, then attend over all of it
        k, v = read_kv(cache, i, start + T)                          # [S, Hkv, Dh]
        return be.attention(q, k, v, start)                          # [T, H, Dh]
    return PassOps(be, be.linear, rope_at(cfg, be, positions, inv_freq), attend,
                   logn_factor(cfg, be, positions))


def decoded_rows_ops(cfg: QwenConfig, be, cache: KVCache, T: int) -> PassOps:
    """The ops of T tokens at positions cache.length, cache.length + 1, ... of one sequence,
    each computed as a one-token pass at its position computes it: the products row by row
    (be.linear_rows, each row as be.linear alone), and each token's keys stored, then its
    query attending over the cache up to itself, as chunk_ops does for T = 1."""
    start = cache.length
    positions = np.arange(start, start + T)                          # [T]
    inv_freq = config_inv_freq(cfg, ntk_rope_base(cfg, cache.ntk_alpha))

    def attend(i, q, k, v):
        out = be.zeros(q.shape)                                      # [T, H, Dh]
        for t in range(T):
            write_kv(cache, i, start + t, k[t:t + 1], v[t:t + 1])
            k_t, v_t = read_kv(cache, i, start + t + 1)              # [start + t + 1, Hkv, Dh]
            out[t:t + 1] = be.attention(q[t:t + 1], k_t, v_t, start + t)
        return out
    return PassOps(be, be.linear_rows, rope_at(cfg, be, positions, inv_freq), attend,
                   logn_factor(cfg, be, positions))


def rows_ops(cfg: QwenConfig, be, slots: KVSlots, slot_ids) -> PassOps:
    """The ops of B new tokens of sequences decoded together: row b is at the next position
    of slot slot_ids[b] (the one after, for the second row of the same slot, and so on) and
    attends over that slot up to itself, with its own sequence's RoPE frequencies."""
    caches = [slots.caches[s] for s in slot_ids]
    before = [list(slot_ids[:b]).count(s) for b, s in enumerate(slot_ids)]   # same slot's rows
    positions = np.array([c.length + n for c, n in zip(caches, before)])  # [B]
    lengths = positions + 1
    alphas = [c.ntk_alpha for c in caches]
    if len(set(alphas)) == 1:
        rope = rope_at(cfg, be, positions, config_inv_freq(cfg, ntk_rope_base(cfg, alphas[0])))
    else:   # the original Qwen's dynamic NTK, prompts of different lengths: row by row
        ropes = [rope_at(cfg, be, positions[b:b + 1], config_inv_freq(cfg, ntk_rope_base(cfg, a)))
                 for b, a in enumerate(alphas)]

        def rope(q, k):
            for b, rope_b in enumerate(ropes):
                q[b:b + 1], k[b:b + 1] = rope_b(q[b:b + 1], k[b:b + 1])
            return q, k

    def attend(i, q, k, v):
        write_kv_rows(slots, i, slot_ids, positions, k, v)
        k, v = read_kv_slots(slots, i)                               # [n_slots, S, Hkv, Dh]
        return be.attention_slots(q, k, v, slot_ids, lengths)        # [B, H, Dh]
    return PassOps(be, be.linear_rows, rope, attend, logn_factor(cfg, be, positions))


def rope_at(cfg: QwenConfig, be, positions, inv_freq):
    """RoPE of q and k at `positions` with frequencies inv_freq (only its first
    2 * len(inv_freq) dims of each head turn), cos and sin scaled by YaRN's factor."""
    scaling = cos_sin_factor(cfg)

    def rope(q, k):
        return be.rope(q, positions, inv_freq, scaling), be.rope(k, positions, inv_freq, scaling)
    return rope


def ntk_alpha(cfg: QwenConfig, length: int) -> float:
    """Qwen v1's dynamic-NTK alpha for a prefill of `length` tokens (modeling_qwen.py's
    get_ntk_alpha): 1 up to seq_length, then 3, 7, 15 ... as the length doubles."""
    if not cfg.dynamic_ntk:
        return 1.0
    alpha = 2 ** math.ceil(math.log(length / cfg.seq_length, 2) + 1) - 1
    return float(max(alpha, 1))


def ntk_rope_base(cfg: QwenConfig, alpha: float) -> float:
    """RoPE's base scaled for alpha: base * alpha^(d / (d - 2)), d the rotated dims."""
    if alpha == 1.0:
        return cfg.rope_theta
    d = cfg.rope_dim
    return cfg.rope_theta * alpha ** (d / (d - 2))


def logn_factor(cfg: QwenConfig, be, positions):
    """The queries' logn factors [T, 1, 1] when the keys reach past seq_length (Qwen's
    logn_attn), else None (all 1)."""
    if not cfg.logn_attn or not np.any(positions + 1 > cfg.seq_length):
        return None
    return be.asarray(logn_scale(positions, cfg.seq_length))[:, None, None]


def logn_scale(positions, seq_length: int) -> np.ndarray:
    """Qwen v1's logn attention factor of each query position p: log(p + 1) / log(seq_length)
    where p + 1 > seq_length, else 1 (float64)."""
    p1 = np.asarray(positions, dtype=np.float64) + 1
    return np.where(p1 > seq_length, np.log(p1) / math.log(seq_length), 1.0)
