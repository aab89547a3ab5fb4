"""A Qwen GGUF file -> the config, and tensors under Hugging Face names in canonical form.

Metadata keys are `{arch}.*` (llama.cpp's convert_hf_to_gguf.py writes them from config.json);
tensor names map one to one (gguf-py's tensor_mapping.py). Qwen GGUFs keep q/k rows in
Hugging Face order (no permutation, unlike llama), so the same rotate-half RoPE applies.
"""

from __future__ import annotations

import re

import numpy as np

from ..config import ConfigReader, QwenConfig
from ..dense import BFloat16Array
from ..errors import FormatError, UnsupportedModel
from ..quant import MappedQuantizedRows
from ..quant.gguf import BLOCK_TYPES, block_rows_to_canonical
from .gguf import GGUFTensor, read_gguf
from ..weights import check_layer_count
from .mapped import drop_pages
from .model_files import short_repr

SUPPORTED_ARCHS = ("qwen2", "qwen3")
LATER_ARCHS = ("qwen2moe", "qwen3moe", "qwen")   # recognised; not runnable in this version

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
               "ffn_down.weight": "mlp.down_proj.weight"}
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

    scaling = meta.get(a + "rope.scaling.type", "none")
    scaling = scaling if isinstance(scaling, str) else short_repr(scaling)
    factor = key.number(a + "rope.scaling.factor", 1.0)
    if scaling not in ("none", "linear") or (scaling == "linear" and factor != 1.0):
        raise UnsupportedModel(f"{path}: rope scaling {scaling!r} is not supported")
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
    return QwenConfig(
        model_type=arch,
        vocab_size=int(tensors["token_embd.weight"].shape[0]),
        hidden_size=hidden,
        intermediate_size=key.integer(a + "feed_forward_length"),
        num_hidden_layers=key.integer(a + "block_count"),
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=key.integer(a + "attention.key_length", hidden // heads),
        rms_norm_eps=key.number(a + "attention.layer_norm_rms_epsilon"),
        rope_theta=key.number(a + "rope.freq_base", 10000.0, positive=True),
        max_position_embeddings=key.integer(a + "context_length", 32768),
        tie_word_embeddings="output.weight" not in tensors,
        qkv_bias=True if arch == "qwen2" else has_bias,
        o_bias="blk.0.attn_output.bias" in tensors,
        qk_norm=arch == "qwen3",
        bos_token_id=key.token_id("tokenizer.ggml.bos_token_id"),
        eos_token_ids=() if eos is None else (eos,),
    )


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
    check_layer_count(config, len(tensors), path)
    out = {}
    for name, t in tensors.items():
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
