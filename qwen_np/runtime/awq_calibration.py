"""AWQ's calibration (Lin et al. 2023): every decoder layer's scales searched, folded, clipped
and quantized from the inputs it sees, layer by layer as AutoAWQ 0.2.9's
`AwqQuantizer.quantize` runs a Qwen2/Qwen3 model (awq/quantize/quantizer.py, awq/models/qwen2.py
and qwen3.py, awq/quantize/scale.py).

    h = embed(calibration samples)                               [T, D] per sample
    for each layer i:
      1. the float layer over h, once, keeping the inputs of its linears and its output:
           x_attn = input_layernorm(h)      [T, D]     q_proj, k_proj, v_proj read it
           x_o    = attention before o_proj [T, H*Dh]
           x_mlp  = post_attention_layernorm(h + attention)  [T, D]   gate_proj, up_proj
           x_down = silu(gate) * up         [T, F]
         and h = the layer's output, the next layer's input. AutoAWQ computes it here, from the
         float layer before anything is scaled or quantized, so no layer ever sees another's
         quantization: the whole calibration reads the float model's activations.
      2. one scale per input channel for each group of linears that share an input
         (tensors/awq_search.py), every search on the float layer:
           input_layernorm -> q, k, v        the block: the whole attention, o_proj float
           v_proj -> o_proj                  only where v and o have the same shape (as
                                             AutoAWQ: with grouped KV heads the rows of v
                                             are not o's inputs one for one)
           post_attention_layernorm -> gate, up   the block: the whole MLP, down float
           up_proj -> down_proj              the block: down alone
      3. the scales folded in, in that order, so the float layer computes the same function:
           the previous op's output divided by s (an RMSNorm's weight, or the rows and bias
           of v_proj / up_proj), the linears' input columns multiplied by s
      4. clipping (tensors/awq_clip.py), unless turned off: v, o, gate, up, down, each from its
         inputs divided by its scales (q and k are not clipped); the tokens are thinned to
         every (N // 512)-th before the division, which changes no value (AutoAWQ divides all,
         then thins)
      5. each linear quantized on AWQ's grid in float16 (tensors/awq_grid.py:quantize_awq)

The layer is the model's own (model/forward.py), on the NumPy reference in float32 (AutoAWQ
computes in the model's dtype: float32 when the model is loaded in float32). This is AutoAWQ as
it runs on a GPU. On the CPU, AutoAWQ 0.2.9's search keeps the block's weights for restoring
as `{k: v.cpu()}`, which there are the weights themselves, scaled in place by the first
exponent's scales: every later exponent is tried on those, and the layer keeps them (the bug
of mit-han-lab/llm-awq issue #163); tools/make_awq_fixture.py says how it was compared.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from qwen_np.errors import InputError, UnsupportedModel
from qwen_np.model.config import QwenConfig
from qwen_np.model.forward import PassOps, attention, chunk_ops, ntk_alpha
from qwen_np.model.kv_cache import new_kv_cache
from qwen_np.model.mlp import mlp_block
from qwen_np.model.tracing import NO_TRACE
from qwen_np.model.weights import ExpertWeights, LayerWeights, build_weights
from qwen_np.runtime.calibration import run_layer
from qwen_np.tensors.awq_clip import apply_clip, clip_tokens, search_clip
from qwen_np.tensors.awq_grid import quantize_awq
from qwen_np.tensors.awq_search import search_scale
from qwen_np.tensors.dense import as_compute
from qwen_np.tensors.mapped import lookup_rows

LINEARS = (("self_attn.q_proj", "q"), ("self_attn.k_proj", "k"), ("self_attn.v_proj", "v"),
           ("self_attn.o_proj", "o"), ("mlp.gate_proj", "gate"), ("mlp.up_proj", "up"),
           ("mlp.down_proj", "down"))
CLIPPED = ("v", "o", "gate", "up", "down")
# the traced inputs of step 1, under their names inside the layer
INPUTS = {"x_attn": "input_layernorm", "x_o": "self_attn.o_proj.input",
          "x_mlp": "post_attention_layernorm", "x_down": "mlp.act"}


@dataclass(frozen=True)
class AWQSettings:
    group_size: int = 128
    bits: int = 4                    # AWQ's GEMM checkpoints hold 4-bit codes only
    clip: bool = True                # AutoAWQ's apply_clip


@dataclass
class AWQCalibration:
    """What the calibration changed: the quantized linears (unless handed to on_result), the
    float tensors the scales were folded into (RMSNorm weights, v_proj's bias where v -> o is
    scaled) under their Hugging Face names, and each search, under the previous op's name
    ("model.layers.0.input_layernorm", ... ".self_attn.v_proj", ... ".mlp.up_proj"), and
    each clipping bound, under the module's name ("model.layers.0.mlp.down_proj")."""
    results: dict = field(default_factory=dict)      # {weight name: AWQResult}
    folded: dict = field(default_factory=dict)       # {tensor name: float32 array}
    searches: dict = field(default_factory=dict)     # {previous op: ScaleSearch}
    clips: dict = field(default_factory=dict)        # {module: float32 [out, G] bounds}


