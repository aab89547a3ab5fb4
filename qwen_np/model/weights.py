"""Named tensors -> the weights of one model, checked against its config.

The names are Hugging Face's (other formats rename to these first). Matrices are [out, in] as
in `nn.Linear` and stay as the reader gave them (memory-mapped, file dtype); the small vectors
(norm weights, biases) are converted to the compute dtype here, once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from qwen_np.model.config import QwenConfig
from qwen_np.tensors.dense import as_compute
from qwen_np.errors import FormatError

# Buffers some older checkpoints carry; they are recomputed, never read.
IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)


@dataclass
class ExpertWeights:
    """One SwiGLU MLP: a routed expert, or Qwen2-MoE's shared expert."""
    gate: object                     # [Fe, D]
    up: object                       # [Fe, D]
    down: object                     # [D, Fe]


@dataclass
class MoEWeights:
    """A sparse layer's mixture of experts (model/mlp.py)."""
    router: object                   # [E, D]     mlp.gate: one logit per expert
    experts: list[ExpertWeights]     # E of them, each read only for the tokens routed to it
    shared: ExpertWeights | None     # Qwen2-MoE: the expert every token goes through
    shared_gate: object | None       # [1, D]     its sigmoid gate


@dataclass
class LayerWeights:
    attn_norm: np.ndarray            # [D]
    q: object                        # [H*Dh, D]
    k: object                        # [Hkv*Dh, D]
    v: object                        # [Hkv*Dh, D]
    o: object                        # [D, H*Dh]
    q_bias: np.ndarray | None        # [H*Dh]    (Qwen2)
    k_bias: np.ndarray | None        # [Hkv*Dh]
    v_bias: np.ndarray | None        # [Hkv*Dh]
    o_bias: np.ndarray | None        # [D]       (Qwen3 with attention_bias)
    q_norm: np.ndarray | None        # [Dh]      (Qwen3)
    k_norm: np.ndarray | None        # [Dh]
    mlp_norm: np.ndarray             # [D]
    gate: object                     # [F, D]     (None in a sparse layer)
    up: object                       # [F, D]
    down: object                     # [D, F]
    moe: MoEWeights | None = None    # a sparse layer's experts (MoE models)


@dataclass
class ModelWeights:
    embed: object                    # [V, D]
    layers: list[LayerWeights]
    norm: np.ndarray                 # [D]
    lm_head: object                  # [V, D]; the same object as `embed` when tied


