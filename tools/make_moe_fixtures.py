"""Regenerate tests/fixtures/moe: tiny random Qwen2-MoE and Qwen3-MoE models saved by
transformers, and transformers' own outputs for them (the expected values of
tests/test_moe.py).

    pip install torch==2.13.0 transformers==5.24.0 tokenizers
    python tools/make_moe_fixtures.py

For each model it writes tests/fixtures/moe/<name>/ (config.json, safetensors with one tensor
per expert, as save_pretrained writes them, tokenizer.json) and <name>.reference.npz with
    ids_<k>        fixed inputs (7, 13 and 29 tokens)
    logits32_<k>   transformers float32 logits [T, V]
    logits64_<k>   transformers float64 logits, every op in float64 (the router's softmax
                   included: tests/transformers_oracle.exact_float64)
    prompt, greedy a prompt and transformers' greedy `generate` continuation (16 tokens)
"""

from __future__ import annotations

import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
import transformers_oracle as oracle  # noqa: E402

OUT = os.path.join(HERE, "..", "tests", "fixtures", "moe")

# name: (model_type, config kwargs, moe kwargs, storage dtype, sharded)
MODELS = {
    # layers 1 and 3 sparse (decoder_sparse_step 2), 0 and 2 dense; shared expert; top-2 of 8
    "qwen2moe-step2-f32": (
        "qwen2_moe", dict(hidden=32, heads=4, kv_heads=2, layers=4, intermediate=48, tied=False),
        dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=16,
             shared_expert_intermediate_size=24, decoder_sparse_step=2, mlp_only_layers=[],
             norm_topk_prob=False), "float32", False),
    # layers 0 and 2 sparse, 1 dense (mlp_only_layers); head_dim 24, not 32/4; top-3 of 6
    "qwen3moe-headdim24-bf16-sharded": (
        "qwen3_moe", dict(hidden=32, heads=4, kv_heads=2, layers=3, intermediate=40,
                          head_dim=24, tied=True),
        dict(num_experts=6, num_experts_per_tok=3, moe_intermediate_size=20,
             decoder_sparse_step=1, mlp_only_layers=[1], norm_topk_prob=True),
        "bfloat16", True),
    # every layer sparse, as llama.cpp's qwen2moe / qwen3moe graphs need (their GGUF files are
    # checked against llama.cpp by tools/make_moe_gguf_fixtures.py); qwen2moe's head untied
    # and head_dim = hidden / heads, as llama.cpp's qwen2moe loader requires
    "qwen2moe-allsparse-bf16": (
        "qwen2_moe", dict(hidden=32, heads=4, kv_heads=2, layers=2, intermediate=64, tied=False),
        dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
             shared_expert_intermediate_size=64, decoder_sparse_step=1, mlp_only_layers=[],
             norm_topk_prob=False), "bfloat16", False),
    "qwen3moe-allsparse-bf16": (
        "qwen3_moe", dict(hidden=32, heads=4, kv_heads=2, layers=2, intermediate=64,
                          head_dim=16, tied=True),
        dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
             decoder_sparse_step=1, mlp_only_layers=[], norm_topk_prob=True),
        "bfloat16", False),
}
INPUT_LENGTHS = (7, 13, 29)
PROMPT_LENGTH, GREEDY_TOKENS = 5, 16


def main():
    tokenizer = oracle.train_tiny_tokenizer()
    eos = [tokenizer.token_to_id(t) for t in ("<|endoftext|>", "<|im_end|>")]
    rng = np.random.default_rng(4321)
    for seed, (name, (model_type, kw, moe, dtype, shard)) in enumerate(MODELS.items()):
        config = oracle.make_config(model_type, eos=eos, moe=moe, **kw)
        oracle.write_reference_fixture(os.path.join(OUT, name), config, 100 + seed, tokenizer,
                                       dtype, shard, rng, INPUT_LENGTHS, PROMPT_LENGTH,
                                       GREEDY_TOKENS)


if __name__ == "__main__":
    main()
