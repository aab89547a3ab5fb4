"""GPTQ's calibration: every decoder layer quantized from the inputs it sees, in order, as
GPTQModel's looper runs it.

    h = embed(calibration samples)                       [T, D] per sample
    for each layer i:
        (the layers before i are already quantized, so h carries their errors)
        true-sequential, each stage from inputs computed with the stages before it quantized:
          input_layernorm(h)          -> q_proj, k_proj, v_proj   (one Hessian, shared)
          attention's output          -> o_proj
          post_attention_layernorm    -> gate_proj, up_proj       (one Hessian, shared)
          silu(gate) * up             -> down_proj
          (a sparse layer: each expert's gate/up from the tokens the router sends it, then its
          down from their activations; the shared expert from every token; an expert no
          calibration token reaches is rounded to nearest, and counted; the router stays float)
        h = layer i, quantized, over h

The layer is the model's own (model/forward.py:decoder_layer, on the NumPy reference in
float32); its inputs are read through the pass's trace under their Hugging Face names. A
quantized matrix goes back into the layer as GPTQ solved it (its codes on the exact scale, as
the reference does; the file's float16 scales give the same floats to within 2^-11), so later
stages and layers see the codes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qwen_np.errors import InputError, UnsupportedModel
from qwen_np.model.config import QwenConfig
from qwen_np.model.forward import PassOps, chunk_ops, decoder_layer, ntk_alpha
from qwen_np.model.mlp import mlp_block, route
from qwen_np.model.kv_cache import new_kv_cache
from qwen_np.model.tracing import Trace
from qwen_np.model.weights import LayerWeights, build_weights
from qwen_np.runtime.mixed_precision import width_of
from qwen_np.tensors.dense import as_compute
from qwen_np.tensors.gptq_solver import GPTQResult, HessianSum, prepare_hessian, quantize_gptq
from qwen_np.tensors.mapped import lookup_rows
from qwen_np.tensors.rtn import quantize_rtn

# (the traced input, the modules it feeds: Hugging Face name, LayerWeights field), in order
STAGES = (
    ("input_layernorm", (("self_attn.q_proj", "q"), ("self_attn.k_proj", "k"),
                         ("self_attn.v_proj", "v"))),
    ("self_attn.o_proj.input", (("self_attn.o_proj", "o"),)),
    ("post_attention_layernorm", (("mlp.gate_proj", "gate"), ("mlp.up_proj", "up"))),
    ("mlp.act", (("mlp.down_proj", "down"),)),
)


@dataclass(frozen=True)
class GPTQSettings:
    bits: int = 4
    group_size: int = 128
    sym: bool = True
    damp_percent: float = 0.01
    act_order: bool = False          # GPTQModel's desc_act
    static_groups: bool = False
    keep: tuple = ()                 # mixed precision: runtime/mixed_precision.py's rules

    def width(self, name: str) -> int:
        """The bits of weight `name` (16: left in float)."""
        return width_of(self.keep, name[: -len(".weight")], self.bits)


def calibration_samples(ids, n_samples: int, seq_len: int, source: str) -> list[np.ndarray]:
    """Up to n_samples windows of seq_len token ids, spread evenly over the whole calibration
    text (not overlapping; the first at its start, the last at its end): a few samples then
    see all of a mixed text (prose and code), as the reference quantizers' random windows over
    a dataset do, not only its opening pages."""
    if seq_len < 1 or n_samples < 1:
        raise InputError(f"--samples {n_samples}, --seq-len {seq_len}: both must be positive")
    ids = np.asarray(ids, np.int64)
    n = min(n_samples, len(ids) // seq_len)
    if n == 0:
        raise InputError(f"{source}: the calibration text is {len(ids)} tokens, shorter than "
                         f"one sample of --seq-len {seq_len}")
    last = len(ids) - seq_len                       # the last window's start
    starts = [k * last // (n - 1) for k in range(n)] if n > 1 else [0]
    return [ids[s:s + seq_len] for s in starts]


def calibrate_gptq(cfg: QwenConfig, tensors: dict, samples: list, settings: GPTQSettings,
                   source: str, progress=None, on_result=None):
    """GPTQ of every decoder projection of a float model (tensors under Hugging Face names),
    calibrated on the token-id samples. Returns ({weight name: GPTQResult}, the number of
    experts no calibration token reached, rounded to nearest instead); given
    `on_result(name, result)`, hands each over as it is made and keeps none (a result holds a
    byte per code). `progress(done, total)` is called after each matrix."""
    if "model.layers.0.self_attn.q_proj.weight" not in tensors:
        raise UnsupportedModel(f"{source}: GPTQ calibration reads Qwen2/Qwen3 tensor names "
                               f"(the original Qwen's fused c_attn is not supported); "
                               f"use --method rtn")
    from qwen_np.backends import get_backend
    be = get_backend("numpy", "float32")
    w = build_weights(cfg, tensors, be.dtype, source)
    hs = [be.embed(*lookup_rows(w.embed, ids)) for ids in samples]      # [T, D] each
    experts = cfg.num_experts + (cfg.shared_expert_intermediate_size > 0)
    total = sum(4 + 3 * experts if layer.moe is not None else 7 for layer in w.layers)
    done, results, unreached = 0, {}, 0

    def emit(name, r):
        nonlocal done
        if on_result is not None:
            on_result(name, r)
        else:
            results[name] = r
        done += 1
        if progress is not None:
            progress(done, total)

    for i, layer in enumerate(w.layers):
        dense = layer.moe is None
        for field in ("q", "k", "v", "o") + (("gate", "up", "down") if dense else ()):
            setattr(layer, field, as_compute(getattr(layer, field), "float32"))   # to quantize
        for traced, modules in STAGES if dense else STAGES[:2]:
            hessian = layer_input_hessian(cfg, be, i, layer, hs, traced)
            prep = prepare_hessian(hessian.hessian(), settings.damp_percent, settings.act_order)
            for module, field in modules:
                name = f"model.layers.{i}.{module}.weight"
                if settings.width(name) == 16:              # --keep 16: stays float
                    continue
                r = quantize_gptq(getattr(layer, field), prep, settings.width(name),
                                  settings.group_size, settings.sym,
                                  static_groups=settings.static_groups)
                emit(name, r)
                setattr(layer, field, r.solved())           # later stages see the codes
        if not dense:
            unreached += quantize_experts(cfg, be, i, layer, hs, settings, emit)
        hs = [run_layer(cfg, be, i, layer, h) for h in hs]               # the next layer's input
        w.layers[i] = None                       # its float32 matrices are not needed again
    return results, unreached


def quantize_experts(cfg: QwenConfig, be, i: int, layer: LayerWeights, hs: list,
                     settings: GPTQSettings, emit) -> int:
    """A sparse layer's experts, each from the tokens routed to it (the model's own `route`
    over the quantized attention's output); returns how many no token reached (RTN)."""
    x = np.concatenate(list(inputs_of(cfg, be, i, layer, hs, "post_attention_layernorm")))
    # [N, D] every token
    moe = layer.moe
    logits = be.linear(x, as_compute(moe.router, "float32"))             # [N, E]
    chosen, _ = route(np.asarray(logits), cfg.num_experts_per_tok, cfg.norm_topk_prob)
    members = [(f"experts.{e}", ex, np.nonzero((chosen == e).any(1))[0])
               for e, ex in enumerate(moe.experts)]
    if moe.shared is not None:
        members.append(("shared_expert", moe.shared, np.arange(len(x))))
    ops = PassOps(be, be.linear, None, None, None)
    unreached = 0
    for member, ex, tokens in members:
        prefix = f"model.layers.{i}.mlp.{member}."
        for field in ("gate", "up", "down"):
            setattr(ex, field, as_compute(getattr(ex, field), "float32"))
        if len(tokens) == 0:
            unreached += 1
            for field in ("gate", "up", "down"):
                name = f"{prefix}{field}_proj.weight"
                if settings.width(name) != 16:
                    emit(name, rtn_result(getattr(ex, field), settings, settings.width(name)))
            continue
        xe = x[tokens]                                                   # [n_e, D]
        acts = []
        stages = ((xe, ("gate", "up")), (None, ("down",)))
        for inputs, fields in stages:
            if inputs is None:           # down's input: the expert's activations, gate/up quantized
                mlp_block(ex, xe, ops, Trace(lambda n, a: acts.append(a) if n == "act" else None))
                inputs = acts[0]                                         # [n_e, Fe]
            hessian = HessianSum.zeros(inputs.shape[1])
            hessian.add(inputs)
            prep = prepare_hessian(hessian.hessian(), settings.damp_percent, settings.act_order)
            for field in fields:
                name = f"{prefix}{field}_proj.weight"
                if settings.width(name) == 16:
                    continue
                r = quantize_gptq(getattr(ex, field), prep, settings.width(name),
                                  settings.group_size, settings.sym,
                                  static_groups=settings.static_groups)
                emit(name, r)
                setattr(ex, field, r.solved())
    return unreached


