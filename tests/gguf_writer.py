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
               "mlp.down_proj.weight": "ffn_down.weight",
               "mlp.gate.weight": "ffn_gate_inp.weight",
               "mlp.shared_expert.gate_proj.weight": "ffn_gate_shexp.weight",
               "mlp.shared_expert.up_proj.weight": "ffn_up_shexp.weight",
               "mlp.shared_expert.down_proj.weight": "ffn_down_shexp.weight",
               "mlp.shared_expert_gate.weight": "ffn_gate_inp_shexp.weight"}
GGUF_ARCH = {"qwen2": "qwen2", "qwen3": "qwen3", "qwen2_moe": "qwen2moe", "qwen3_moe": "qwen3moe"}


def add_tokenizer_metadata(w, tokenizer_json: str, vocab_size: int) -> None:
    """tokenizer.ggml.* from a byte-level BPE tokenizer.json, as convert_hf_to_gguf.py writes
    them (ids past the vocabulary become [PAD<i>], UNUSED)."""
    tok = json.load(open(tokenizer_json, encoding="utf-8"))
    vocab = tok["model"]["vocab"]
    specials = {t["content"]: t["id"] for t in tok["added_tokens"]}
    tokens = [None] * vocab_size
    types = [5] * vocab_size                                   # UNUSED padding
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


def gguf_name(hf: str) -> str:
    if hf in HF_TO_GGUF:
        return HF_TO_GGUF[hf]
    parts = hf.split(".")
    if parts[3:5] == ["mlp", "experts"]:                              # stacked_experts' names
        return f"blk.{parts[2]}.ffn_{parts[5]}_exps.weight"
    return f"blk.{parts[2]}." + LAYER_PARTS[".".join(parts[3:])]


def stacked_experts(tensors: dict) -> dict:
    """Per-expert matrices stacked as llama.cpp's converter stacks them (torch.stack over the
    experts: [E, out, in]) under model.layers.N.mlp.experts.{gate,up,down}."""
    out, stacks = {}, {}
    for name, t in tensors.items():
        parts = name.split(".")
        if parts[3:5] == ["mlp", "experts"]:
            key = ".".join(parts[:5]) + "." + parts[6].replace("_proj", "")
            stacks.setdefault(key, {})[int(parts[5])] = t
        else:
            out[name] = t
    for key, by_expert in stacks.items():
        out[key] = np.stack([by_expert[e] for e in range(len(by_expert))])
    return out


def write_gguf_from_hf(src: str, out: str, qtype=T.Q8_0, arch: str | None = None,
                       extra_tensor=None, skip=(), expert_counts=None) -> dict:
    """Matrices quantized to `qtype` by gguf-py, vectors F32; tokenizer metadata from the
    folder's tokenizer.json. Returns {gguf name: float32 array gguf-py dequantizes it to}.
    `skip`: GGUF tensor names left out; `expert_counts`: (expert_count, expert_used_count)
    written instead of the config's (bad files for the tests)."""
    from safetensors.torch import load_file   # reads bfloat16 too
    cfg = json.load(open(os.path.join(src, "config.json")))
    arch = arch or GGUF_ARCH[cfg["model_type"]]
    tensors = {}
    for f in sorted(os.listdir(src)):
        if f.endswith(".safetensors"):
            tensors.update({k: v.float().numpy() for k, v in load_file(os.path.join(src, f)).items()})
    tensors = stacked_experts(tensors)
    w = gguf.GGUFWriter(out, arch)
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    if cfg["model_type"].endswith("_moe"):      # convert_hf_to_gguf.py's Qwen2MoeModel keys
        count, used = expert_counts or (cfg.get("num_experts") or cfg["num_local_experts"],
                                        cfg["num_experts_per_tok"])
        w.add_expert_count(count)
        w.add_expert_used_count(used)
        w.add_expert_feed_forward_length(cfg["moe_intermediate_size"])
        if cfg.get("shared_expert_intermediate_size"):
            w.add_expert_shared_feed_forward_length(cfg["shared_expert_intermediate_size"])
    rope = cfg.get("rope_parameters") or {}
    if rope.get("rope_type") == "yarn":
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(rope["factor"])
        w.add_rope_scaling_orig_ctx_len(rope["original_max_position_embeddings"])
        if rope.get("beta_fast") is not None:               # as convert_hf_to_gguf.py: only
            w.add_rope_scaling_yarn_beta_fast(rope["beta_fast"])   # where config.json has them
        if rope.get("beta_slow") is not None:
            w.add_rope_scaling_yarn_beta_slow(rope["beta_slow"])
        if rope.get("attention_factor") is not None:
            w.add_rope_scaling_yarn_attn_factor(rope["attention_factor"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_rope_freq_base(cfg.get("rope_theta") or cfg["rope_parameters"]["rope_theta"])
    if "head_dim" in cfg:
        w.add_key_length(cfg["head_dim"])
        w.add_value_length(cfg["head_dim"])
    add_tokenizer_metadata(w, os.path.join(src, "tokenizer.json"), cfg["vocab_size"])
    expected = {}
    for hf, arr in tensors.items():
        name = gguf_name(hf)
        if name in skip:
            continue
        arr = np.asarray(arr, np.float32)
        if name.endswith("ffn_gate_inp_shexp.weight"):
            arr = arr.reshape(-1)                                     # stored as [D]
        if arr.ndim >= 2 and arr.shape[-1] % 32 == 0 and qtype != T.F32 \
                and "ffn_gate_inp." not in name:                      # the router stays float
            raw = gguf.quants.quantize(arr, qtype)
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
