"""A Qwen GGUF file -> the config, and tensors under Hugging Face names in canonical form.

Metadata keys are `{arch}.*` (llama.cpp's convert_hf_to_gguf.py writes them from config.json);
tensor names map one to one (gguf-py's tensor_mapping.py). Qwen GGUFs keep q/k rows in
Hugging Face order (no permutation, unlike llama), so the same rotate-half RoPE applies.

MoE files (qwen2moe, qwen3moe) stack each sparse layer's experts into one tensor per matrix,
    blk.N.ffn_gate_exps.weight   ne [D, Fe, E]  ->  NumPy [E, Fe, D]: expert e is [e]
    blk.N.ffn_up_exps.weight     ne [D, Fe, E]
    blk.N.ffn_down_exps.weight   ne [Fe, D, E]
(torch.stack over the experts, so each expert's rows, and their quant blocks, are contiguous);
each becomes one matrix per expert under the Hugging Face per-expert names, views of one
converted tensor. The router is ffn_gate_inp [E, D]; Qwen2-MoE's shared expert ffn_*_shexp and
its gate ffn_gate_inp_shexp, stored as [D]. A layer with ffn_gate_inp is sparse; the others
are dense (ffn_gate / ffn_up / ffn_down).
"""

from __future__ import annotations

import math
import re

import numpy as np

from qwen_np.model.config import REQUIRED, ConfigReader, QwenConfig, YarnScaling
from qwen_np.tensors.dense import BFloat16Array
from qwen_np.errors import FormatError, UnsupportedModel
from qwen_np.tensors.quantized import QuantizedTensor
from qwen_np.tensors.mapped import MappedQuantizedRows
from qwen_np.tensors.quantized import row_block
from qwen_np.formats.gguf_blocks import BLOCK_TYPES, block_rows_to_canonical
from qwen_np.formats.gguf import GGUFTensor, read_gguf
from qwen_np.model.weights import check_layer_count
from qwen_np.tensors.mapped import drop_pages
from qwen_np.errors import short_repr

MODEL_TYPES = {"qwen2": "qwen2", "qwen3": "qwen3", "qwen2moe": "qwen2_moe", "qwen3moe": "qwen3_moe"}
SUPPORTED_ARCHS = tuple(MODEL_TYPES)
LATER_ARCHS = ("qwen",)   # recognised; not runnable from GGUF in this version
# llama.cpp's renormalization of the chosen experts' weights where the file does not say
# ({arch}.expert_weights_norm): build_moe_ffn(norm_w=false) for qwen2moe, true for qwen3moe
NORM_TOPK_DEFAULT = {"qwen2moe": False, "qwen3moe": True}
STACKED_EXPERTS = {"ffn_gate_exps.weight": "gate_proj", "ffn_up_exps.weight": "up_proj",
                   "ffn_down_exps.weight": "down_proj"}
SHARED_EXPERT = ("ffn_gate_shexp.weight", "ffn_up_shexp.weight", "ffn_down_shexp.weight",
                 "ffn_gate_inp_shexp.weight")

GLOBAL_NAMES = {"token_embd.weight": "model.embed_tokens.weight",
                "output_norm.weight": "model.norm.weight",
                "output.weight": "lm_head.weight"}
LAYER_NAMES = {"attn_norm.weight": "input_layernorm.weight",
               "attn_q.weight": "self_attn.q_proj.weight", "attn_q.bias": "self_attn.q_proj.bias",
               "attn_k.weight": "self_attn.k_proj.weight", "attn_k.bias": "self_attn.k_proj.bias",
               "attn_v.weight": "self_attn.v_proj.weight", "attn_v.bias": "self_attn.v_proj.bias",
               "attn_output.weight": "self_attn.o_proj.weight",
               "attn_output.bias": "self_attn.o_proj.bias",
               "attn_q_norm.weight": "self_attn.q_norm.weight",
               "attn_k_norm.weight": "self_attn.k_norm.weight",
               "ffn_norm.weight": "post_attention_layernorm.weight",
               "ffn_gate.weight": "mlp.gate_proj.weight", "ffn_up.weight": "mlp.up_proj.weight",
               "ffn_down.weight": "mlp.down_proj.weight",
               "ffn_gate_inp.weight": "mlp.gate.weight",
               "ffn_gate_shexp.weight": "mlp.shared_expert.gate_proj.weight",
               "ffn_up_shexp.weight": "mlp.shared_expert.up_proj.weight",
               "ffn_down_shexp.weight": "mlp.shared_expert.down_proj.weight",
               "ffn_gate_inp_shexp.weight": "mlp.shared_expert_gate.weight"}
