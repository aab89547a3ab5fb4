"""Regenerate tests/fixtures: tiny random Qwen2/Qwen3 models saved by transformers, and
transformers' own outputs for them (the expected values of tests/test_model_fixtures.py).

    pip install torch==2.13.0 transformers==5.24.0 tokenizers
    python tools/make_fixtures.py

For each model it writes tests/fixtures/<name>/ (config.json, safetensors, tokenizer.json) and
tests/fixtures/<name>.reference.npz with:
    ids_<k>            the fixed inputs (odd lengths)
    logits32_<k>       transformers float32 logits      [T, V]
    logits64_<k>       transformers float64 logits      [T, V] (every op in float64, see
                       tests/transformers_oracle.exact_float64)
    prompt, greedy     a prompt and transformers' greedy `generate` continuation
"""

from __future__ import annotations

import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
import transformers_oracle as oracle  # noqa: E402

OUT = os.path.join(HERE, "..", "tests", "fixtures")

# name: (model_type, config kwargs, storage dtype, sharded)
MODELS = {
    "qwen2-tied-f32": ("qwen2", dict(hidden=48, heads=6, kv_heads=2, tied=True), "float32", False),
    "qwen2-untied-bf16-sharded": ("qwen2", dict(hidden=32, heads=2, kv_heads=1, tied=False),
                                  "bfloat16", True),
    "qwen2-untied-f16": ("qwen2", dict(hidden=48, heads=6, kv_heads=6, tied=False), "float16", False),
    "qwen3-headdim12-f32": ("qwen3", dict(hidden=48, heads=6, kv_heads=2, head_dim=12, tied=True),
                            "float32", False),
    "qwen3-bias-bf16-sharded": ("qwen3", dict(hidden=32, heads=2, kv_heads=2, head_dim=24,
                                              tied=False, attention_bias=True), "bfloat16", True),
}
INPUT_LENGTHS = (7, 13)
PROMPT_LENGTH, GREEDY_TOKENS = 5, 16


def main():
    tokenizer = oracle.train_tiny_tokenizer()
    eos = [tokenizer.token_to_id(t) for t in ("<|endoftext|>", "<|im_end|>")]
    rng = np.random.default_rng(1234)
    for seed, (name, (model_type, kw, dtype, shard)) in enumerate(MODELS.items()):
        config = oracle.make_config(model_type, eos=eos, **kw)
        oracle.write_reference_fixture(os.path.join(OUT, name), config, seed, tokenizer, dtype,
                                       shard, rng, INPUT_LENGTHS, PROMPT_LENGTH, GREEDY_TOKENS)


if __name__ == "__main__":
    main()
