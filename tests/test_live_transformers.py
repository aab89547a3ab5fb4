"""Live comparison: fresh random models built with transformers, saved, loaded by qwen-np.

Runs whenever torch and transformers are importable (CI installs both)."""

import numpy as np
import pytest

from conftest import HAVE_TRANSFORMERS, rel_err

pytestmark = [pytest.mark.live,
              pytest.mark.skipif(not HAVE_TRANSFORMERS, reason="needs torch and transformers")]

CASES = {
    # id: (model_type, config kwargs, storage dtype, sharded)
    "qwen2-gqa3-tied-f32": ("qwen2", dict(hidden=36, heads=6, kv_heads=2, tied=True), "float32", False),
    "qwen2-mha-untied-bf16-sharded": ("qwen2", dict(hidden=40, heads=2, kv_heads=2, tied=False),
                                      "bfloat16", True),
    "qwen2-headdim-decoupled-f16": ("qwen2", dict(hidden=24, heads=2, kv_heads=1, head_dim=20,
                                                  tied=False), "float16", False),
    "qwen3-gqa6-f32": ("qwen3", dict(hidden=48, heads=6, kv_heads=1, head_dim=10, tied=True),
                       "float32", False),
    "qwen3-bias-3layers-bf16": ("qwen3", dict(hidden=32, heads=2, kv_heads=1, head_dim=18, layers=3,
                                              tied=False, attention_bias=True), "bfloat16", True),
    # mixture of experts: top-1 of 5 with a shared expert, every third layer sparse; top-4 of
    # 7 renormalized, one layer kept dense
    "qwen2moe-top1-step3-f32": ("qwen2_moe", dict(hidden=24, heads=4, kv_heads=2, layers=3,
                                                  tied=True, moe=dict(
                                                      num_experts=5, num_experts_per_tok=1,
                                                      moe_intermediate_size=12,
                                                      shared_expert_intermediate_size=20,
                                                      decoder_sparse_step=3, qkv_bias=False)),
                                "float32", False),
    "qwen3moe-top4-bf16-sharded": ("qwen3_moe", dict(hidden=32, heads=2, kv_heads=1, head_dim=12,
                                                     layers=2, tied=False, moe=dict(
                                                         num_experts=7, num_experts_per_tok=4,
                                                         moe_intermediate_size=8,
                                                         mlp_only_layers=[0],
                                                         norm_topk_prob=True)),
                                   "bfloat16", True),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_fresh_random_model_matches_transformers(case, tmp_path):
    import transformers_oracle as oracle

    import qwen_np

    model_type, kw, dtype, shard = CASES[case]
    config = oracle.make_config(model_type, vocab=211, **kw)
    seed = sorted(CASES).index(case) + 100
    oracle.save_model(oracle.random_model(config, seed=seed), None, str(tmp_path), dtype, shard)
    ref32 = oracle.load_reference(str(tmp_path), "float32")
    ref64 = oracle.load_reference(str(tmp_path), "float64")
    ours32 = qwen_np.load(str(tmp_path))
    ours64 = qwen_np.load(str(tmp_path), dtype="float64")

    ids = np.random.default_rng(seed).integers(0, config.vocab_size, size=11).tolist()
    assert rel_err(ours32.logits(ids), oracle.reference_logits(ref32, ids)) < 1e-5
    assert rel_err(ours64.logits(ids), oracle.reference_logits(ref64, ids)) < 1e-10
    assert ours32.generate(ids[:4], max_new_tokens=12) == \
        oracle.reference_greedy(ref32, ids[:4], 12)
