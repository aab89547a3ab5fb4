import json

import pytest

from qwen_np.config import config_from_hf_dict, read_hf_config
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


@pytest.mark.parametrize("model_type", ["llama", "qwen2_moe", "qwen3_moe", None])
def test_unsupported_model_type_names_what_is_supported(model_type):
    with pytest.raises(UnsupportedModel, match="supported: qwen, qwen2, qwen3"):
        config_from_hf_dict({**QWEN25_05B, "model_type": model_type})


def test_unsupported_rope_scaling_and_sliding_window():
    with pytest.raises(UnsupportedModel, match="yarn"):
        config_from_hf_dict({**QWEN25_05B, "rope_scaling": {"type": "yarn", "factor": 4.0}})
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
