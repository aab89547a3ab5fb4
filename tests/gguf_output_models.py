"""Two tiny float Qwen folders for the GGUF output tests, written the same on every machine
(their weights come from integer hashing, not from a random generator whose stream could
change between NumPy versions), so that a GGUF written from them has a fixed sha256.

    qwen2-256: Qwen2, hidden 256, 4 heads / 2 KV heads (head_dim 64), q/k/v biases, MLP 512,
               2 layers, vocabulary 384, tied head
    qwen3-256: Qwen3, hidden 256, 4 heads / 2 KV heads, head_dim 128 (from config.json),
               q/k norms, MLP 544 (not a multiple of 256: ffn_down's rows fall back from the
               K-quants), 2 layers, vocabulary 384, untied head
Rows of 256 let the K-quants apply; the tokenizer is the fixtures' 300-token byte-level BPE,
with a tokenizer_config.json naming <|im_end|> as eos and a ChatML template.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np

from qwen_np.formats.safetensors import write_safetensors

HERE = os.path.dirname(os.path.abspath(__file__))
TOKENIZER = os.path.join(HERE, "fixtures", "qwen2-tied-f32", "tokenizer.json")
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
          "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
MODELS = {
    "qwen2-256": dict(model_type="qwen2", architectures=["Qwen2ForCausalLM"], head_dim=None,
                      intermediate_size=512, tie_word_embeddings=True),
    "qwen3-256": dict(model_type="qwen3", architectures=["Qwen3ForCausalLM"], head_dim=128,
                      intermediate_size=544, tie_word_embeddings=False, attention_bias=False),
}
HIDDEN, HEADS, KV_HEADS, LAYERS, VOCAB = 256, 4, 2, 2, 384


def hashed_normal(shape, seed: int, std: float) -> np.ndarray:
    """float32 of `shape`, roughly normal (the sum of four uniform 16-bit integers, centred),
    a function of the element index and seed only."""
    n = int(np.prod(shape))
    i = np.arange(n, dtype=np.uint64) * np.uint64(4)
    total = np.zeros(n, np.int64)
    for k in range(4):
        h = (i + np.uint64((k + seed * 0x9E3779B97F4A7C15) % 2 ** 64)) \
            * np.uint64(0xD1B54A32D192ED03)
        h ^= h >> np.uint64(31)
        h *= np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(29)
        total += (h >> np.uint64(48)).astype(np.int64)                # 16 bits each
    centred = (total - 2 * 65535).astype(np.float64) / (65536 * np.sqrt(4 / 12))
    return (centred * std).astype(np.float32).reshape(shape)


def model_tensors(name: str) -> dict:
    m = MODELS[name]
    dh = m["head_dim"] or HIDDEN // HEADS
    F = m["intermediate_size"]
    seed = iter(range(1000 * (1 + list(MODELS).index(name)), 10 ** 6))
    t = {"model.embed_tokens.weight": hashed_normal((VOCAB, HIDDEN), next(seed), 0.08),
         "model.norm.weight": 1 + hashed_normal((HIDDEN,), next(seed), 0.1)}
    if not m["tie_word_embeddings"]:
        t["lm_head.weight"] = hashed_normal((VOCAB, HIDDEN), next(seed), 0.08)
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        shapes = {"self_attn.q_proj.weight": (HEADS * dh, HIDDEN),
                  "self_attn.k_proj.weight": (KV_HEADS * dh, HIDDEN),
                  "self_attn.v_proj.weight": (KV_HEADS * dh, HIDDEN),
                  "self_attn.o_proj.weight": (HIDDEN, HEADS * dh),
                  "mlp.gate_proj.weight": (F, HIDDEN), "mlp.up_proj.weight": (F, HIDDEN),
                  "mlp.down_proj.weight": (HIDDEN, F)}
        for k, shape in shapes.items():
            t[p + k] = hashed_normal(shape, next(seed), 1 / np.sqrt(shape[1]))
        t[p + "input_layernorm.weight"] = 1 + hashed_normal((HIDDEN,), next(seed), 0.1)
        t[p + "post_attention_layernorm.weight"] = 1 + hashed_normal((HIDDEN,), next(seed), 0.1)
        if m["model_type"] == "qwen2":
            for k, rows in (("q", HEADS * dh), ("k", KV_HEADS * dh), ("v", KV_HEADS * dh)):
                t[p + f"self_attn.{k}_proj.bias"] = hashed_normal((rows,), next(seed), 0.1)
        else:
            t[p + "self_attn.q_norm.weight"] = 1 + hashed_normal((dh,), next(seed), 0.1)
            t[p + "self_attn.k_norm.weight"] = 1 + hashed_normal((dh,), next(seed), 0.1)
    return dict(sorted(t.items()))          # a checkpoint's order: sorted names


def write_model(name: str, folder: str) -> str:
    """Write the float32 folder `name` (a key of MODELS) into folder; returns folder."""
    m = MODELS[name]
    os.makedirs(folder, exist_ok=True)
    config = {"architectures": m["architectures"], "model_type": m["model_type"],
              "hidden_size": HIDDEN, "intermediate_size": m["intermediate_size"],
              "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
              "num_key_value_heads": KV_HEADS, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
              "max_position_embeddings": 256, "tie_word_embeddings": m["tie_word_embeddings"],
              "vocab_size": VOCAB, "hidden_act": "silu", "torch_dtype": "float32",
              "bos_token_id": 0, "eos_token_id": 2}
    if m["head_dim"]:
        config["head_dim"] = m["head_dim"]
    if "attention_bias" in m:
        config["attention_bias"] = m["attention_bias"]
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "bos_token": None,
                   "add_bos_token": False, "chat_template": CHATML}, f, indent=2)
    shutil.copyfile(TOKENIZER, os.path.join(folder, "tokenizer.json"))
    write_safetensors(os.path.join(folder, "model.safetensors"), model_tensors(name),
                      {"format": "pt"})
    return folder
