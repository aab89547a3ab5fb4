"""The tiny float32 Qwen2 models that AutoAWQ quantized for tests/fixtures/awq/ (made by
tools/make_awq_fixture.py), rebuilt here from their seed with NumPy alone, so that the float
weights need not be committed (NumPy's PCG64 stream is stable across versions).

Sizes are multiples of 64 (AutoAWQ's clipping search needs out % 64 == 0) and of 128 (the
largest group). A few input channels are made salient, as in real models: some norm weights
are 8 times the rest, so the activations' magnitudes per channel differ by much, which is what
AWQ's scales respond to.
"""

from __future__ import annotations

import numpy as np

VARIANTS = {
    # name: (kv heads, seed); 4 query heads of 32, hidden 128, MLP 256, 2 layers, vocabulary 128
    "gqa": (2, 11),      # v_proj [64, 128] != o_proj [128, 128]: no v -> o scaling
    "mha": (4, 12),      # v_proj == o_proj in shape: AutoAWQ scales v -> o too
}
HIDDEN, HEADS, HEAD_DIM, FFN, LAYERS, VOCAB = 128, 4, 32, 256, 2, 128


def tiny_config(variant: str) -> dict:
    kv, _ = VARIANTS[variant]
    return {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu",
        "hidden_size": HIDDEN, "intermediate_size": FFN, "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS, "num_key_value_heads": kv, "vocab_size": VOCAB,
        "max_position_embeddings": 256, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
        "tie_word_embeddings": True, "use_sliding_window": False, "sliding_window": None,
        "max_window_layers": LAYERS, "attention_dropout": 0.0, "torch_dtype": "float32",
        "bos_token_id": None, "eos_token_id": None, "pad_token_id": None,
    }


def tiny_tensors(variant: str) -> dict[str, np.ndarray]:
    """The float32 weights under Hugging Face names: matrices N(0, 0.1), biases N(0, 0.1),
    norms 1 + N(0, 0.1) with 6 channels of each norm times 8."""
    kv, seed = VARIANTS[variant]
    rng = np.random.default_rng(seed)

    def matrix(out, n_in):
        return rng.normal(0.0, 0.1, (out, n_in)).astype(np.float32)

    def norm(n):
        w = 1.0 + 0.1 * rng.normal(size=n)
        w[rng.choice(n, 6, replace=False)] *= 8.0
        return w.astype(np.float32)

    t = {"model.embed_tokens.weight": matrix(VOCAB, HIDDEN)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = norm(HIDDEN)
        for name, out in (("q", HEADS * HEAD_DIM), ("k", kv * HEAD_DIM), ("v", kv * HEAD_DIM)):
            t[p + f"self_attn.{name}_proj.weight"] = matrix(out, HIDDEN)
            t[p + f"self_attn.{name}_proj.bias"] = rng.normal(0.0, 0.1, out).astype(np.float32)
        t[p + "self_attn.o_proj.weight"] = matrix(HIDDEN, HEADS * HEAD_DIM)
        t[p + "post_attention_layernorm.weight"] = norm(HIDDEN)
        t[p + "mlp.gate_proj.weight"] = matrix(FFN, HIDDEN)
        t[p + "mlp.up_proj.weight"] = matrix(FFN, HIDDEN)
        t[p + "mlp.down_proj.weight"] = matrix(HIDDEN, FFN)
    t["model.norm.weight"] = norm(HIDDEN)
    return t


def calibration_ids(n_samples: int = 16, seq_len: int = 64, seed: int = 5) -> np.ndarray:
    """Random token ids [n_samples, seq_len] (the fixture stores the ones AutoAWQ saw)."""
    return np.random.default_rng(seed).integers(0, VOCAB, (n_samples, seq_len))
