"""Regenerate tests/fixtures/yarn: tiny random Qwen2, Qwen3 and Qwen3-MoE models with YaRN
RoPE scaling, saved by transformers, and transformers' float32 outputs for prompts longer
than original_max_position_embeddings (the expected values of tests/test_yarn.py).

    pip install torch==2.13.0 transformers==5.24.0 tokenizers
    python tools/make_yarn_fixtures.py

transformers writes the scaling as `rope_parameters` (rope_type "yarn"); the tests also read
each folder with its config rewritten in the older `rope_scaling` spelling ("type": "yarn",
rope_theta at the top level), which transformers reads to the same parameters.

<name>.reference.npz holds
    ids_<k>         inputs of 40 and 61 tokens (original_max_position_embeddings is 32)
    logits32_<k>    transformers float32 logits [T, V]
    prompt, greedy  a 36-token prompt and transformers' greedy continuation (40 tokens)
"""

from __future__ import annotations

import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
import transformers_oracle as oracle  # noqa: E402

OUT = os.path.join(HERE, "..", "tests", "fixtures", "yarn")

# name: (model_type, config kwargs, YaRN parameters, MoE kwargs or None)
MODELS = {
    "qwen2-yarn4": ("qwen2", dict(hidden=32, heads=2, kv_heads=1, head_dim=16, tied=True),
                    dict(factor=4.0, original_max_position_embeddings=32), None),
    "qwen3-yarn2-betas": ("qwen3", dict(hidden=32, heads=2, kv_heads=2, head_dim=32, tied=False),
                          dict(factor=2.0, original_max_position_embeddings=32, beta_fast=8.0,
                               beta_slow=0.5, rope_theta=500.0), None),
    "qwen3moe-yarn4": ("qwen3_moe", dict(hidden=32, heads=4, kv_heads=2, head_dim=16,
                                         intermediate=40, tied=True),
                       dict(factor=4.0, original_max_position_embeddings=32),
                       dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                            norm_topk_prob=True)),
}
INPUT_LENGTHS = (40, 61)
PROMPT_LENGTH, GREEDY_TOKENS = 36, 40


def main():
    tokenizer = oracle.train_tiny_tokenizer()
    rng = np.random.default_rng(2468)
    for seed, (name, (model_type, kw, yarn, moe)) in enumerate(MODELS.items()):
        config = oracle.make_config(model_type, eos=[], moe=moe, max_positions=128,
                                    rope_parameters={"rope_type": "yarn", **yarn}, **kw)
        oracle.write_reference_fixture(os.path.join(OUT, name), config, 200 + seed, tokenizer,
                                       "float32", False, rng, INPUT_LENGTHS, PROMPT_LENGTH,
                                       GREEDY_TOKENS, float64=False)


if __name__ == "__main__":
    main()
