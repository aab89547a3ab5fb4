"""The MLP of a layer: the SwiGLU of every dense layer, and the mixture of experts of
Qwen2-MoE's and Qwen3-MoE's sparse layers (each expert is a SwiGLU of its own).

SwiGLU (transformers' Qwen2MLP; the original Qwen's w2 is the gate, w1 up: formats/qwen_v1.py):

    x [T, D] -> down(silu(gate(x)) * up(x))                    gate, up [T, F]; out [T, D]

Mixture of experts:

    x [T, D]
     -> router logits = x @ router.T                   [T, E]
     -> p = softmax(logits)  (over all E experts, in the compute dtype)
     -> the k largest p of each token: chosen [T, k], weight [T, k]
        (norm_topk_prob: weight / sum(weight), so each token's k weights add up to 1)
     -> for each expert e that some token chose (in increasing e):
            y = down(silu(gate(x_e)) * up(x_e))         x_e [n_e, D]: the tokens that chose e
            out[tokens of e] += weight * y
     -> Qwen2-MoE: out += sigmoid(x @ shared_gate.T) * shared_expert(x)
    out [T, D]

Only the chosen experts' matrices are read, each once for all the tokens that chose it (a
prefill groups its tokens by expert; one decoded token reads k experts of E). The sum over a
token's experts runs in increasing expert order from zero, as transformers' index_add_ does
(Qwen2MoeExperts.forward), and the shared expert is added last.
Sources: transformers' modeling_qwen2_moe.py (Qwen2MoeTopKRouter, Qwen2MoeExperts,
Qwen2MoeSparseMoeBlock) and modular_qwen3_moe.py.

`ops` is the pass's ops (forward.PassOps): of them only the backend `be` and the product
`linear` (be.linear, or be.linear_rows when decoding several sequences) are used here.
`trace` is the layer's "mlp" scope (tracing.py).
"""

from __future__ import annotations

import numpy as np

from qwen_np.model.config import QwenConfig
from qwen_np.model.tracing import NO_TRACE


def mlp_or_experts(cfg: QwenConfig, layer, x, ops, trace):
    """The layer's MLP output [T, D] for x [T, D]: its SwiGLU, or (a sparse layer of an MoE
    model) its mixture of experts."""
    if layer.moe is not None:
        return moe_block(cfg, layer.moe, x, ops, trace)
    return mlp_block(layer, x, ops, trace)


def mlp_block(mlp, x, ops, trace=NO_TRACE):
    """SwiGLU: down(silu(gate(x)) * up(x)). `mlp`: anything with gate, up and down (a
    layer's weights, or one expert's)."""
    gate = ops.linear(x, mlp.gate)                                   # [T, F]
    up = ops.linear(x, mlp.up)                                       # [T, F]
    trace("gate_proj", gate), trace("up_proj", up)
    act = ops.be.silu_mul(gate, up)                                  # [T, F]
    trace("act", act)
    out = ops.linear(act, mlp.down)                                  # [T, D]
    trace("down_proj", out)
    return out


def moe_block(cfg: QwenConfig, moe, x, ops, trace=NO_TRACE):
    """The sparse layer's MLP output [T, D] for x [T, D]; `moe` is the layer's MoEWeights."""
    be, linear = ops.be, ops.linear
    logits = linear(x, moe.router)                                   # [T, E]
    trace("gate", logits)
    chosen, weight = route(be.to_numpy(logits), cfg.num_experts_per_tok, cfg.norm_topk_prob)
    out = be.zeros(x.shape)                                          # [T, D]
    if x.shape[0] == 1:    # one token (decoding): its k experts, no grouping to do
        for e, w in sorted(zip(chosen[0].tolist(), weight[0])):
            out += mlp_block(moe.experts[e], x, ops) * be.asarray(w[None, None])
    else:
        for e in np.unique(chosen):                                  # increasing expert id
            tokens, slot = np.nonzero(chosen == e)                   # each token once
            y = mlp_block(moe.experts[e], x[tokens], ops)            # [n_e, D]
            out[tokens] += y * be.asarray(weight[tokens, slot])[:, None]
    trace("experts", out)
    if moe.shared is not None:                                       # Qwen2-MoE
        shared = mlp_block(moe.shared, x, ops)                       # [T, D]
        g = be.to_numpy(linear(x, moe.shared_gate))                  # [T, 1]
        with np.errstate(over="ignore"):                             # exp(-g) = inf: gate 0
            gate = 1.0 / (1.0 + np.exp(-g))
        out = out + be.asarray(gate) * shared
        trace("shared_expert", shared)
    return out


def route(logits: np.ndarray, k: int, norm_topk_prob: bool) -> tuple[np.ndarray, np.ndarray]:
    """(chosen [T, k] expert ids, weight [T, k]) from router logits [T, E] (a NumPy array,
    computed in its dtype): the softmax's k largest probabilities of each token, largest
    first (the lower expert id first among equal ones)."""
    z = logits - logits.max(axis=-1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=-1, keepdims=True)                               # [T, E]
    chosen = np.argsort(-p, axis=-1, kind="stable")[:, :k]           # [T, k]
    weight = np.take_along_axis(p, chosen, axis=-1)                  # [T, k]
    if norm_topk_prob:
        weight = weight / weight.sum(axis=-1, keepdims=True)
    return chosen, weight
