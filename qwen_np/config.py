"""One dataclass describes every Qwen generation this package runs.

Qwen3 is written as the difference from Qwen2, as transformers' modular files do:
  qwen2: q/k/v projections carry a bias, o_proj does not; no q/k norms.
  qwen3: per-head RMSNorm on q and k (`q_norm`, `k_norm`, size head_dim) before RoPE;
         biases only if `attention_bias` (then on q, k, v *and* o, as in LlamaAttention).
Both: `head_dim` comes from the config when present, else hidden_size // num_attention_heads.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace

from .errors import FormatError, UnsupportedModel

SUPPORTED_MODEL_TYPES = ("qwen2", "qwen3")


@dataclass(frozen=True)
class QwenConfig:
    model_type: str                 # "qwen2" (Qwen2, Qwen2.5) or "qwen3"
    vocab_size: int                 # V: rows of the embedding table
    hidden_size: int                # D
    intermediate_size: int          # F: SwiGLU width
    num_hidden_layers: int
    num_attention_heads: int        # H
    num_key_value_heads: int        # Hkv (grouped-query attention: H % Hkv == 0)
    head_dim: int                   # Dh
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    tie_word_embeddings: bool       # lm_head shares embed_tokens' matrix
    qkv_bias: bool                  # q_proj, k_proj, v_proj have a bias
    o_bias: bool                    # o_proj has a bias (Qwen3 with attention_bias only)
    qk_norm: bool                   # Qwen3's per-head RMSNorm on q and k
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = field(default_factory=tuple)


def config_from_hf_dict(d: dict, source: str = "config.json") -> QwenConfig:
    """Build the config from a Hugging Face config.json dictionary.

    Accepts the spellings transformers has written over the years: `rope_theta` at the top
    level or inside `rope_parameters`; `head_dim` present or absent.
    """
    model_type = d.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedModel(
            f"{source}: model_type {model_type!r} is not supported "
            f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})")

    def need(key):
        if key not in d:
            raise FormatError(f"{source}: missing required key {key!r}")
        return d[key]

    hidden = int(need("hidden_size"))
    heads = int(need("num_attention_heads"))
    kv_heads = int(d.get("num_key_value_heads") or heads)
    if heads % kv_heads:
        raise FormatError(f"{source}: num_attention_heads {heads} is not a multiple of "
                          f"num_key_value_heads {kv_heads}")
    head_dim = int(d.get("head_dim") or hidden // heads)

    rope = d.get("rope_parameters") or {}
    scaling = d.get("rope_scaling") or {}
    rope_type = rope.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if rope_type != "default":
        raise UnsupportedModel(f"{source}: rope type {rope_type!r} is not supported (only 'default')")
    theta = rope.get("rope_theta", d.get("rope_theta", 10000.0))
    if d.get("use_sliding_window"):
        raise UnsupportedModel(f"{source}: use_sliding_window=true is not supported")
    if float(d.get("partial_rotary_factor", 1.0)) != 1.0:
        raise UnsupportedModel(f"{source}: partial_rotary_factor != 1 is not supported")

    if model_type == "qwen2":
        qkv_bias, o_bias, qk_norm = True, False, False
    else:  # qwen3
        bias = bool(d.get("attention_bias", False))
        qkv_bias, o_bias, qk_norm = bias, bias, True

    eos = d.get("eos_token_id")
    eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (int(eos),))

    return QwenConfig(
        model_type=model_type,
        vocab_size=int(need("vocab_size")),
        hidden_size=hidden,
        intermediate_size=int(need("intermediate_size")),
        num_hidden_layers=int(need("num_hidden_layers")),
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
        rope_theta=float(theta),
        max_position_embeddings=int(d.get("max_position_embeddings", 32768)),
        tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
        qkv_bias=qkv_bias,
        o_bias=o_bias,
        qk_norm=qk_norm,
        bos_token_id=d.get("bos_token_id"),
        eos_token_ids=eos_ids,
    )


def read_hf_config(model_dir: str) -> QwenConfig:
    """config.json of a Hugging Face model folder (plus generation_config.json's EOS ids)."""
    path = os.path.join(model_dir, "config.json")
    if not os.path.isfile(path):
        raise FormatError(f"{model_dir}: no config.json (not a Hugging Face model folder)")
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FormatError(f"{path}: not valid JSON ({e})") from None
    cfg = config_from_hf_dict(d, source=path)

    gen_path = os.path.join(model_dir, "generation_config.json")
    if os.path.isfile(gen_path):
        with open(gen_path, encoding="utf-8") as f:
            eos = json.load(f).get("eos_token_id")
        extra = eos if isinstance(eos, list) else ([] if eos is None else [eos])
        ids = tuple(dict.fromkeys(list(cfg.eos_token_ids) + [int(i) for i in extra]))
        cfg = replace(cfg, eos_token_ids=ids)
    return cfg


def config_to_hf_dict(cfg: QwenConfig) -> dict:
    """A Hugging Face config.json for this config (used when a GGUF model is written out as a
    Hugging Face folder); config_from_hf_dict reads it back to the same config."""
    arch = {"qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}[cfg.model_type]
    d = {"architectures": [arch], "model_type": cfg.model_type, "vocab_size": cfg.vocab_size,
         "hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size,
         "num_hidden_layers": cfg.num_hidden_layers,
         "num_attention_heads": cfg.num_attention_heads,
         "num_key_value_heads": cfg.num_key_value_heads, "head_dim": cfg.head_dim,
         "rms_norm_eps": cfg.rms_norm_eps, "rope_theta": cfg.rope_theta,
         "max_position_embeddings": cfg.max_position_embeddings,
         "tie_word_embeddings": cfg.tie_word_embeddings, "hidden_act": "silu",
         "bos_token_id": cfg.bos_token_id,
         "eos_token_id": list(cfg.eos_token_ids) if len(cfg.eos_token_ids) != 1
         else cfg.eos_token_ids[0]}
    if cfg.model_type == "qwen3":
        d["attention_bias"] = cfg.qkv_bias
    return d