LAYER = re.compile(r"blk\.(\d+)\.(.+)$")


def hf_name(gguf_name: str) -> str | None:
    if gguf_name in GLOBAL_NAMES:
        return GLOBAL_NAMES[gguf_name]
    m = LAYER.match(gguf_name)
    if m and m.group(2) in LAYER_NAMES:
        return f"model.layers.{m.group(1)}.{LAYER_NAMES[m.group(2)]}"
    return None


def config_from_gguf(meta: dict, tensors: dict[str, GGUFTensor], path: str) -> QwenConfig:
    """The config from `{arch}.*` metadata, each value's type and range checked (a string, an
    array or a zero where a count belongs is a FormatError naming the key)."""
    arch = meta.get("general.architecture")
    arch = arch if isinstance(arch, str) else short_repr(arch)
    if arch in LATER_ARCHS:
        raise UnsupportedModel(f"{path}: GGUF architecture {arch!r} is not supported yet "
                               f"(supported: {', '.join(SUPPORTED_ARCHS)})")
    if arch not in SUPPORTED_ARCHS:
        raise UnsupportedModel(f"{path}: unknown GGUF architecture {arch!r} "
                               f"(supported: {', '.join(SUPPORTED_ARCHS)})")
    key = ConfigReader(meta, path)
    a = arch + "."

    yarn = yarn_from_gguf(meta, a, path)
    hidden, heads = key.integer(a + "embedding_length"), key.integer(a + "attention.head_count")
    kv_heads = key.integer(a + "attention.head_count_kv", heads)
    if heads % kv_heads:
        raise FormatError(f"{path}: {a}attention.head_count {heads} is not a multiple of "
                          f"{a}attention.head_count_kv {kv_heads}")
    if a + "attention.key_length" not in meta and hidden < heads:
        raise FormatError(f"{path}: {a}embedding_length {hidden} is smaller than "
                          f"{a}attention.head_count {heads}")
    if "token_embd.weight" not in tensors:
        raise FormatError(f"{path}: missing tensor token_embd.weight")
    has_bias = "blk.0.attn_q.bias" in tensors
    eos = key.token_id("tokenizer.ggml.eos_token_id")
    layers = key.integer(a + "block_count")
    moe = moe_from_gguf(meta, tensors, arch, layers, path) if arch in NORM_TOPK_DEFAULT else {}
    dense = layers > len(moe.get("sparse_layers", ()))
    return QwenConfig(
        model_type=MODEL_TYPES[arch],
        vocab_size=int(tensors["token_embd.weight"].shape[0]),
        hidden_size=hidden,
        intermediate_size=key.integer(a + "feed_forward_length", REQUIRED if dense else 0),
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=key.integer(a + "attention.key_length", hidden // heads),
        rms_norm_eps=key.number(a + "attention.layer_norm_rms_epsilon"),
        rope_theta=key.number(a + "rope.freq_base", 10000.0, positive=True),
        max_position_embeddings=key.integer(a + "context_length", 32768),
        tie_word_embeddings="output.weight" not in tensors,
        qkv_bias=True if arch == "qwen2" else has_bias,
        o_bias="blk.0.attn_output.bias" in tensors,
        qk_norm=arch in ("qwen3", "qwen3moe"),
        bos_token_id=key.token_id("tokenizer.ggml.bos_token_id"),
        eos_token_ids=() if eos is None else (eos,),
        yarn=yarn,
        **moe,
    )


def yarn_from_gguf(meta: dict, a: str, path: str) -> YarnScaling | None:
    """YaRN's parameters from `{arch}.rope.scaling.*`, as convert_hf_to_gguf.py writes them
    from a yarn rope_scaling: type, factor, original_context_length, and only where the
    config.json had them yarn_beta_fast, yarn_beta_slow and yarn_attn_factor (transformers'
    attention_factor). Defaults as transformers': betas 32 and 1, the original length
    context_length, the factor on cos and sin 0.1 ln(factor) + 1, times llama.cpp's generic
    rope.scaling.attn_factor where a file has one. (llama.cpp's qwen graphs use the default
    betas and factor whatever the file says: for such a file its output and this differ.)
    No scaling, or "linear" with factor 1, is plain RoPE; any other type is refused by name,
    and so are yarn_ext_factor != 1 and yarn_log_multiplier != 0, which transformers' YaRN
    does not have."""
    key = ConfigReader(meta, path)
    scaling = meta.get(a + "rope.scaling.type", "none")
    scaling = scaling if isinstance(scaling, str) else short_repr(scaling)
    factor = key.number(a + "rope.scaling.factor", 1.0)
    if scaling == "none" or (scaling == "linear" and factor == 1.0):
        return None
    if scaling != "yarn":
        raise UnsupportedModel(f"{path}: rope scaling {scaling!r} is not supported "
                               f"(supported: none, yarn)")
    for k, plain in (("rope.scaling.yarn_ext_factor", 1.0), ("rope.scaling.yarn_log_multiplier", 0.0)):
        if key.number(a + k, plain) != plain:
            raise UnsupportedModel(f"{path}: {a}{k} = {meta[a + k]} is not supported "
                                   f"(transformers' YaRN has no such parameter)")
    if factor <= 0:
        raise FormatError(f"{path}: {a}rope.scaling.factor is {factor}; expected a positive number")
    original = key.integer(a + "rope.scaling.original_context_length",
                           key.integer(a + "context_length", 32768))
    attention = key.number(a + "rope.scaling.yarn_attn_factor", None)
    if attention is None:
        attention = key.number(a + "rope.scaling.attn_factor", 1.0) \
            * (1.0 if factor <= 1 else 0.1 * math.log(factor) + 1.0)
    return YarnScaling(factor=factor, original_max_position_embeddings=original,
                       beta_fast=key.number(a + "rope.scaling.yarn_beta_fast", 32.0, positive=True),
                       beta_slow=key.number(a + "rope.scaling.yarn_beta_slow", 1.0, positive=True),
                       attention_factor=attention)


def moe_from_gguf(meta: dict, tensors: dict, arch: str, layers: int, path: str) -> dict:
    """QwenConfig's MoE fields from `{arch}.expert_*` metadata; the sparse layers are those
    with a router (ffn_gate_inp), each checked to hold every stacked expert tensor."""
    key, a = ConfigReader(meta, path), arch + "."
    experts, used = key.integer(a + "expert_count"), key.integer(a + "expert_used_count")
    if used > experts:
        raise FormatError(f"{path}: {a}expert_used_count {used} is larger than "
                          f"{a}expert_count {experts}")
    sparse = tuple(i for i in range(layers) if f"blk.{i}.ffn_gate_inp.weight" in tensors)
    shared = key.integer(a + "expert_shared_feed_forward_length", 0) if arch == "qwen2moe" else 0
    for i in sparse:
        need = list(STACKED_EXPERTS) + (list(SHARED_EXPERT) if shared else [])
        for part in need:
            if f"blk.{i}.{part}" not in tensors:
                raise FormatError(f"{path}: missing tensor blk.{i}.{part} (layer {i} has a "
                                  f"router, ffn_gate_inp)")
    return dict(num_experts=experts, num_experts_per_tok=used,
                moe_intermediate_size=key.integer(a + "expert_feed_forward_length"),
                shared_expert_intermediate_size=shared,
                norm_topk_prob=key.flag(a + "expert_weights_norm", NORM_TOPK_DEFAULT[arch]),
                sparse_layers=sparse)


def expert_matrices(t: GGUFTensor, experts: int) -> list:
    """A stacked expert tensor [E, out, in] -> E matrices [out, in] (views of one converted
    tensor: a block type is converted as E * out rows, then split by rows)."""
    E, out, n_in = t.shape
    if E != experts:
        raise FormatError(f"tensor {t.name} stacks {E} experts; the metadata says "
                          f"expert_count {experts}")
    flat = GGUFTensor(t.name, t.type_id, (n_in, E * out), t.data)
    whole = tensor_to_canonical(flat)                                   # [E * out, in]
    if isinstance(whole, QuantizedTensor):
        return [row_block(whole, e * out, (e + 1) * out) for e in range(E)]
    if isinstance(whole, BFloat16Array):
        return [BFloat16Array(whole.bits[e * out:(e + 1) * out]) for e in range(E)]
    return [whole[e * out:(e + 1) * out] for e in range(E)]


def lookup_table(t: GGUFTensor) -> MappedQuantizedRows:
    """A block-quantized embedding that only serves lookups: kept mapped, rows converted on use."""
    out, n_in = t.shape
    return block_lookup_table(t.data.reshape(out, -1), t.type_id, n_in)


def block_lookup_table(raw: np.ndarray, type_id: int, n_in: int) -> MappedQuantizedRows:
    """raw uint8 [rows, bytes per row] of GGUF blocks of `type_id` (a key of BLOCK_TYPES)
    as a lookup table; the prepared-model cache rebuilds an untied embedding with it."""
    return MappedQuantizedRows(
        shape=(raw.shape[0], n_in), raw=raw, dtype_name=BLOCK_TYPES[type_id][0],
        rows_to_canonical=lambda r: block_rows_to_canonical(r, type_id, (r.shape[0], n_in)))


def tensor_to_canonical(t: GGUFTensor):
    """One GGUF tensor -> a NumPy array (F32, F16: views of the file), a BFloat16Array, or a
    QuantizedTensor (block types: converted, then the file's pages are released)."""
    shape = t.shape
    if t.type_id == 0:
        return t.data.view(np.float32).reshape(shape)
    if t.type_id == 1:
        return t.data.view(np.float16).reshape(shape)
    if t.type_id == 30:
        return BFloat16Array(t.data.view(np.uint16).reshape(shape))
    if t.type_id in BLOCK_TYPES and len(shape) == 2:
        qt = block_rows_to_canonical(t.data, t.type_id, shape)
        drop_pages(t.data)
        return qt
    raise FormatError(f"tensor {t.name}: {t.type_name} tensors of {len(shape)} dimensions are "
                      f"not supported")


def read_gguf_model(path: str):
    """(config, tensors under HF names, GGUF metadata) of a Qwen GGUF file."""
    meta, tensors = read_gguf(path)
    config = config_from_gguf(meta, tensors, path)
    check_layer_count(config, len(tensors), path, experts_one_by_one=False)
    out = {}
    for name, t in tensors.items():
        m = LAYER.match(name)
        if m and m.group(2) in STACKED_EXPERTS and len(t.shape) == 3:
            try:
                matrices = expert_matrices(t, config.num_experts)
            except FormatError as e:
                raise FormatError(f"{path}: {e}") from None
            p = f"model.layers.{m.group(1)}.mlp.experts."
            for e, w in enumerate(matrices):
                out[f"{p}{e}.{STACKED_EXPERTS[m.group(2)]}.weight"] = w
            continue
        if m and m.group(2) == "ffn_gate_inp_shexp.weight" and len(t.shape) == 1:
            t = GGUFTensor(t.name, t.type_id, (t.ne[0], 1), t.data)   # [D] -> [1, D]
        hf = hf_name(name)
        if hf is None:
            raise FormatError(f"{path}: unexpected tensor {name} for a {config.model_type} model")
        try:
            if name == "token_embd.weight" and not config.tie_word_embeddings \
                    and t.type_id in BLOCK_TYPES:
                out[hf] = lookup_table(t)   # untied: only ever looked up, a row per token
                continue
            out[hf] = tensor_to_canonical(t)
        except FormatError as e:
            raise FormatError(f"{path}: {e}") from None
    return config, out, meta
