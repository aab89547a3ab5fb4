"""The KV cache: keys (after RoPE) and values of every layer, preallocated once for a maximum
context, filled position by position as the prompt and then each new token go through."""

from __future__ import annotations

from dataclasses import dataclass

from .config import QwenConfig


@dataclass
class KVCache:
    k: list       # per layer: [max_tokens, Hkv, Dh]
    v: list       # per layer: [max_tokens, Hkv, Dh]
    length: int   # positions 0..length-1 are filled
    max_tokens: int


def new_kv_cache(cfg: QwenConfig, max_tokens: int, be, dtype=None) -> KVCache:
    """Storage for max_tokens positions, in the compute dtype or `dtype` (e.g. float16, which
    halves the cache; attention then reads the rounded keys and values)."""
    shape = (max_tokens, cfg.num_key_value_heads, cfg.head_dim)
    return KVCache(k=[be.zeros(shape, dtype) for _ in range(cfg.num_hidden_layers)],
                   v=[be.zeros(shape, dtype) for _ in range(cfg.num_hidden_layers)],
                   length=0, max_tokens=max_tokens)


def kv_cache_bytes(cfg: QwenConfig, max_tokens: int, itemsize: int) -> int:
    return 2 * cfg.num_hidden_layers * max_tokens * cfg.num_key_value_heads * cfg.head_dim * itemsize