def check_awq_shapes(cfg: QwenConfig, tensors: dict, group_size: int, source: str) -> None:
    """AWQ needs Qwen2/Qwen3 dense layers, every input width a multiple of the group size and
    every output width a multiple of 8 (eight codes to an int32 word)."""
    if "model.layers.0.self_attn.q_proj.weight" not in tensors or cfg.num_experts:
        raise UnsupportedModel(f"{source}: AWQ calibration reads dense Qwen2/Qwen3 models "
                               f"(not the original Qwen's fused c_attn, not MoE); use "
                               f"--method gptq or rtn")
    if group_size < 1:
        raise InputError(f"--group-size {group_size}: AWQ needs a positive group size")
    for name, t in tensors.items():
        if any(name.endswith(f".{m}.weight") for m, _ in LINEARS):
            out, n_in = t.shape
            if n_in % group_size or out % 8:
                raise InputError(f"{source}: tensor {name} {list(t.shape)}: AWQ needs its "
                                 f"inputs a multiple of --group-size {group_size} and its "
                                 f"outputs a multiple of 8")


def calibrate_awq(cfg: QwenConfig, tensors: dict, samples: list, settings: AWQSettings,
                  source: str, progress=None, on_result=None) -> AWQCalibration:
    """AWQ of every decoder projection of a float model (tensors under Hugging Face names),
    calibrated on the token-id samples. Given `on_result(name, result)`, each AWQResult is
    handed over as it is made and none is kept; `progress(done, total)` after each matrix."""
    check_awq_shapes(cfg, tensors, settings.group_size, source)
    from qwen_np.backends import get_backend
    be = get_backend("numpy", "float32")
    w = build_weights(cfg, tensors, be.dtype, source)
    hs = [be.embed(*lookup_rows(w.embed, ids)) for ids in samples]      # [T, D] each
    calib = AWQCalibration()
    total, done = len(LINEARS) * cfg.num_hidden_layers, 0
    for i, layer in enumerate(w.layers):
        for _, f in LINEARS:
            setattr(layer, f, as_compute(getattr(layer, f), "float32"))
        # 1. the float layer's inputs to its linears, and its output
        seen = {k: [] for k in INPUTS}
        record = {traced: seen[k].append for k, traced in INPUTS.items()}
        outputs = [run_layer(cfg, be, i, layer, h,
                             lambda n, x: record[n](np.asarray(x)) if n in record else None)
                   for h in hs]
        x_o = [x.reshape(x.shape[0], -1) for x in seen["x_o"]]          # [T, H*Dh]
        # 2. the searches, all on the float layer
        groups = search_layer_scales(cfg, be, i, layer, seen["x_attn"], x_o, seen["x_mlp"],
                                     seen["x_down"], settings.group_size)
        # 3. fold
        prefix = f"model.layers.{i}."
        seen_by = {"o": (x_o, None)}          # each linear's inputs and the scales they get
        for prev, fields, xs, search in groups:
            calib.searches[prefix + prev] = search
            fold_scales(layer, prev, fields, search.scales)
            seen_by.update((f, (xs, search.scales)) for f in fields)
        calib.folded[prefix + "input_layernorm.weight"] = layer.attn_norm
        calib.folded[prefix + "post_attention_layernorm.weight"] = layer.mlp_norm
        if layer.v_bias is not None and any(g[0] == "self_attn.v_proj" for g in groups):
            calib.folded[prefix + "self_attn.v_proj.bias"] = layer.v_bias
        for module, f in LINEARS:
            weight = getattr(layer, f)
            if settings.clip and f in CLIPPED:                           # 4. clip
                xs, s = seen_by[f]
                x = clip_tokens(np.concatenate(xs).reshape(-1, weight.shape[1]))   # [n, in]
                if s is not None:
                    x = x / s                              # what the scaled linear sees
                bound = search_clip(weight, x, settings.group_size)      # [out, G]
                calib.clips[prefix + module] = bound
                weight = apply_clip(weight, bound, settings.group_size)
            r = quantize_awq(weight, settings.group_size, settings.bits)  # 5. quantize
            if on_result is not None:
                on_result(prefix + module + ".weight", r)
            else:
                calib.results[prefix + module + ".weight"] = r
            done += 1
            if progress is not None:
                progress(done, total)
        hs = outputs                                                     # the float layer's
        w.layers[i] = None                       # its float32 matrices are not needed again
    return calib


