"""One dataclass describes every Qwen generation this package runs.

Qwen3 is written as the difference from Qwen2, as transformers' modular files do:
  qwen2: q/k/v projections carry a bias, o_proj does not; no q/k norms.
  qwen3: per-head RMSNorm on q and k (`q_norm`, `k_norm`, size head_dim) before RoPE;
         biases only if `attention_bias` (then on q, k, v *and* o, as in LlamaAttention).
Both: `head_dim` comes from the config when present, else hidden_size // num_attention_heads.

The mixture-of-experts models are Qwen2 and Qwen3 with a different MLP in some layers:
  qwen2_moe  Qwen2 attention (q/k/v bias per `qkv_bias`); in a sparse layer a router picks
             num_experts_per_tok of num_experts SwiGLU experts (moe_intermediate_size wide),
             plus one shared expert (shared_expert_intermediate_size wide) scaled by a
             sigmoid gate
  qwen3_moe  Qwen3 attention; the same router and experts, no shared expert
Layer i is sparse if i is not in `mlp_only_layers` and (i + 1) % decoder_sparse_step == 0
(transformers' Qwen2MoeDecoderLayer); the others are dense MLPs of intermediate_size.

YaRN (`rope_scaling` / `rope_parameters` with type "yarn") changes RoPE's frequencies and
scales cos and sin; rope.py has the math, `YarnScaling` its parameters.

The original Qwen (`qwen`, QWenLMHeadModel, Qwen's own modeling_qwen.py) is Qwen2 without GQA
plus four differences, each a field here:
  rotary_dim      only the first int(kv_channels * rotary_pct) dims of a head rotate
  dynamic_ntk     RoPE's base grows with the prompt length past seq_length (model/forward.py)
  logn_attn       queries past seq_length are scaled by log_{seq_length}(position + 1)
  kv_cache_quantization   keys and values pass through Qwen's uint8 quantizer (model/kv_cache.py)
Its config.json comes in two spellings: the current one (hidden_size, num_attention_heads,
num_hidden_layers, intermediate_size, max_position_embeddings) and the early one of August
2023 (n_embd, n_head, n_layer, ffn_hidden_size, padded_vocab_size, n_positions). Either way the
stored intermediate size is *twice* the MLP width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from qwen_np.errors import FormatError, UnsupportedModel, short_repr

SUPPORTED_MODEL_TYPES = ("qwen", "qwen2", "qwen3", "qwen2_moe", "qwen3_moe")
REQUIRED = object()   # ConfigReader: the key has no default


@dataclass(frozen=True)
class YarnScaling:
    """YaRN's parameters as transformers reads them (modeling_rope_utils._compute_yarn_parameters)."""
    factor: float                   # context extension: s
    original_max_position_embeddings: int   # the length the model was trained at
    beta_fast: float = 32.0         # rotations bounding the extrapolated (fast) dims
    beta_slow: float = 1.0          # rotations bounding the interpolated (slow) dims
    attention_factor: float = 1.0   # multiplies cos and sin (0.1 ln s + 1 unless given)
    truncate: bool = True           # floor/ceil the correction range


@dataclass(frozen=True)
class QwenConfig:
    model_type: str                 # "qwen" (the original), "qwen2" (Qwen2, Qwen2.5), "qwen3",
                                    # "qwen2_moe" or "qwen3_moe"
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
    rotary_dim: int | None = None   # dims of a head that rotate (None: all head_dim of them)
    seq_length: int | None = None   # Qwen v1: the training length, where NTK and logn begin
    dynamic_ntk: bool = False       # Qwen v1: RoPE base from the prompt length (model/forward.py)
    logn_attn: bool = False         # Qwen v1: queries past seq_length scaled by log_seq(p+1)
    kv_cache_quantization: bool = False   # Qwen v1's use_cache_quantization (model/kv_cache.py)
    yarn: YarnScaling | None = None # YaRN RoPE scaling (rope.py), or None
    # mixture of experts (qwen2_moe, qwen3_moe; zero / empty for dense models)
    num_experts: int = 0            # E: routed experts in a sparse layer
    num_experts_per_tok: int = 0    # k: experts each token is sent to
    moe_intermediate_size: int = 0  # Fe: an expert's SwiGLU width
    shared_expert_intermediate_size: int = 0   # Fs: Qwen2-MoE's shared expert (0: none)
    norm_topk_prob: bool = False    # renormalize the k chosen probabilities to sum to 1
    sparse_layers: tuple[int, ...] = ()        # the layers whose MLP is the expert mixture

    @property
    def rope_dim(self) -> int:
        return self.head_dim if self.rotary_dim is None else self.rotary_dim

    def is_sparse(self, layer: int) -> bool:
        """Whether layer `layer`'s MLP is the mixture of experts."""
        return layer in self.sparse_layers


