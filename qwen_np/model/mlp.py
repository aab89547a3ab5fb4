"""The mixture-of-experts MLP of Qwen2-MoE and Qwen3-MoE's sparse layers.

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
"""

from __future__ import annotations

import numpy as np

from qwen_np.model.config import QwenConfig


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


def moe_block(cfg: QwenConfig, moe, be, x, note, p: str, linear, mlp_block):
    """The sparse layer's MLP output [T, D] for x [T, D]; `moe` is the layer's MoEWeights,
    `linear` the product (be.linear, or be.linear_rows when decoding several sequences),
    `mlp_block` model.py's SwiGLU (each expert is one)."""
    logits = linear(x, moe.router)                                   # [T, E]
    note(p + "mlp.gate", logits)
    chosen, weight = route(be.to_numpy(logits), cfg.num_experts_per_tok, cfg.norm_topk_prob)
    out = be.zeros(x.shape)                                          # [T, D]
    if x.shape[0] == 1:    # one token (decoding): its k experts, no grouping to do
        for e, w in sorted(zip(chosen[0].tolist(), weight[0])):
            out += mlp_block(moe.experts[e], be, x, linear=linear) * be.asarray(w[None, None])
    else:
        for e in np.unique(chosen):                                  # increasing expert id
            tokens, slot = np.nonzero(chosen == e)                   # each token once
            y = mlp_block(moe.experts[e], be, x[tokens], linear=linear)  # [n_e, D]
            out[tokens] += y * be.asarray(weight[tokens, slot])[:, None]
    note(p + "mlp.experts", out)
    if moe.shared is not None:                                       # Qwen2-MoE
        shared = mlp_block(moe.shared, be, x, linear=linear)         # [T, D]
        g = be.to_numpy(linear(x, moe.shared_gate))                  # [T, 1]
        with np.errstate(over="ignore"):                             # exp(-g) = inf: gate 0
            gate = 1.0 / (1.0 + np.exp(-g))
        out = out + be.asarray(gate) * shared
        note(p + "mlp.shared_expert", shared)
    return out
