"""The original Qwen (model_type "qwen") against Qwen's own modeling_qwen.py: the fixtures in
tests/fixtures/qwen1 and their expected outputs were made by tools/make_qwen1_fixtures.py with
Qwen's code (float32, and float64 throughout). Both backends run every model."""

import json
import os

import numpy as np
import pytest

import qwen_np
from conftest import FIXTURES, rel_err
from qwen_np.cache import quantize_qwen_v1_chunk
from qwen_np.model import forward
from qwen_np.quant import QuantizedTensor, dequantize

QWEN1 = os.path.join(FIXTURES, "qwen1")
EXACT = ["qwen1-f32-ntk-logn", "qwen1-bf16-rotary-half", "qwen1-f16-early-keys",
         "qwen1-gptq-int4"]
CACHE_INT8 = "qwen1-f32-cache-int8"
BACKENDS = ["numpy", "numba"]


def path(name):
    return os.path.join(QWEN1, name)


def reference(name):
    return np.load(path(name) + ".reference.npz")


def test_the_fixtures_cover_the_variants():
    configs = {n: qwen_np.load(path(n)).config for n in EXACT + [CACHE_INT8]}
    assert all(c.model_type == "qwen" for c in configs.values())
    assert configs["qwen1-bf16-rotary-half"].rope_dim == 6          # rotary_pct 0.5 of 12
    assert configs["qwen1-f32-ntk-logn"].dynamic_ntk and configs["qwen1-f32-ntk-logn"].logn_attn
    early = configs["qwen1-f16-early-keys"]
    assert not early.dynamic_ntk and not early.logn_attn
    assert (early.hidden_size, early.intermediate_size, early.vocab_size) == (48, 80, 320)
    assert configs[CACHE_INT8].kv_cache_quantization
    assert all(c.seq_length == 8 for c in configs.values())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", EXACT)
def test_float32_logits_match_qwens_code(name, backend):
    """Prompts shorter (5) and longer (19: NTK alpha 7, logn on) than seq_length 8."""
    ref = reference(name)
    model = qwen_np.load(path(name), backend=backend)
    for k in (0, 1):
        logits = model.logits(ref[f"ids_{k}"])
        assert rel_err(logits, ref[f"logits32_{k}"]) < 1e-5
        assert ref[f"logits32_{k}"].std() > 0.5


@pytest.mark.parametrize("name", EXACT)
def test_float64_logits_match_qwens_code_in_float64(name):
    ref = reference(name)
    model = qwen_np.load(path(name), dtype="float64")
    for k in (0, 1):
        logits = model.logits(ref[f"ids_{k}"])
        assert logits.dtype == np.float64
        assert rel_err(logits, ref[f"logits64_{k}"]) < 1e-10


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", EXACT)
def test_greedy_continuations_match_qwens_code(name, backend):
    """A 5-token prompt decoded past seq_length (alpha 1 kept, logn acting), and a 12-token
    prompt (alpha 3, kept while decoding)."""
    ref = reference(name)
    model = qwen_np.load(path(name), backend=backend)
    for prompt, greedy in (("prompt", "greedy"), ("prompt_long", "greedy_long")):
        new = model.generate(ref[prompt], max_new_tokens=len(ref[greedy]), stop_ids=[])
        assert new == ref[greedy].tolist()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", EXACT)
def test_a_second_chunk_keeps_the_alpha_of_the_first_prefill(name, backend):
    """chunk_b after a prefill of chunk_a: Qwen keeps alpha 1 (from 6 tokens) although the
    11 keys pass seq_length; one prefill of all 11 would use alpha 3."""
    ref = reference(name)
    model = qwen_np.load(path(name), backend=backend)
    cache = model.new_cache(len(ref["chunk_a"]) + len(ref["chunk_b"]))
    forward(model.config, model.weights, model.backend, ref["chunk_a"].tolist(), cache)
    logits = model.backend.to_numpy(
        forward(model.config, model.weights, model.backend, ref["chunk_b"].tolist(), cache))
    assert rel_err(logits, ref["chunk_logits"]) < 1e-5
    if model.config.dynamic_ntk:
        assert rel_err(ref["chunk_full_last_logits"], ref["chunk_last_logits"]) > 1e-2