def expected_shapes(cfg: QwenConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor name the config implies, with its [out, in] shape."""
    D, F, V, Dh = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.head_dim
    q_out, kv_out = cfg.num_attention_heads * Dh, cfg.num_key_value_heads * Dh
    shapes = {"model.embed_tokens.weight": (V, D), "model.norm.weight": (D,)}
    if not cfg.tie_word_embeddings:
        shapes["lm_head.weight"] = (V, D)
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (D,),
            p + "self_attn.q_proj.weight": (q_out, D),
            p + "self_attn.k_proj.weight": (kv_out, D),
            p + "self_attn.v_proj.weight": (kv_out, D),
            p + "self_attn.o_proj.weight": (D, q_out),
            p + "post_attention_layernorm.weight": (D,),
        })
        shapes.update(moe_shapes(cfg, i) if cfg.is_sparse(i) else swiglu_shapes(p + "mlp.", F, D))
        if cfg.qkv_bias:
            shapes.update({p + "self_attn.q_proj.bias": (q_out,),
                           p + "self_attn.k_proj.bias": (kv_out,),
                           p + "self_attn.v_proj.bias": (kv_out,)})
        if cfg.o_bias:
            shapes[p + "self_attn.o_proj.bias"] = (D,)
        if cfg.qk_norm:
            shapes.update({p + "self_attn.q_norm.weight": (Dh,),
                           p + "self_attn.k_norm.weight": (Dh,)})
    return shapes


def swiglu_shapes(prefix: str, F: int, D: int) -> dict[str, tuple[int, int]]:
    """gate_proj, up_proj and down_proj of a SwiGLU MLP F wide, under `prefix`."""
    return {prefix + "gate_proj.weight": (F, D), prefix + "up_proj.weight": (F, D),
            prefix + "down_proj.weight": (D, F)}


def moe_shapes(cfg: QwenConfig, layer: int) -> dict[str, tuple[int, ...]]:
    """A sparse layer's tensors: the router, each expert, and Qwen2-MoE's shared expert."""
    D, p = cfg.hidden_size, f"model.layers.{layer}.mlp."
    shapes = {p + "gate.weight": (cfg.num_experts, D)}
    for e in range(cfg.num_experts):
        shapes.update(swiglu_shapes(f"{p}experts.{e}.", cfg.moe_intermediate_size, D))
    if cfg.shared_expert_intermediate_size:
        shapes.update(swiglu_shapes(p + "shared_expert.", cfg.shared_expert_intermediate_size, D))
        shapes[p + "shared_expert_gate.weight"] = (1, D)
    return shapes


TENSORS_PER_LAYER = 9   # two norms and seven matrices, before any bias or q/k norm


def check_layer_count(cfg: QwenConfig, n_tensors: int, source: str,
                      per_layer: int | None = None, experts_one_by_one: bool = True) -> None:
    """A layer count the files cannot hold (`per_layer` tensors a layer, TENSORS_PER_LAYER
    unless given; and, with experts_one_by_one, three more for each expert of each sparse
    layer) is refused before any per-layer list is built (a corrupted num_hidden_layers or
    num_experts of 10^9 would otherwise build names until memory ran out). GGUF files hold
    a sparse layer's experts in three stacked tensors, checked against expert_count there."""
    need = cfg.num_hidden_layers * (per_layer or TENSORS_PER_LAYER)
    if experts_one_by_one:
        need += len(cfg.sparse_layers) * 3 * cfg.num_experts
    if need > n_tensors:
        what = f"{cfg.num_hidden_layers} layers" + (
            f" with {cfg.num_experts} experts in each of {len(cfg.sparse_layers)}"
            if cfg.num_experts and experts_one_by_one else "")
        raise FormatError(f"{source}: {what} need at least {need} tensors; the files hold "
                          f"{n_tensors}")


def check_tensors(cfg: QwenConfig, tensors: dict, source: str, shapes: dict | None = None) -> None:
    """Missing, extra or mis-shaped tensors are errors that name the tensor; `shapes` are the
    names and shapes expected (default: expected_shapes(cfg), the names the model reads)."""
    shapes = expected_shapes(cfg) if shapes is None else shapes
    check_expert_count(cfg, tensors, source)
    for name, shape in shapes.items():
        if name not in tensors:
            raise FormatError(f"{source}: missing tensor {name}")
        if tuple(tensors[name].shape) != shape:
            raise FormatError(f"{source}: tensor {name} has shape {list(tensors[name].shape)}, "
                              f"the config implies {list(shape)}")
    for name in tensors:
        if name in shapes or name.endswith(IGNORED_SUFFIXES):
            continue
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue  # tied: transformers ignores a stored copy too, and so do we
        raise FormatError(f"{source}: unexpected tensor {name} (not used by a "
                          f"{cfg.model_type} model with this config)")


EXPERT = re.compile(r"model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.")


def check_expert_count(cfg: QwenConfig, tensors: dict, source: str) -> None:
    """Each sparse layer holds exactly the config's num_experts experts (numbered from 0),
    and no other layer holds any: a disagreement is named as such, not as a missing tensor."""
    held: dict[int, set[int]] = {}
    for name in tensors:
        m = EXPERT.match(name)
        if m:
            held.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    for layer, experts in sorted(held.items()):
        if not cfg.is_sparse(layer):
            raise FormatError(f"{source}: layer {layer} holds experts but the config makes it "
                              f"a dense layer (num_experts {cfg.num_experts}, "
                              f"sparse layers {list(cfg.sparse_layers)})")
        if experts != set(range(cfg.num_experts)):
            raise FormatError(f"{source}: layer {layer} holds {len(experts)} experts "
                              f"(numbered {min(experts)}..{max(experts)}); the config says "
                              f"num_experts {cfg.num_experts}")


def prepare_tensors(tensors: dict, prepare) -> None:
    """Replace each tensor by prepare(tensor) (a backend's own form of it), in place and one at
    a time, so that the loader's form of each can be freed as soon as it is replaced. A tensor
    under two names is prepared once: prepare may re-lay its arrays in their own memory."""
    names_of = {}
    for name, t in tensors.items():
        names_of.setdefault(id(t), []).append(name)
    for names in names_of.values():
        ready = prepare(tensors[names[0]])
        for name in names:
            tensors[name] = ready


VECTORS = ("attn_norm", "q_bias", "k_bias", "v_bias", "o_bias", "q_norm", "k_norm", "mlp_norm")


def place_vectors(w: ModelWeights, place) -> None:
    """Put the small vectors (norm weights, biases) where the backend computes, with its
    `asarray` (the CPU backends' is a no-op here; the GPU backend's copies them up once)."""
    for layer in w.layers:
        for name in VECTORS:
            if getattr(layer, name) is not None:
                setattr(layer, name, place(getattr(layer, name)))
    w.norm = place(w.norm)


def moe_weights(cfg: QwenConfig, tensors: dict, p: str) -> MoEWeights:
    """A sparse layer's router and experts from the tensors under `p` (`model.layers.N.mlp.`)."""
    def expert(q):
        return ExpertWeights(gate=tensors[q + "gate_proj.weight"], up=tensors[q + "up_proj.weight"],
                             down=tensors[q + "down_proj.weight"])

    shared = cfg.shared_expert_intermediate_size > 0
    return MoEWeights(router=tensors[p + "gate.weight"],
                      experts=[expert(f"{p}experts.{e}.") for e in range(cfg.num_experts)],
                      shared=expert(p + "shared_expert.") if shared else None,
                      shared_gate=tensors[p + "shared_expert_gate.weight"] if shared else None)


def build_weights(cfg: QwenConfig, tensors: dict, dtype, source: str) -> ModelWeights:
    check_tensors(cfg, tensors, source)

    def vec(name):  # small vectors: converted once to the compute dtype
        return as_compute(tensors[name], dtype).copy() if name in tensors else None

    layers = []
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        a = p + "self_attn."
        layers.append(LayerWeights(
            attn_norm=vec(p + "input_layernorm.weight"),
            q=tensors[a + "q_proj.weight"], k=tensors[a + "k_proj.weight"],
            v=tensors[a + "v_proj.weight"], o=tensors[a + "o_proj.weight"],
            q_bias=vec(a + "q_proj.bias"), k_bias=vec(a + "k_proj.bias"),
            v_bias=vec(a + "v_proj.bias"), o_bias=vec(a + "o_proj.bias"),
            q_norm=vec(a + "q_norm.weight"), k_norm=vec(a + "k_norm.weight"),
            mlp_norm=vec(p + "post_attention_layernorm.weight"),
            gate=tensors.get(p + "mlp.gate_proj.weight"), up=tensors.get(p + "mlp.up_proj.weight"),
            down=tensors.get(p + "mlp.down_proj.weight"),
            moe=moe_weights(cfg, tensors, p + "mlp.") if cfg.is_sparse(i) else None,
        ))
    embed = tensors["model.embed_tokens.weight"]
    return ModelWeights(
        embed=embed,
        layers=layers,
        norm=vec("model.norm.weight"),
        lm_head=embed if cfg.tie_word_embeddings else tensors["lm_head.weight"],
    )
