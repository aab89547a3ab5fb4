import json
import math

import numpy as np
import pytest

from conftest import HAVE_TRANSFORMERS
from qwen_np.model.config import config_from_hf_dict
from qwen_np.formats.hf_dir import read_hf_config
from qwen_np.errors import FormatError, UnsupportedModel

# Qwen2.5-0.5B's config.json, as published (older transformers spelling: top-level rope_theta)
QWEN25_05B = {
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 896,
    "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
    "num_key_value_heads": 2, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
    "max_position_embeddings": 32768, "sliding_window": 32768, "use_sliding_window": False,
    "max_window_layers": 24, "tie_word_embeddings": True, "bos_token_id": 151643,
    "eos_token_id": 151643, "vocab_size": 151936, "torch_dtype": "bfloat16",
}
# Qwen3-0.6B: head_dim 128 while hidden/heads = 64
QWEN3_06B = {
    "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": 1024,
    "intermediate_size": 3072, "num_hidden_layers": 28, "num_attention_heads": 16,
    "num_key_value_heads": 8, "head_dim": 128, "rms_norm_eps": 1e-6, "attention_bias": False,
    "rope_parameters": {"rope_theta": 1000000.0, "rope_type": "default"},
    "max_position_embeddings": 40960, "tie_word_embeddings": True, "bos_token_id": 151643,
    "eos_token_id": 151645, "vocab_size": 151936,
}


def test_qwen25_config():
    c = config_from_hf_dict(QWEN25_05B)
    assert (c.model_type, c.hidden_size, c.head_dim, c.num_key_value_heads) == ("qwen2", 896, 64, 2)
    assert c.rope_theta == 1e6 and c.tie_word_embeddings and c.qkv_bias and not c.qk_norm
    assert not c.o_bias and c.eos_token_ids == (151643,)


def test_qwen3_config_head_dim_and_rope_parameters():
    c = config_from_hf_dict(QWEN3_06B)
    assert c.head_dim == 128 and c.num_attention_heads * c.head_dim == 2048
    assert c.rope_theta == 1e6 and c.qk_norm and not c.qkv_bias and not c.o_bias


def test_qwen3_attention_bias_applies_to_all_four_projections():
    c = config_from_hf_dict({**QWEN3_06B, "attention_bias": True})
    assert c.qkv_bias and c.o_bias


def test_untied_and_eos_list():
    c = config_from_hf_dict({**QWEN25_05B, "tie_word_embeddings": False,
                             "eos_token_id": [151645, 151643]})
    assert not c.tie_word_embeddings and c.eos_token_ids == (151645, 151643)


@pytest.mark.parametrize("model_type", ["llama", "mixtral", "qwen2_vl", None])
def test_unsupported_model_type_names_what_is_supported(model_type):
    with pytest.raises(UnsupportedModel, match="supported: qwen, qwen2, qwen3, qwen2_moe, qwen3_moe"):
        config_from_hf_dict({**QWEN25_05B, "model_type": model_type})


# Qwen1.5-MoE-A2.7B's config.json, as published
QWEN15_MOE = {
    "architectures": ["Qwen2MoeForCausalLM"], "model_type": "qwen2_moe", "hidden_size": 2048,
    "intermediate_size": 5632, "num_hidden_layers": 24, "num_attention_heads": 16,
    "num_key_value_heads": 16, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
    "max_position_embeddings": 8192, "decoder_sparse_step": 1, "moe_intermediate_size": 1408,
    "shared_expert_intermediate_size": 5632, "num_experts_per_tok": 4, "num_experts": 60,
    "norm_topk_prob": False, "tie_word_embeddings": False, "vocab_size": 151936,
    "bos_token_id": 151643, "eos_token_id": 151643,
}
# Qwen3-30B-A3B's, as published
QWEN3_30B_A3B = {
    "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "hidden_size": 2048,
    "intermediate_size": 6144, "num_hidden_layers": 48, "num_attention_heads": 32,
    "num_key_value_heads": 4, "head_dim": 128, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
    "max_position_embeddings": 40960, "decoder_sparse_step": 1, "moe_intermediate_size": 768,
    "num_experts_per_tok": 8, "num_experts": 128, "norm_topk_prob": True,
    "mlp_only_layers": [], "attention_bias": False, "tie_word_embeddings": False,
    "vocab_size": 151936, "bos_token_id": 151643, "eos_token_id": 151645,
}


