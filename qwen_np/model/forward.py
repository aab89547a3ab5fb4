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
token to k of E SwiGLU experts (moe.py). YaRN changes only RoPE's frequencies and multiplies
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
                   quantizer (cache.py) and attention reads them back dequantized
Its MLP is the same SwiGLU (w2 is the gate, w1 the up projection: io/qwen_v1.py).

Decoding several sequences together (decode_step) is the same pass over one new token of
each: the B tokens are the rows of every matrix product (be.linear_rows reads each weight
once for all of them, and computes each row as be.linear would alone), and each token's
RoPE position, cache slot and attention are its own sequence's. A sequence's tokens are
therefore those it gets when decoded alone.
"""

from __future__ import annotations

import math

import numpy as np

from qwen_np.model.kv_cache import (KVCache, KVSlots, default_kv_kind, new_kv_cache, read_kv, read_kv_slots,
                    write_kv, write_kv_rows)
from qwen_np.model.config import QwenConfig
from qwen_np.errors import CacheFull
from qwen_np.model.mlp import moe_block
from qwen_np.model.rope import config_inv_freq, cos_sin_factor
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
    its alpha, as one pass over the whole prompt would (generate.py prefills in chunks).
    `record(name, x)`, when given, is called with every intermediate under its Hugging Face
    module name (trace.py lists them): the oracle's trace.
    """
    note = record or ignore
    T = len(ids)
    if cache is None:
        cache = new_kv_cache(cfg, T, be, default_kv_kind(cfg, be))
    start = cache.length
    positions = np.arange(start, start + T)
    if start == 0:   # a prefill: dynamic NTK chooses its alpha here, for this pass and later ones
        cache.ntk_alpha = ntk_alpha(cfg, prompt_length or T)
    inv_freq = config_inv_freq(cfg, ntk_rope_base(cfg, cache.ntk_alpha))

    h = be.embed(*lookup_rows(w.embed, ids))                         # [T, D]
    note("model.embed_tokens", h)
    for i, layer in enumerate(w.layers):
        p = f"model.layers.{i}."
        x = be.rms_norm(h, layer.attn_norm, cfg.rms_norm_eps)
        note(p + "input_layernorm", x)
        h = h + attention_block(cfg, layer, be, x, positions, inv_freq, cache, i, note, p)
        note(p + "attn_residual", h)
        x = be.rms_norm(h, layer.mlp_norm, cfg.rms_norm_eps)
        note(p + "post_attention_layernorm", x)
        h = h + mlp_or_experts(cfg, layer, be, x, note, p)
        note(p.rstrip("."), h)                                       # the layer's output
    cache.length = start + T

    if last_only:
        h = h[-1:]
    h = be.rms_norm(h, w.norm, cfg.rms_norm_eps)
    note("model.norm", h)
    logits = be.linear(h, w.lm_head)                                 # [T, V]
    note("lm_head", logits)
    return logits


def ignore(name, x):
    """No trace: forward's `record` when none is asked for."""


def decode_step(cfg: QwenConfig, w: ModelWeights, be, tokens, slots: KVSlots, slot_ids):
    """Logits [B, V] of the next token of B sequences decoded together: tokens[b] follows
    the slot_ids[b] slot's cached positions (each slot at its own length, prefilled by
    `forward` through slots.caches[slot]). Each row equals forward's logits for that token
    alone."""
    caches = [slots.caches[s] for s in slot_ids]
    for c in caches:
        if c.length >= c.max_tokens:
            raise CacheFull(f"KV cache slot holds {c.max_tokens} positions; "
                            f"{c.length + 1} were asked for")
    positions = np.array([c.length for c in caches])                 # [B]
    # RoPE's frequencies: one table, or (the original Qwen's dynamic NTK, prompts of
    # different lengths) each sequence's own
    alphas = [c.ntk_alpha for c in caches]
    if len(set(alphas)) == 1:
        inv_freq = config_inv_freq(cfg, ntk_rope_base(cfg, alphas[0]))
    else:
        inv_freq = [config_inv_freq(cfg, ntk_rope_base(cfg, a)) for a in alphas]
    h = be.embed(*lookup_rows(w.embed, tokens))                      # [B, D]
    for i, layer in enumerate(w.layers):
        x = be.rms_norm(h, layer.attn_norm, cfg.rms_norm_eps)
        h = h + attention_rows(cfg, layer, be, x, positions, inv_freq, slots, slot_ids, i)
        x = be.rms_norm(h, layer.mlp_norm, cfg.rms_norm_eps)
        h = h + mlp_or_experts(cfg, layer, be, x, linear=be.linear_rows)
    for c in caches:
        c.length += 1
    h = be.rms_norm(h, w.norm, cfg.rms_norm_eps)
    return be.linear_rows(h, w.lm_head)                              # [B, V]


