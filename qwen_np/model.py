"""The Qwen2 / Qwen2.5 / Qwen3 transformer, one forward pass, written against backend ops.

    ids [T]
     -> embed                                          h [T, D]
     -> for each layer:
          h = h + attention(rms_norm(h))               (q/k/v projections, RoPE, GQA, o_proj)
          h = h + mlp(rms_norm(h))                     (SwiGLU: down(silu(gate) * up))
     -> rms_norm -> lm_head                            logits [T, V]

Qwen3 differs only inside attention: a per-head RMSNorm on q and k before RoPE, and no biases.
Source: transformers' modeling_qwen2.py and modular_qwen3.py.
"""

from __future__ import annotations

import numpy as np

from .cache import KVCache
from .config import QwenConfig
from .errors import CacheFull
from .weights import LayerWeights, ModelWeights


def forward(cfg: QwenConfig, w: ModelWeights, be, ids, cache: KVCache | None = None,
            last_only: bool = False):
    """Logits for `ids`, the tokens that follow the `cache.length` positions already cached.

    With no cache this is the plain full forward pass over `ids` from position 0. With a
    cache, the new keys/values are written into it and attention reads all cached positions.
    `last_only` computes the LM head for the last token alone (what generation needs).
    """
    start = 0 if cache is None else cache.length
    T = len(ids)
    positions = np.arange(start, start + T)
    inv_freq = rope_inv_freq(cfg.head_dim, cfg.rope_theta)

    h = be.embed(w.embed, ids)                                       # [T, D]
    for i, layer in enumerate(w.layers):
        x = be.rms_norm(h, layer.attn_norm, cfg.rms_norm_eps)
        h = h + attention_block(cfg, layer, be, x, positions, inv_freq, cache, i)
        x = be.rms_norm(h, layer.mlp_norm, cfg.rms_norm_eps)
        h = h + mlp_block(layer, be, x)
    if cache is not None:
        cache.length = start + T

    if last_only:
        h = h[-1:]
    h = be.rms_norm(h, w.norm, cfg.rms_norm_eps)
    return be.linear(h, w.lm_head)                                   # [T, V]


def attention_block(cfg: QwenConfig, layer: LayerWeights, be, x, positions, inv_freq,
                    cache: KVCache | None, layer_index: int):
    T = x.shape[0]
    H, Hkv, Dh = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    q = be.linear(x, layer.q, layer.q_bias).reshape(T, H, Dh)       # [T, H, Dh]
    k = be.linear(x, layer.k, layer.k_bias).reshape(T, Hkv, Dh)     # [T, Hkv, Dh]
    v = be.linear(x, layer.v, layer.v_bias).reshape(T, Hkv, Dh)     # [T, Hkv, Dh]
    if cfg.qk_norm:  # Qwen3: RMSNorm over each head's Dh values, before RoPE
        q = be.rms_norm(q, layer.q_norm, cfg.rms_norm_eps)
        k = be.rms_norm(k, layer.k_norm, cfg.rms_norm_eps)
    q = be.rope(q, positions, inv_freq)
    k = be.rope(k, positions, inv_freq)

    start = int(positions[0])
    if cache is not None:  # append this chunk, then attend over everything cached so far
        if start + T > cache.max_tokens:
            raise CacheFull(f"KV cache holds {cache.max_tokens} positions; "
                            f"{start + T} were asked for")
        cache.k[layer_index][start:start + T] = k
        cache.v[layer_index][start:start + T] = v
        k = cache.k[layer_index][:start + T]                        # [S, Hkv, Dh]
        v = cache.v[layer_index][:start + T]
    out = be.attention(q, k, v, start)                              # [T, H, Dh]
    return be.linear(out.reshape(T, H * Dh), layer.o, layer.o_bias) # [T, D]


def mlp_block(layer: LayerWeights, be, x):
    gate = be.linear(x, layer.gate)                                  # [T, F]
    up = be.linear(x, layer.up)                                      # [T, F]
    return be.linear(be.silu_mul(gate, up), layer.down)              # [T, D]


def rope_inv_freq(head_dim: int, theta: float) -> np.ndarray:
    """inv_freq[j] = 1 / theta^(2j / Dh), j < Dh/2, in float64."""
    return 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