def search_layer_scales(cfg: QwenConfig, be, i: int, layer: LayerWeights, x_attn, x_o, x_mlp,
                        x_down, group_size: int) -> list:
    """Step 2: [(previous op, the fields it scales, their inputs, ScaleSearch)] in AutoAWQ's
    order (qwen2.py's get_layers_for_scaling)."""
    groups = []

    def attention_block(ws):                  # q, k, v replaced; RoPE, causal attention, o_proj
        variant = replace(layer, q=ws[0], k=ws[1], v=ws[2])
        return [attention_output(cfg, be, i, variant, x) for x in x_attn]
    qkv = [layer.q, layer.k, layer.v]
    groups.append(("input_layernorm", ("q", "k", "v"), x_attn,
                   search_scale(x_attn, qkv, attention_block, group_size)))
    if layer.v.shape == layer.o.shape:        # v's rows are o's inputs one for one
        groups.append(("self_attn.v_proj", ("o",), x_o,
                       search_scale(x_o, [layer.o],
                                    lambda ws: [be.linear(x, ws[0], layer.o_bias) for x in x_o],
                                    group_size)))

    def mlp(ws):                              # gate, up replaced; down float
        expert = ExpertWeights(gate=ws[0], up=ws[1], down=layer.down)
        return [mlp_block(expert, x, linear_ops(be)) for x in x_mlp]
    groups.append(("post_attention_layernorm", ("gate", "up"), x_mlp,
                   search_scale(x_mlp, [layer.gate, layer.up], mlp, group_size)))
    groups.append(("mlp.up_proj", ("down",), x_down,
                   search_scale(x_down, [layer.down],
                                lambda ws: [be.linear(x, ws[0]) for x in x_down], group_size)))
    return groups


def attention_output(cfg: QwenConfig, be, i: int, layer: LayerWeights, x):
    """Layer i's attention block (AutoAWQ's module2inspect, self_attn) over one sample's
    normalised input x [T, D] at positions 0..T-1: [T, D], o_proj included."""
    T = x.shape[0]
    cache = new_kv_cache(cfg, T, be)
    cache.ntk_alpha = ntk_alpha(cfg, T)
    return attention(cfg, i, layer, x, chunk_ops(cfg, be, cache, T), NO_TRACE)


def linear_ops(be) -> PassOps:
    """The ops of a block without attention (the MLP): only `linear` is used."""
    return PassOps(be, be.linear, None, None, None)


def fold_scales(layer: LayerWeights, prev: str, fields, s: np.ndarray) -> None:
    """Step 3: the previous op's output / s, the linears' input columns * s (AutoAWQ's
    scale_ln_fcs and scale_fc_fc)."""
    if prev == "input_layernorm":
        layer.attn_norm = layer.attn_norm / s
    elif prev == "post_attention_layernorm":
        layer.mlp_norm = layer.mlp_norm / s
    elif prev == "self_attn.v_proj":
        layer.v = layer.v / s[:, None]
        if layer.v_bias is not None:
            layer.v_bias = layer.v_bias / s
    elif prev == "mlp.up_proj":
        layer.up = layer.up / s[:, None]
    for f in fields:
        setattr(layer, f, getattr(layer, f) * s)