def config_from_hf_dict(d: dict, source: str = "config.json") -> QwenConfig:
    """Build the config from a Hugging Face config.json dictionary.

    Accepts the spellings transformers has written over the years: `rope_theta` at the top
    level or inside `rope_parameters`; `head_dim` present or absent. Every value read is
    checked for its type and range (a FormatError names the key).
    """
    if not isinstance(d, dict):
        raise FormatError(f"{source}: not a JSON object")
    model_type = d.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedModel(
            f"{source}: model_type {short_repr(model_type)} is not supported "
            f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})")
    key = ConfigReader(d, source)
    if model_type == "qwen":
        return qwen_v1_config(d, key, source)

    hidden = key.integer("hidden_size")
    heads = key.integer("num_attention_heads")
    kv_heads = key.integer("num_key_value_heads", heads)
    if heads % kv_heads:
        raise FormatError(f"{source}: num_attention_heads {heads} is not a multiple of "
                          f"num_key_value_heads {kv_heads}")
    if d.get("head_dim") is None and hidden < heads:
        raise FormatError(f"{source}: hidden_size {hidden} is smaller than num_attention_heads "
                          f"{heads} (and there is no head_dim)")
    head_dim = key.integer("head_dim", hidden // heads)

    rope = {**key.object("rope_scaling"), **key.object("rope_parameters")}
    theta = ConfigReader(rope, source).number("rope_theta", None, positive=True)
    if theta is None:
        theta = key.number("rope_theta", 10000.0, positive=True)
    max_positions = key.integer("max_position_embeddings", 32768)
    yarn = yarn_from_dict(rope, key, max_positions, source)
    act = d.get("hidden_act", "silu")
    if act != "silu":     # the MLP is SwiGLU: another activation would be silently wrong
        raise UnsupportedModel(f"{source}: hidden_act {short_repr(act)} is not supported "
                               f"(only 'silu')")
    if key.flag("use_sliding_window", False):
        raise UnsupportedModel(f"{source}: use_sliding_window=true is not supported")
    if key.number("partial_rotary_factor", 1.0) != 1.0:
        raise UnsupportedModel(f"{source}: partial_rotary_factor != 1 is not supported")

    if model_type == "qwen2":
        qkv_bias, o_bias, qk_norm = True, False, False
    elif model_type == "qwen2_moe":
        qkv_bias, o_bias, qk_norm = key.flag("qkv_bias", True), False, False
    else:  # qwen3, qwen3_moe
        bias = key.flag("attention_bias", False)
        qkv_bias, o_bias, qk_norm = bias, bias, True
    layers = key.integer("num_hidden_layers")
    moe = moe_fields(d, key, model_type, layers, source) if model_type.endswith("_moe") else {}

    return QwenConfig(
        model_type=model_type,
        vocab_size=key.integer("vocab_size"),
        hidden_size=hidden,
        intermediate_size=key.integer("intermediate_size"),
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        rms_norm_eps=key.number("rms_norm_eps", 1e-6),
        rope_theta=theta,
        max_position_embeddings=max_positions,
        tie_word_embeddings=key.flag("tie_word_embeddings", False),
        qkv_bias=qkv_bias,
        o_bias=o_bias,
        qk_norm=qk_norm,
        bos_token_id=key.token_id("bos_token_id"),
        eos_token_ids=key.token_ids("eos_token_id"),
        yarn=yarn,
        **moe,
    )


def yarn_from_dict(rope: dict, key: "ConfigReader", max_positions: int,
                   source: str) -> YarnScaling | None:
    """YaRN's parameters from the merged rope_scaling / rope_parameters object, with
    transformers' defaults (standardize_rope_params, _compute_yarn_parameters):
    original_max_position_embeddings from the object, else the config's top level, else
    max_position_embeddings; factor, else max_position_embeddings / that; attention_factor,
    else from mscale / mscale_all_dim when both are given, else 0.1 ln(factor) + 1.
    Any rope type but "default" and "yarn" is refused by name."""
    rope_type = rope.get("rope_type") or rope.get("type") or "default"
    if rope_type == "default":
        return None
    if rope_type != "yarn":
        raise UnsupportedModel(f"{source}: rope type {short_repr(rope_type)} is not supported "
                               f"(supported: default, yarn)")
    r = ConfigReader(rope, source)
    original = r.integer("original_max_position_embeddings", None) \
        or key.integer("original_max_position_embeddings", max_positions)
    factor = r.number("factor", None, positive=True)
    if factor is None:
        factor = max_positions / original
    mscale, mscale_all = r.number("mscale", 0.0), r.number("mscale_all_dim", 0.0)

    def get_mscale(scale, m=1.0):
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention = r.number("attention_factor", None)
    if attention is None:
        attention = get_mscale(factor, mscale) / get_mscale(factor, mscale_all) \
            if mscale and mscale_all else get_mscale(factor)
    return YarnScaling(factor=factor, original_max_position_embeddings=original,
                       beta_fast=r.number("beta_fast", 0.0) or 32.0,
                       beta_slow=r.number("beta_slow", 0.0) or 1.0,
                       attention_factor=attention, truncate=r.flag("truncate", True))


def moe_fields(d: dict, key: "ConfigReader", model_type: str, layers: int, source: str) -> dict:
    """QwenConfig's mixture-of-experts fields from a qwen2_moe / qwen3_moe config.json, with
    transformers' defaults (configuration_qwen2_moe.py, configuration_qwen3_moe.py)."""
    v2 = model_type == "qwen2_moe"
    # Qwen's own configs say num_experts; transformers 5 writes Qwen3-MoE's as num_local_experts
    name = "num_local_experts" if d.get("num_experts") is None and \
        d.get("num_local_experts") is not None else "num_experts"
    experts = key.integer(name, 60 if v2 else 128)
    per_tok = key.integer("num_experts_per_tok", 4 if v2 else 8)
    if per_tok > experts:
        raise FormatError(f"{source}: num_experts_per_tok {per_tok} is larger than "
                          f"{name} {experts}")
    step = key.integer("decoder_sparse_step", 1)
    only = d.get("mlp_only_layers") or []
    if not isinstance(only, list) or any(isinstance(i, bool) or not isinstance(i, int)
                                         for i in only):
        raise FormatError(f"{source}: mlp_only_layers is {short_repr(only)}; expected a list "
                          f"of layer indices")
    return dict(
        num_experts=experts, num_experts_per_tok=per_tok,
        moe_intermediate_size=key.integer("moe_intermediate_size", 1408 if v2 else 768),
        shared_expert_intermediate_size=key.integer("shared_expert_intermediate_size", 5632)
        if v2 else 0,
        norm_topk_prob=key.flag("norm_topk_prob", False),
        sparse_layers=tuple(i for i in range(layers)
                            if i not in only and (i + 1) % step == 0))


# Qwen v1's config keys: the current name and the early (August 2023) one for each.
QWEN_V1_KEYS = {"hidden_size": "n_embd", "num_attention_heads": "n_head",
                "num_hidden_layers": "n_layer", "intermediate_size": "ffn_hidden_size",
                "max_position_embeddings": "n_positions"}


def qwen_v1_config(d: dict, key: "ConfigReader", source: str) -> QwenConfig:
    """The original Qwen's config.json, in either spelling (configuration_qwen.py of
    Qwen/Qwen-7B, and of the August 2023 Qwen-7B-Chat).

    Where a key is absent the defaults are those of the configuration_qwen.py of the same
    spelling: the early one leaves NTK and logn off and uses eps 1e-5. `seq_length` has no
    default in either (modeling_qwen.py reads it unconditionally), so it is required here too.
    """
    early = any(old in d for old in QWEN_V1_KEYS.values())

    def name(current: str) -> str:
        return QWEN_V1_KEYS[current] if early and current in QWEN_V1_KEYS else current

    hidden = key.integer(name("hidden_size"))
    heads = key.integer(name("num_attention_heads"))
    kv_channels = key.integer("kv_channels", 128)
    if kv_channels * heads != hidden:   # modeling_qwen.py splits heads of hidden // heads
        raise UnsupportedModel(f"{source}: kv_channels {kv_channels} x {name('num_attention_heads')} "
                               f"{heads} != {name('hidden_size')} {hidden} (modeling_qwen.py "
                               f"needs them equal)")
    ffn2 = key.integer(name("intermediate_size"), 22016)
    if ffn2 % 2:
        raise FormatError(f"{source}: {name('intermediate_size')} {ffn2} is odd; it is twice "
                          f"the MLP width")
    pct = key.number("rotary_pct", 1.0)
    if not 0 < pct <= 1:
        raise FormatError(f"{source}: rotary_pct is {short_repr(d.get('rotary_pct'))}; "
                          f"expected a number in (0, 1]")
    rotary_dim = kv_channels if pct == 1.0 else int(kv_channels * pct)
    dynamic_ntk = key.flag("use_dynamic_ntk", not early)
    if rotary_dim % 2 or rotary_dim < (4 if dynamic_ntk else 2):
        raise UnsupportedModel(f"{source}: rotary_pct {pct} rotates {rotary_dim} of "
                               f"{kv_channels} dims; RoPE needs an even number"
                               + (" of at least 4 with use_dynamic_ntk" if dynamic_ntk else ""))
    if not key.flag("no_bias", True):
        raise UnsupportedModel(f"{source}: no_bias=false (biases on attn.c_proj and the MLP) "
                               f"is not supported")
    vocab = key.integer("padded_vocab_size") if early and "padded_vocab_size" in d \
        else key.integer("vocab_size")
    return QwenConfig(
        model_type="qwen",
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=ffn2 // 2,
        num_hidden_layers=key.integer(name("num_hidden_layers")),
        num_attention_heads=heads,
        num_key_value_heads=heads,
        head_dim=kv_channels,
        rms_norm_eps=key.number("layer_norm_epsilon", 1e-5 if early else 1e-6),
        rope_theta=key.number("rotary_emb_base", 10000.0, positive=True),
        max_position_embeddings=key.integer(name("max_position_embeddings"),
                                            6144 if early else 8192),
        tie_word_embeddings=key.flag("tie_word_embeddings", False),
        qkv_bias=True,       # c_attn always has a bias
        o_bias=False,
        qk_norm=False,
        bos_token_id=key.token_id("bos_token_id"),
        eos_token_ids=key.token_ids("eos_token_id"),
        rotary_dim=None if rotary_dim == kv_channels else rotary_dim,
        seq_length=key.integer("seq_length"),
        dynamic_ntk=dynamic_ntk,
        logn_attn=key.flag("use_logn_attn", not early),
        kv_cache_quantization=key.flag("use_cache_quantization", False),
    )


MAX_DIMENSION = 2**31 - 1   # sizes and counts: positive and within int32, so products of a few
                            # of them stay within int64


class ConfigReader:
    """Typed access to a JSON object's keys: each getter returns the value of the type asked
    for, or the default when the key is absent or null, and raises a FormatError naming the
    file and the key for anything else (a string, an array, a bool where a number belongs,
    a non-finite float, a count of zero)."""

    def __init__(self, d: dict, source: str):
        self.d, self.source = d, source

    def _bad(self, name, value, want):
        return FormatError(f"{self.source}: {name} is {short_repr(value)}; expected {want}")

    def integer(self, name, default=REQUIRED, minimum=1, maximum=MAX_DIMENSION):
        v = self.d.get(name)
        if v is None:
            if default is REQUIRED:
                raise FormatError(f"{self.source}: missing required key {name!r}")
            return default
        if isinstance(v, float) and v.is_integer():
            v = int(v)                  # 896.0: some writers emit integral floats
        if isinstance(v, bool) or not isinstance(v, int) or not minimum <= v <= maximum:
            raise self._bad(name, v, f"an integer in {minimum}..{maximum}")
        return v

    def number(self, name, default=REQUIRED, positive=False):
        v = self.d.get(name)
        if v is None:
            if default is REQUIRED:
                raise FormatError(f"{self.source}: missing required key {name!r}")
            return default
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                or v < 0 or (positive and v == 0):
            raise self._bad(name, v, "a finite " + ("positive" if positive else "non-negative")
                            + " number")
        return float(v)

    def flag(self, name, default):
        v = self.d.get(name)
        if v is None:
            return default
        if not isinstance(v, bool):
            raise self._bad(name, v, "true or false")
        return v

    def object(self, name) -> dict:
        v = self.d.get(name)
        if v is None:
            return {}
        if not isinstance(v, dict):
            raise self._bad(name, v, "an object")
        return v

    def token_id(self, name):
        v = self.d.get(name)
        if v is None:
            return None
        return self.integer(name, minimum=0)

    def token_ids(self, name) -> tuple[int, ...]:
        """One id or a list of ids (the EOS ids); null means none."""
        v = self.d.get(name)
        if v is None:
            return ()
        items = v if isinstance(v, list) else [v]
        ids = []
        for i in items:
            if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i <= MAX_DIMENSION:
                raise self._bad(name, v, "a token id or a list of token ids")
            ids.append(i)
        return tuple(ids)


def config_to_hf_dict(cfg: QwenConfig) -> dict:
    """A Hugging Face config.json for this config (used when a GGUF model is written out as a
    Hugging Face folder); config_from_hf_dict reads it back to the same config."""
    if cfg.model_type not in ("qwen2", "qwen3"):
        raise UnsupportedModel(f"writing a {cfg.model_type!r} config.json is not supported "
                               f"(only qwen2 and qwen3)")
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