def test_gptq_int4_stays_packed_and_dequantizes_as_the_reference():
    ref = reference("qwen1-gptq-int4")
    model = qwen_np.load(path("qwen1-gptq-int4"))
    layer0, layer1 = model.weights.layers[0], model.weights.layers[1]
    assert all(isinstance(w, QuantizedTensor) for w in (layer0.q, layer0.k, layer0.v, layer0.o,
                                                         layer0.gate, layer0.up, layer0.down))
    c_attn = np.concatenate([dequantize(w) for w in (layer0.q, layer0.k, layer0.v)])
    assert np.array_equal(c_attn, ref["dequant.transformer.h.0.attn.c_attn"])
    assert np.array_equal(dequantize(layer1.gate), ref["dequant.transformer.h.1.mlp.w2"])
    assert model.weights.embed.dtype == np.float16


def test_qwen_cache_quantizer_is_qwens_quantize_cache_v():
    """Bit for bit on the same inputs: codes (truncated, not rounded), scales and zeros."""
    ref = np.load(os.path.join(QWEN1, "kv-quantizer.npz"))
    for k in range(3):
        codes, scale, zero = quantize_qwen_v1_chunk(ref[f"x_{k}"])
        assert np.array_equal(codes, ref[f"codes_{k}"])
        assert np.array_equal(scale, ref[f"scale_{k}"]) and np.array_equal(zero, ref[f"zero_{k}"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_use_cache_quantization_matches_qwens_code(backend):
    """Qwen truncates x / scale + zero, and each head's largest value lands on 254.99.. or
    255.0.. depending on the last bit of the keys, so any two float implementations (Qwen's
    own float32 and float64 runs included: 2e-3 apart) differ by a step on a few codes. The
    logits must be far closer to Qwen's than the quantization's own effect, and the greedy
    tokens equal."""
    ref = reference(CACHE_INT8)
    model = qwen_np.load(path(CACHE_INT8), backend=backend)
    assert model.kv_cache == "int8"
    unquantized = qwen_np.load(path(CACHE_INT8), backend=backend, kv_cache="float32")
    for k in (0, 1):
        ids = ref[f"ids_{k}"]
        err = rel_err(model.logits(ids), ref[f"logits32_{k}"])
        effect = rel_err(unquantized.logits(ids), ref[f"logits32_{k}"])
        assert err < 1e-2 and err < effect / 3, (err, effect)
    for prompt, greedy in (("prompt", "greedy"), ("prompt_long", "greedy_long")):
        new = model.generate(ref[prompt], max_new_tokens=len(ref[greedy]), stop_ids=[])
        assert new == ref[greedy].tolist()


def test_use_cache_quantization_in_float64_matches_qwens_float64_run():
    ref = reference(CACHE_INT8)
    model = qwen_np.load(path(CACHE_INT8), dtype="float64")
    for k in (0, 1):
        assert rel_err(model.logits(ref[f"ids_{k}"]), ref[f"logits64_{k}"]) < 1e-2


# -- the chat prompt and tokenizer against Qwen's tokenization_qwen.py / make_context -------

@pytest.fixture(scope="module")
def v1_tokenizer():
    from qwen_np.fetch import QWEN_TIKTOKEN, fetch_file
    return qwen_np.load_tokenizer(fetch_file(QWEN_TIKTOKEN))


def make_context_cases():
    with open(os.path.join(QWEN1, "make_context.json"), encoding="utf-8") as f:
        return json.load(f)


def test_chat_prompt_ids_are_make_contexts(v1_tokenizer):
    from qwen_np.chat import chat_prompt_ids
    fixture = make_context_cases()
    assert len(fixture["cases"]) >= 5
    for case in fixture["cases"]:
        ids = chat_prompt_ids(v1_tokenizer, "qwen", case["query"], case["system"],
                              [tuple(turn) for turn in case["history"]])
        assert ids == case["ids"], case["query"]
        assert v1_tokenizer.decode(ids) == case["raw_text"]


def test_encode_and_decode_are_qwens_tokenizers(v1_tokenizer):
    for case in make_context_cases()["encode"]:
        assert v1_tokenizer.encode(case["text"]) == case["ids"], case["text"]
        assert v1_tokenizer.decode(case["ids"]) == case["decoded"]


def test_chat_stops_at_qwens_stop_words(tmp_path, v1_tokenizer):
    """make_context's stop words (<|im_end|>, <|im_start|>) and <|endoftext|>."""
    import shutil
    from qwen_np.fetch import QWEN_TIKTOKEN, fetch_file
    d = tmp_path / "m"
    shutil.copytree(path("qwen1-f32-ntk-logn"), d)
    shutil.copy(fetch_file(QWEN_TIKTOKEN), d / "qwen.tiktoken")
    stop = qwen_np.load(str(d)).stop_ids()
    expected = {i for pair in make_context_cases()["stop_words_ids"] for i in pair}
    assert expected | {151643} <= set(stop)
