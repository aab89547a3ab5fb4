"""The original Qwen's tensor names (modeling_qwen.py) -> the names the model reads.

    transformer.wte.weight                      -> model.embed_tokens.weight
    transformer.h.{i}.ln_1.weight               -> model.layers.{i}.input_layernorm.weight
    transformer.h.{i}.attn.c_attn.weight [3P, D] -> self_attn.q_proj / k_proj / v_proj .weight
    transformer.h.{i}.attn.c_attn.bias   [3P]    -> self_attn.q_proj / k_proj / v_proj .bias
    transformer.h.{i}.attn.c_proj.weight        -> self_attn.o_proj.weight
    transformer.h.{i}.ln_2.weight               -> post_attention_layernorm.weight
    transformer.h.{i}.mlp.w2.weight             -> mlp.gate_proj.weight   (w2 is the gate:
    transformer.h.{i}.mlp.w1.weight             -> mlp.up_proj.weight      c_proj(w1(x) * silu(w2(x))))
    transformer.h.{i}.mlp.c_proj.weight         -> mlp.down_proj.weight
    transformer.ln_f.weight                     -> model.norm.weight
    lm_head.weight                              -> lm_head.weight

The fused c_attn's output rows are [Q (P rows) ; K (P) ; V (P)] with P = hidden_size (Qwen
splits them with `split(hidden_size)`), so q, k and v are three row blocks of it: views for a
float matrix, row blocks of the codes and scales for a quantized one. Nothing is copied.
"""

from __future__ import annotations

from qwen_np.model.config import QwenConfig
from qwen_np.tensors.dense import BFloat16Array
from qwen_np.tensors.quantized import QuantizedTensor, row_block
from qwen_np.model.weights import check_tensors

RENAMED = {"ln_1.weight": "input_layernorm.weight", "attn.c_proj.weight": "self_attn.o_proj.weight",
           "ln_2.weight": "post_attention_layernorm.weight", "mlp.w2.weight": "mlp.gate_proj.weight",
           "mlp.w1.weight": "mlp.up_proj.weight", "mlp.c_proj.weight": "mlp.down_proj.weight"}
TENSORS_PER_LAYER = 8   # two norms, c_attn's weight and bias, c_proj, w1, w2, mlp.c_proj


def v1_expected_shapes(cfg: QwenConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor name a Qwen v1 checkpoint with this config holds, with its shape."""
    D, F, V = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    shapes = {"transformer.wte.weight": (V, D), "transformer.ln_f.weight": (D,)}
    if not cfg.tie_word_embeddings:
        shapes["lm_head.weight"] = (V, D)
    for i in range(cfg.num_hidden_layers):
        p = f"transformer.h.{i}."
        shapes.update({p + "ln_1.weight": (D,), p + "attn.c_attn.weight": (3 * D, D),
                       p + "attn.c_attn.bias": (3 * D,), p + "attn.c_proj.weight": (D, D),
                       p + "ln_2.weight": (D,), p + "mlp.w1.weight": (F, D),
                       p + "mlp.w2.weight": (F, D), p + "mlp.c_proj.weight": (D, F)})
    return shapes


def v1_to_model_names(cfg: QwenConfig, tensors: dict, source: str) -> dict:
    """The checkpoint's tensors under the names model/weights.py reads, c_attn split into q, k, v."""
    check_tensors(cfg, tensors, source, v1_expected_shapes(cfg))   # named as in the file
    D = cfg.hidden_size
    out = {"model.embed_tokens.weight": tensors["transformer.wte.weight"],
           "model.norm.weight": tensors["transformer.ln_f.weight"]}
    if not cfg.tie_word_embeddings:
        out["lm_head.weight"] = tensors["lm_head.weight"]
    for i in range(cfg.num_hidden_layers):
        p, q = f"transformer.h.{i}.", f"model.layers.{i}."
        for old, new in RENAMED.items():
            out[q + new] = tensors[p + old]
        for part in ("weight", "bias"):
            fused = tensors[p + "attn.c_attn." + part]
            for k, proj in enumerate(("q_proj", "k_proj", "v_proj")):
                out[f"{q}self_attn.{proj}.{part}"] = rows_of(fused, k * D, (k + 1) * D)
    return out


def rows_of(t, start: int, stop: int):
    """Rows start..stop-1 of a float matrix or vector, or of a quantized matrix, without a copy."""
    if isinstance(t, QuantizedTensor):
        return row_block(t, start, stop)
    if isinstance(t, BFloat16Array):
        return BFloat16Array(t.bits[start:stop])
    return t[start:stop]