def attention_rows(cfg: QwenConfig, layer: LayerWeights, be, x, positions, inv_freq,
                   slots: KVSlots, slot_ids, layer_index: int):
    """attention_block for one new token of each of B sequences: x [B, D], positions [B];
    inv_freq one table for all, or a list of one per sequence."""
    B = x.shape[0]
    q, k, v = project_qkv(cfg, layer, be, x, be.linear_rows)       # [B, H or Hkv, Dh]
    s = cos_sin_factor(cfg)
    if isinstance(inv_freq, list):
        for b, f in enumerate(inv_freq):
            q[b:b + 1] = be.rope(q[b:b + 1], positions[b:b + 1], f, s)
            k[b:b + 1] = be.rope(k[b:b + 1], positions[b:b + 1], f, s)
    else:
        q, k = be.rope(q, positions, inv_freq, s), be.rope(k, positions, inv_freq, s)
    write_kv_rows(slots, layer_index, slot_ids, positions, k, v)
    k_all, v_all = read_kv_slots(slots, layer_index)                # [n_slots, S, Hkv, Dh]
    if cfg.logn_attn and int(positions.max()) + 1 > cfg.seq_length:
        q = q * be.asarray(logn_scale(positions, cfg.seq_length))[:, None, None]
    out = be.attention_slots(q, k_all, v_all, slot_ids, positions + 1)   # [B, H, Dh]
    return be.linear_rows(out.reshape(B, -1), layer.o, layer.o_bias)  # [B, D]


def project_qkv(cfg: QwenConfig, layer: LayerWeights, be, x, linear, note=ignore, a: str = ""):
    """q [T, H, Dh], k and v [T, Hkv, Dh] of x [T, D], before RoPE (Qwen3's q/k norms done)."""
    T = x.shape[0]
    H, Hkv, Dh = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    q = linear(x, layer.q, layer.q_bias)                             # [T, H*Dh]
    k = linear(x, layer.k, layer.k_bias)                             # [T, Hkv*Dh]
    v = linear(x, layer.v, layer.v_bias)                             # [T, Hkv*Dh]
    note(a + "q_proj", q), note(a + "k_proj", k), note(a + "v_proj", v)
    q, k, v = q.reshape(T, H, Dh), k.reshape(T, Hkv, Dh), v.reshape(T, Hkv, Dh)
    if cfg.qk_norm:  # Qwen3: RMSNorm over each head's Dh values, before RoPE
        q = be.rms_norm(q, layer.q_norm, cfg.rms_norm_eps)
        k = be.rms_norm(k, layer.k_norm, cfg.rms_norm_eps)
        note(a + "q_norm", q), note(a + "k_norm", k)
    return q, k, v


def attention_block(cfg: QwenConfig, layer: LayerWeights, be, x, positions, inv_freq,
                    cache: KVCache, layer_index: int, note=ignore, p: str = ""):
    T = x.shape[0]
    H, Dh = cfg.num_attention_heads, cfg.head_dim
    a = p + "self_attn."
    q, k, v = project_qkv(cfg, layer, be, x, be.linear, note, a)
    s = cos_sin_factor(cfg)                   # YaRN's attention factor, else 1
    q = be.rope(q, positions, inv_freq, s)    # the first 2 * len(inv_freq) dims rotate
    k = be.rope(k, positions, inv_freq, s)
    note(a + "q_rope", q), note(a + "k_rope", k)

    start = int(positions[0])
    write_kv(cache, layer_index, start, k, v)   # append this chunk, then attend over all of it
    k, v = read_kv(cache, layer_index, start + T)                   # [S, Hkv, Dh]
    if cfg.logn_attn and start + T > cfg.seq_length:
        q = q * be.asarray(logn_scale(positions, cfg.seq_length))[:, None, None]
    out = be.attention(q, k, v, start).reshape(T, H * Dh)           # [T, H*Dh]
    note(a + "o_proj.input", out)
    out = be.linear(out, layer.o, layer.o_bias)                      # [T, D]
    note(a + "o_proj", out)
    return out


def mlp_or_experts(cfg: QwenConfig, layer: LayerWeights, be, x, note=ignore, p: str = "",
                   linear=None):
    """The layer's MLP: the dense SwiGLU, or (a sparse layer of an MoE model) the mixture of
    experts (moe.py)."""
    if layer.moe is not None:
        return moe_block(cfg, layer.moe, be, x, note, p, linear or be.linear, mlp_block)
    return mlp_block(layer, be, x, note, p, linear)


def mlp_block(layer, be, x, note=ignore, p: str = "", linear=None):
    """SwiGLU: down(silu(gate(x)) * up(x)). `layer`: anything with gate, up and down (a
    layer's weights, or one expert's)."""
    linear = linear or be.linear
    gate = linear(x, layer.gate)                                     # [T, F]
    up = linear(x, layer.up)                                         # [T, F]
    note(p + "mlp.gate_proj", gate), note(p + "mlp.up_proj", up)
    act = be.silu_mul(gate, up)                                      # [T, F]
    note(p + "mlp.act", act)
    out = linear(act, layer.down)                                    # [T, D]
    note(p + "mlp.down_proj", out)
    return out


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


def logn_scale(positions, seq_length: int) -> np.ndarray:
    """Qwen v1's logn attention factor of each query position p: log(p + 1) / log(seq_length)
    where p + 1 > seq_length, else 1 (float64)."""
    p1 = np.asarray(positions, dtype=np.float64) + 1
    return np.where(p1 > seq_length, np.log(p1) / math.log(seq_length), 1.0)