def test_moe_configs():
    a = config_from_hf_dict(QWEN15_MOE)
    assert (a.num_experts, a.num_experts_per_tok, a.moe_intermediate_size) == (60, 4, 1408)
    assert a.shared_expert_intermediate_size == 5632 and not a.norm_topk_prob and a.qkv_bias
    assert a.sparse_layers == tuple(range(24))
    b = config_from_hf_dict(QWEN3_30B_A3B)
    assert (b.num_experts, b.num_experts_per_tok, b.norm_topk_prob, b.head_dim) == (128, 8, True, 128)
    assert b.shared_expert_intermediate_size == 0 and b.qk_norm and not b.qkv_bias
    c = config_from_hf_dict({**QWEN15_MOE, "decoder_sparse_step": 3, "mlp_only_layers": [5]})
    assert c.sparse_layers == (2, 8, 11, 14, 17, 20, 23)
    with pytest.raises(FormatError, match="num_experts_per_tok 61 is larger than num_experts 60"):
        config_from_hf_dict({**QWEN15_MOE, "num_experts_per_tok": 61})


def test_yarn_in_both_spellings():
    qwen25 = config_from_hf_dict({**QWEN25_05B, "rope_scaling": {
        "factor": 4.0, "original_max_position_embeddings": 32768, "type": "yarn"}})
    qwen3 = config_from_hf_dict({**QWEN3_06B, "rope_parameters": {
        "rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0,
        "original_max_position_embeddings": 32768}})
    for c in (qwen25, qwen3):
        assert c.yarn.factor == 4.0 and c.yarn.original_max_position_embeddings == 32768
        assert (c.yarn.beta_fast, c.yarn.beta_slow, c.yarn.truncate) == (32.0, 1.0, True)
        assert c.yarn.attention_factor == pytest.approx(0.1 * math.log(4.0) + 1, rel=1e-15)
        assert c.rope_theta == 1e6
    assert config_from_hf_dict(QWEN25_05B).yarn is None


@pytest.mark.parametrize("rope_type", ["linear", "dynamic", "llama3", "longrope", "su"])
def test_other_rope_types_are_refused_by_name(rope_type):
    with pytest.raises(UnsupportedModel, match=f"rope type '{rope_type}' is not supported"):
        config_from_hf_dict({**QWEN25_05B, "rope_scaling": {"type": rope_type, "factor": 4.0}})


YARN_CASES = [
    {"factor": 4.0, "original_max_position_embeddings": 32768},
    {"factor": 2.0, "original_max_position_embeddings": 4096, "beta_fast": 16, "beta_slow": 2},
    {"factor": 8.0, "original_max_position_embeddings": 8192, "truncate": False},
    {"factor": 4.0, "original_max_position_embeddings": 32768, "attention_factor": 0.75},
    {"factor": 4.0, "original_max_position_embeddings": 32768, "mscale": 0.7,
     "mscale_all_dim": 0.5},
    {"factor": None, "original_max_position_embeddings": 10240},   # factor from the lengths
]


@pytest.mark.skipif(not HAVE_TRANSFORMERS, reason="needs torch and transformers")
@pytest.mark.parametrize("params", YARN_CASES)
def test_yarn_frequencies_and_factor_equal_transformers(params):
    """Our float64 inv_freq against transformers' _compute_yarn_parameters (float32)."""
    import transformers
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    from qwen_np.model.rope import config_inv_freq, cos_sin_factor
    rope = {"rope_type": "yarn", "rope_theta": 1e6, **params}
    hf = transformers.Qwen3Config(**{k: v for k, v in QWEN3_06B.items()
                                     if k not in ("architectures", "model_type", "rope_parameters")},
                                  rope_parameters=dict(rope))
    inv, factor = ROPE_INIT_FUNCTIONS["yarn"](hf)
    ours = config_from_hf_dict({**QWEN3_06B, "rope_parameters": rope})
    assert np.allclose(config_inv_freq(ours, ours.rope_theta), inv.double().numpy(), rtol=2e-7)
    assert cos_sin_factor(ours) == pytest.approx(factor, rel=1e-12)


