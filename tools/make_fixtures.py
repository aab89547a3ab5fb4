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
import shutil
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
        out_dir = os.path.join(OUT, name)
        shutil.rmtree(out_dir, ignore_errors=True)
        config = oracle.make_config(model_type, eos=eos, **kw)
        model = oracle.random_model(config, seed=seed)
        oracle.save_model(model, tokenizer, out_dir, dtype, shard)

        ref = {}
        m32 = oracle.load_reference(out_dir, "float32")
        m64 = oracle.load_reference(out_dir, "float64")
        for k, n in enumerate(INPUT_LENGTHS):
            ids = rng.integers(0, config.vocab_size, size=n)
            ref[f"ids_{k}"] = ids
            ref[f"logits32_{k}"] = oracle.reference_logits(m32, ids.tolist()).astype(np.float32)
            ref[f"logits64_{k}"] = oracle.reference_logits(m64, ids.tolist())
        prompt = rng.integers(3, config.vocab_size, size=PROMPT_LENGTH)
        ref["prompt"] = prompt
        ref["greedy"] = np.array(oracle.reference_greedy(m32, prompt.tolist(), GREEDY_TOKENS))
        np.savez_compressed(os.path.join(OUT, f"{name}.reference.npz"), **ref)
        size = sum(os.path.getsize(os.path.join(out_dir, f)) for f in os.listdir(out_dir))
        print(f"{name}: {size / 1024:.0f} KiB, greedy {ref['greedy'].tolist()}")


if __name__ == "__main__":
    main()