def rtn_result(w, settings: GPTQSettings, bits: int) -> GPTQResult:
    """Round-to-nearest (tensors/rtn.py) as a GPTQResult: for an expert GPTQ has no inputs for."""
    q, zero, scale = quantize_rtn(w, bits, settings.group_size, settings.sym)
    n_in = w.shape[1]
    g = n_in if settings.group_size in (-1, 0) else settings.group_size
    return GPTQResult(q=q, zero=zero, scale=scale, g_idx=(np.arange(n_in) // g).astype(np.int32),
                      bits=bits, group_size=settings.group_size)


class InputSeen(Exception):
    """Raised by the recorder once the input a stage needs has gone by: the rest of the layer
    (the MLP, most of its cost) is not run for nothing."""


def layer_input_hessian(cfg: QwenConfig, be, i: int, layer: LayerWeights, hs: list,
                        traced: str) -> HessianSum:
    """X^T X of the input `traced` (a name inside the layer) over every sample."""
    acc = None
    for x in inputs_of(cfg, be, i, layer, hs, traced):
        x = x.reshape(x.shape[0], -1)                                    # [T, in]
        acc = acc or HessianSum.zeros(x.shape[1])
        acc.add(x)
    return acc


def inputs_of(cfg: QwenConfig, be, i: int, layer: LayerWeights, hs: list, traced: str):
    """Each sample's intermediate `traced` (a name inside layer i), the layer run only as far
    as it (its recorder stops the pass there)."""
    for h in hs:
        seen = []

        def record(name, x):
            if name == traced:
                seen.append(np.asarray(x))
                raise InputSeen
        try:
            run_layer(cfg, be, i, layer, h, record)
        except InputSeen:
            pass
        yield from seen


def run_layer(cfg: QwenConfig, be, i: int, layer: LayerWeights, h, record=None):
    """Layer i of the model over one sample's hidden states h [T, D] at positions 0..T-1 (a
    prefill of its own): its output [T, D]; `record(name, x)` sees the layer's intermediates
    under their names inside it ("input_layernorm", "self_attn.o_proj.input", ...)."""
    T = h.shape[0]
    cache = new_kv_cache(cfg, T, be)
    cache.ntk_alpha = ntk_alpha(cfg, T)
    trace = Trace(record) if record is not None else Trace(lambda name, x: None)
    return decoder_layer(cfg, i, layer, h, chunk_ops(cfg, be, cache, T), trace)
