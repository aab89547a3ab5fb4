"""The KV cache: keys (after RoPE) and values of every layer, preallocated once for a maximum
context, filled position by position as the prompt and then each new token go through.

Storage kinds (`kind`):
    "float32", "float64", "float16"   floats [max_tokens, Hkv, Dh] per layer (float16 halves
                                      the cache; attention then reads the rounded values)
    "int8"                            uint8 codes [max_tokens, Hkv, Dh] per layer, and for each
                                      position and head a scale and a zero [max_tokens, Hkv]
                                      (in the compute dtype):   x ~ scale * (code - zero)

Two quantizers fill an int8 cache; which one is fixed when the cache is made:
    per position (any model, `--kv-cache int8`): for each position and head, over its Dh values,
        scale = (max - min) / 255,  zero = -min / scale,  code = round(x / scale + zero)
        so the error of a value is at most scale / 2.
    Qwen v1's own (its config's use_cache_quantization; modeling_qwen.py, quantize_cache_v):
        for each head, over all T x Dh values of the chunk being written (a whole prompt
        shares one scale and zero; each decoded token has its own),
        scale = (max - min) / 255,  zero = 0 - min / scale,
        code = clamp(x / scale + zero, 0, 255) converted to uint8, which *truncates*.
    Where max == min every value is equal, and Qwen's scale of 0 would give NaN; scale 1 and
    zero -min are used instead, which store the value exactly.

The cache also remembers the dynamic-NTK alpha of the prefill that started it (model/forward.py).

Sequences decoded together (runtime/batch.py, apps/serve/) share one KVSlots: per layer one array
[n_slots, max_tokens, Hkv, Dh], where slot i is sequence i's own KVCache (views into those
arrays, with its own length). A sequence is prefilled through its slot's KVCache as through
any other; a decode step writes one position in each of the batch's slots, and attention
reads each slot up to its own length (model.decode_step).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qwen_np.model.config import QwenConfig
from qwen_np.errors import CacheFull, InputError
from qwen_np.tensors.int8_rows import Int8Rows

KV_KINDS = ("float32", "float16", "int8")   # what --kv-cache offers (float64 too, for oracles)


@dataclass
class KVCache:
    k: list              # per layer: [max_tokens, Hkv, Dh] floats, or uint8 codes for int8
    v: list
    length: int          # positions 0..length-1 are filled
    max_tokens: int
    kind: str            # "float32", "float64", "float16" or "int8"
    k_scale: list | None = None   # int8: per layer [max_tokens, Hkv], and the three below
    k_zero: list | None = None
    v_scale: list | None = None
    v_zero: list | None = None
    qwen_v1_quantizer: bool = False   # int8 written by Qwen v1's chunk quantizer
    ntk_alpha: float = 1.0            # dynamic NTK: chosen at the first prefill, then kept


def default_kv_kind(cfg: QwenConfig, be) -> str:
    """Qwen v1 checkpoints that ask for cache quantization get it; others the compute dtype."""
    return "int8" if cfg.kv_cache_quantization else str(be.dtype)


def check_kv_kind(kind: str) -> str:
    kind = str(kind)
    if kind not in KV_KINDS + ("float64",):
        raise InputError(f"KV cache kind {kind!r} is not supported "
                         f"(supported: {', '.join(KV_KINDS)}, float64)")
    return kind


def new_kv_cache(cfg: QwenConfig, max_tokens: int, be, kind: str | None = None,
                 n_slots: int | None = None) -> KVCache:
    """Storage for max_tokens positions, of `kind` (default: default_kv_kind). With n_slots,
    every array has a leading axis of n_slots (new_kv_slots)."""
    if kind is None:
        kind = default_kv_kind(cfg, be)
    elif kind != "int8":
        try:
            kind = np.dtype(kind).name      # np.float16 or "float16"
        except TypeError:
            raise InputError(f"KV cache kind {kind!r} is not supported") from None
    kind = check_kv_kind(kind)
    kept = getattr(be, "kv_kinds", None)
    if kept is not None and kind not in kept:
        raise InputError(f"backend {be.name!r} keeps a KV cache of {', '.join(kept)}, "
                         f"not {kind}")
    L = cfg.num_hidden_layers
    lead = () if n_slots is None else (n_slots,)
    shape = lead + (max_tokens, cfg.num_key_value_heads, cfg.head_dim)
    if kind != "int8":
        return KVCache(k=[be.zeros(shape, kind) for _ in range(L)],
                       v=[be.zeros(shape, kind) for _ in range(L)],
                       length=0, max_tokens=max_tokens, kind=kind)

    def per_head():
        return [be.zeros(shape[:-1]) for _ in range(L)]
    return KVCache(k=[be.zeros(shape, np.uint8) for _ in range(L)],
                   v=[be.zeros(shape, np.uint8) for _ in range(L)],
                   length=0, max_tokens=max_tokens, kind=kind,
                   k_scale=per_head(), k_zero=per_head(), v_scale=per_head(), v_zero=per_head(),
                   qwen_v1_quantizer=cfg.kv_cache_quantization)


@dataclass
class KVSlots:
    """A cache of n_slots sequences at their own lengths: k, v (and an int8 cache's scales
    and zeros) per layer [n_slots, max_tokens, ...]; caches[i] is slot i as a KVCache whose
    arrays are views of slot i's part."""
    k: list
    v: list
    k_scale: list | None
    k_zero: list | None
    v_scale: list | None
    v_zero: list | None
    caches: list          # [n_slots] KVCache

    @property
    def kind(self) -> str:
        return self.caches[0].kind