def test_unsupported_rope_scaling_and_sliding_window():
    with pytest.raises(UnsupportedModel, match="sliding"):
        config_from_hf_dict({**QWEN25_05B, "use_sliding_window": True})


def test_missing_key_and_bad_json(tmp_path):
    d = dict(QWEN25_05B)
    del d["hidden_size"]
    with pytest.raises(FormatError, match="hidden_size"):
        config_from_hf_dict(d)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(FormatError, match="config.json: not valid JSON"):
        read_hf_config(str(tmp_path))


def test_generation_config_adds_eos_ids(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(QWEN25_05B))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [151645, 151643]}))
    assert read_hf_config(str(tmp_path)).eos_token_ids == (151643, 151645)


# The original Qwen's two config.json spellings, as published: Qwen-7B v1.1 (Qwen/Qwen-7B) and
# the first Qwen-7B-Chat (August 2023; legacy names n_embd, n_head, n_layer, ffn_hidden_size,
# padded_vocab_size, n_positions).
QWEN_7B = {
    "architectures": ["QWenLMHeadModel"], "model_type": "qwen", "hidden_size": 4096,
    "intermediate_size": 22016, "kv_channels": 128, "layer_norm_epsilon": 1e-06,
    "max_position_embeddings": 32768, "no_bias": True, "num_attention_heads": 32,
    "num_hidden_layers": 32, "rotary_emb_base": 10000, "rotary_pct": 1.0, "seq_length": 8192,
    "tie_word_embeddings": False, "use_dynamic_ntk": True, "use_logn_attn": True,
    "vocab_size": 151936, "bf16": False, "fp16": False, "fp32": False, "use_flash_attn": "auto",
}
QWEN_7B_CHAT_AUG_2023 = {
    "activation": "swiglu", "architectures": ["QWenLMHeadModel"], "bos_token_id": 151643,
    "eos_token_id": 151643, "ffn_hidden_size": 22016, "kv_channels": 128,
    "layer_norm_epsilon": 1e-06, "model_type": "qwen", "n_embd": 4096, "n_head": 32,
    "n_layer": 32, "n_positions": 6144, "no_bias": True, "padded_vocab_size": 151936,
    "rotary_emb_base": 10000, "rotary_pct": 1.0, "seq_length": 2048, "tie_word_embeddings": False,
    "vocab_size": 151936, "use_dynamic_ntk": True, "use_logn_attn": True,
}


@pytest.mark.parametrize("d", [QWEN_7B, QWEN_7B_CHAT_AUG_2023])
def test_qwen_v1_configs_in_both_spellings(d):
    c = config_from_hf_dict(d)
    assert (c.model_type, c.hidden_size, c.num_attention_heads, c.num_key_value_heads,
            c.head_dim, c.num_hidden_layers) == ("qwen", 4096, 32, 32, 128, 32)
    assert c.intermediate_size == 11008          # the config holds twice the MLP width
    assert c.vocab_size == 151936 and c.rope_theta == 10000 and c.rope_dim == 128
    assert c.qkv_bias and not c.o_bias and not c.tie_word_embeddings
    assert c.dynamic_ntk and c.logn_attn and not c.kv_cache_quantization
    assert c.seq_length == d["seq_length"]
    assert c.max_position_embeddings == d.get("max_position_embeddings", d.get("n_positions"))


@pytest.mark.parametrize("change, err, needle", [
    ({"seq_length": None}, FormatError, "missing required key 'seq_length'"),
    ({"kv_channels": 64}, UnsupportedModel, "kv_channels 64 x num_attention_heads 32 != hidden_size"),
    ({"rotary_pct": 0.01}, UnsupportedModel, "rotates 1 of 128 dims"),
    ({"rotary_pct": 1.5}, FormatError, "rotary_pct is 1.5"),
    ({"no_bias": False}, UnsupportedModel, "no_bias=false"),
    ({"intermediate_size": 22017}, FormatError, "intermediate_size 22017 is odd"),
    ({"use_logn_attn": "yes"}, FormatError, "use_logn_attn is 'yes'"),
])
def test_qwen_v1_config_errors(change, err, needle):
    d = {k: v for k, v in {**QWEN_7B, **change}.items() if v is not None}
    with pytest.raises(err, match=needle):
        config_from_hf_dict(d, "config.json")
