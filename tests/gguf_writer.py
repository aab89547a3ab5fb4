"""Writing small GGUF files with gguf-py's own GGUFWriter (an independent producer), from a
float Hugging Face fixture folder. Test support only."""

from __future__ import annotations

import json
import os

import numpy as np

import gguf
from gguf import GGMLQuantizationType as T

HF_TO_GGUF = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
              "lm_head.weight": "output.weight"}
LAYER_PARTS = {"input_layernorm.weight": "attn_norm.weight",
               "self_attn.q_proj.weight": "attn_q.weight", "self_attn.q_proj.bias": "attn_q.bias",
               "self_attn.k_proj.weight": "attn_k.weight", "self_attn.k_proj.bias": "attn_k.bias",
               "self_attn.v_proj.weight": "attn_v.weight", "self_attn.v_proj.bias": "attn_v.bias",
               "self_attn.o_proj.weight": "attn_output.weight",
               "self_attn.q_norm.weight": "attn_q_norm.weight",
               "self_attn.k_norm.weight": "attn_k_norm.weight",
               "post_attention_layernorm.weight": "ffn_norm.weight",
               "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
               "mlp.down_proj.weight": "ffn_down.weight"}


def gguf_name(hf: str) -> str:
    if hf in HF_TO_GGUF:
        return HF_TO_GGUF[hf]
    parts = hf.split(".")
    return f"blk.{parts[2]}." + LAYER_PARTS[".".join(parts[3:])]


def write_gguf_from_hf(src: str, out: str, qtype=T.Q8_0, arch: str | None = None,
                       extra_tensor=None) -> dict:
    """Matrices quantized to `qtype` by gguf-py, vectors F32; tokenizer metadata from the
    folder's tokenizer.json. Returns {gguf name: float32 array gguf-py dequantizes it to}."""
    from safetensors.torch import load_file   # reads bfloat16 too
    cfg = json.load(open(os.path.join(src, "config.json")))
    arch = arch or cfg["model_type"]
    tensors = {}
    for f in sorted(os.listdir(src)):
        if f.endswith(".safetensors"):
            tensors.update({k: v.float().numpy() for k, v in load_file(os.path.join(src, f)).items()})
    w = gguf.GGUFWriter(out, arch)
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_rope_freq_base(cfg.get("rope_theta") or cfg["rope_parameters"]["rope_theta"])
    if "head_dim" in cfg:
        w.add_key_length(cfg["head_dim"])
        w.add_value_length(cfg["head_dim"])
    tok = json.load(open(os.path.join(src, "tokenizer.json"), encoding="utf-8"))
    vocab = tok["model"]["vocab"]
    specials = {t["content"]: t["id"] for t in tok["added_tokens"]}
    tokens = [None] * cfg["vocab_size"]
    types = [5] * cfg["vocab_size"]                                   # UNUSED padding
    for t, i in {**vocab, **specials}.items():
        tokens[i] = t
        types[i] = 3 if t in specials else 1                          # CONTROL / NORMAL
    tokens = [t if t is not None else f"[PAD{i}]" for i, t in enumerate(tokens)]
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_eos_token_id(specials["<|im_end|>"])
    expected = {}
    for hf, arr in tensors.items():
        name = gguf_name(hf)
        arr = np.asarray(arr, np.float32)
        if arr.ndim == 2 and arr.shape[1] % 32 == 0:
            raw = gguf.quants.quantize(arr, qtype)
            w.add_tensor(name, raw, raw_dtype=qtype)
            expected[name] = gguf.quants.dequantize(raw, qtype)
        else:
            w.add_tensor(name, arr)
            expected[name] = arr
    if extra_tensor is not None:
        w.add_tensor(*extra_tensor[:2], raw_dtype=extra_tensor[2])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return expected