def new_kv_slots(cfg: QwenConfig, n_slots: int, max_tokens: int, be,
                 kind: str | None = None) -> KVSlots:
    """Storage for n_slots sequences of up to max_tokens positions each, of `kind` (default:
    default_kv_kind), all allocated now."""
    whole = new_kv_cache(cfg, max_tokens, be, kind, n_slots=n_slots)

    def slot(i):
        part = lambda arrays: None if arrays is None else [a[i] for a in arrays]  # noqa: E731
        return KVCache(k=part(whole.k), v=part(whole.v), length=0, max_tokens=max_tokens,
                       kind=whole.kind, k_scale=part(whole.k_scale), k_zero=part(whole.k_zero),
                       v_scale=part(whole.v_scale), v_zero=part(whole.v_zero),
                       qwen_v1_quantizer=whole.qwen_v1_quantizer)
    return KVSlots(whole.k, whole.v, whole.k_scale, whole.k_zero, whole.v_scale, whole.v_zero,
                   [slot(i) for i in range(n_slots)])


def write_kv_rows(slots: KVSlots, layer: int, slot_ids, positions, k, v) -> None:
    """Store k, v [B, Hkv, Dh], one new position for each of B slots: row b at position
    positions[b] of slot slot_ids[b] (an int8 cache: each row quantized as write_kv
    quantizes a one-token chunk)."""
    if slots.kind == "int8":
        for b, s in enumerate(slot_ids):
            write_kv(slots.caches[s], layer, int(positions[b]), k[b:b + 1], v[b:b + 1])
        return
    slots.k[layer][slot_ids, positions] = k
    slots.v[layer][slot_ids, positions] = v


def read_kv_slots(slots: KVSlots, layer: int):
    """Keys and values of every slot of `layer`, as stored: [n_slots, max_tokens, Hkv, Dh]
    float arrays, or Int8Rows of such arrays (be.attention_slots takes either)."""
    if slots.kind != "int8":
        return slots.k[layer], slots.v[layer]
    return (Int8Rows(slots.k[layer], slots.k_scale[layer], slots.k_zero[layer]),
            Int8Rows(slots.v[layer], slots.v_scale[layer], slots.v_zero[layer]))


def write_kv(cache: KVCache, layer: int, start: int, k, v) -> None:
    """Store k, v [T, Hkv, Dh] at positions start..start+T-1 of `layer`."""
    T = k.shape[0]
    if start + T > cache.max_tokens:
        raise CacheFull(f"KV cache holds {cache.max_tokens} positions; {start + T} were asked for")
    at = slice(start, start + T)
    if cache.kind != "int8":
        cache.k[layer][at] = k
        cache.v[layer][at] = v
        return
    quantize = quantize_qwen_v1_chunk if cache.qwen_v1_quantizer else quantize_per_position
    for x, codes, scale, zero in ((k, cache.k, cache.k_scale, cache.k_zero),
                                  (v, cache.v, cache.v_scale, cache.v_zero)):
        codes[layer][at], scale[layer][at], zero[layer][at] = quantize(np.asarray(x))


def read_kv(cache: KVCache, layer: int, stop: int):
    """Keys and values of positions 0..stop-1 of `layer`, as stored: [S, Hkv, Dh] float
    arrays, or Int8Rows for an int8 cache (be.attention takes either)."""
    if cache.kind != "int8":
        return cache.k[layer][:stop], cache.v[layer][:stop]
    return (Int8Rows(cache.k[layer][:stop], cache.k_scale[layer][:stop], cache.k_zero[layer][:stop]),
            Int8Rows(cache.v[layer][:stop], cache.v_scale[layer][:stop], cache.v_zero[layer][:stop]))


def quantize_per_position(x):
    """x [T, Hkv, Dh] -> (codes uint8 [T, Hkv, Dh], scale [T, Hkv], zero [T, Hkv]), rounding
    to the nearest of 256 levels between each position-and-head's min and max."""
    lo, hi = x.min(axis=-1), x.max(axis=-1)                          # [T, Hkv]
    scale = (hi - lo) / x.dtype.type(255)
    scale, zero = exact_if_constant(scale, lo)
    codes = np.rint(x / scale[..., None] + zero[..., None])
    return np.clip(codes, 0, 255).astype(np.uint8), scale, zero


def quantize_qwen_v1_chunk(x):
    """modeling_qwen.py's quantize_cache_v: x [T, Hkv, Dh] -> codes, and one scale and zero
    per head for the whole chunk (repeated over its T positions). The operations and their
    order are Qwen's: x / scale + zero, clamped, truncated to uint8."""
    lo, hi = x.min(axis=(0, 2)), x.max(axis=(0, 2))                  # [Hkv]
    scale = (hi - lo) / x.dtype.type(255)
    scale, zero = exact_if_constant(scale, lo)
    codes = np.clip(x / scale[None, :, None] + zero[None, :, None], 0, 255).astype(np.uint8)
    T = x.shape[0]
    return codes, np.broadcast_to(scale, (T, scale.shape[0])), np.broadcast_to(zero, (T, zero.shape[0]))


def exact_if_constant(scale, lo):
    """zero = 0 - lo / scale; where scale is 0 (all values equal) scale 1 and zero -lo, which
    store the value exactly."""
    flat = scale == 0
    scale = np.where(flat, scale.dtype.type(1), scale)
    return scale, scale.dtype.type(0) - lo / scale


def kv_cache_bytes(cfg: QwenConfig, max_tokens: int, kind: str, compute_itemsize: int = 4) -> int:
    """Bytes of a cache of `kind` for max_tokens positions (int8: codes plus four numbers per
    position and head: the scales and zeros of K and V)."""
    per_head = cfg.head_dim * np.dtype(kind).itemsize if kind != "int8" else \
        cfg.head_dim + 2 * compute_itemsize
    return 2 * cfg.num_hidden_layers * max_tokens * cfg.num_key_value_heads * per_head
