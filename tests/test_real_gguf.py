"""The real Qwen2.5-Coder-0.5B-Instruct GGUF (llama.cpp's Q4_K_M mix: Q5_0, Q8_0, Q4_K, Q6_K,
F32), run by the NumPy reference. Runs when the file is in the cache (`qwen-np fetch`; CI
fetches it before the tests)."""

import importlib.util
import json
import os

import numpy as np
import pytest

from conftest import FIXTURES
from qwen_np.apps.fetch import default_model_path, is_fetched

pytestmark = [pytest.mark.real_model,
              pytest.mark.skipif(not is_fetched(), reason="run `qwen-np fetch` first")]
GGUF_FIX = os.path.join(FIXTURES, "gguf")

# llama.cpp's greedy continuation (anchors: raw prompt, no template, no BOS, 48 new tokens)
LLAMA_CPP_FIBONACCI = '''def fibonacci(n):
    if n <= 0:
        return "Invalid input"
    elif n == 1:
        return 0
    elif n == 2:
        return 1
    else:
        a, b = 0'''


@pytest.fixture(scope="module")
def model():
    import qwen_np
    return qwen_np.load(default_model_path())


def test_every_tensor_dequantizes_like_gguf_py(model):
    gguf = pytest.importorskip("gguf")
    from qwen_np.tensors.dense import as_compute
    from qwen_np.formats.gguf_qwen import hf_name
    from qwen_np.tensors.quantized import QuantizedTensor, dequantize
    from qwen_np.tensors.mapped import MappedQuantizedRows
    reader = gguf.GGUFReader(default_model_path())
    w = model.weights
    by_name = {"model.embed_tokens.weight": w.embed, "model.norm.weight": w.norm,
               "lm_head.weight": w.lm_head}
    attrs = {"input_layernorm.weight": "attn_norm", "self_attn.q_proj.weight": "q",
             "self_attn.k_proj.weight": "k", "self_attn.v_proj.weight": "v",
             "self_attn.o_proj.weight": "o", "self_attn.q_proj.bias": "q_bias",
             "self_attn.k_proj.bias": "k_bias", "self_attn.v_proj.bias": "v_bias",
             "post_attention_layernorm.weight": "mlp_norm", "mlp.gate_proj.weight": "gate",
             "mlp.up_proj.weight": "up", "mlp.down_proj.weight": "down"}
    types = set()
    for t in reader.tensors:
        name = hf_name(t.name)
        if name in by_name:
            ours = by_name[name]
        else:
            parts = name.split(".")
            ours = getattr(w.layers[int(parts[2])], attrs[".".join(parts[3:])])
        theirs = gguf.quants.dequantize(t.data, t.tensor_type)
        if isinstance(ours, MappedQuantizedRows):      # the untied embedding: converted on lookup
            ours = ours.rows(np.arange(ours.shape[0]))
        got = dequantize(ours) if isinstance(ours, QuantizedTensor) else as_compute(ours, np.float32)
        assert got.shape == theirs.shape and np.array_equal(got, theirs), t.name
        types.add(t.tensor_type.name)
    assert types == {"F32", "Q5_0", "Q8_0", "Q4_K", "Q6_K"}


def test_model_in_memory_within_15_percent_of_the_file(model):
    from qwen_np.formats.gguf import read_gguf
    _, tensors = read_gguf(default_model_path())
    file_bytes = sum(t.data.nbytes for t in tensors.values())
    w = model.weights
    held = sum(int(x.nbytes) for layer in w.layers for x in vars(layer).values() if x is not None)
    held += int(w.lm_head.nbytes) + int(w.norm.nbytes)
    assert file_bytes == 485_452_288
    assert held / file_bytes < 1.15
    # the untied Q5_0 embedding stays in the mapped file; rows are converted on lookup
    assert type(w.embed).__name__ == "MappedQuantizedRows"


def test_tokenizer_matches_transformers_gguf_tokenizer(model):
    with open(os.path.join(GGUF_FIX, "tokenizer_ids.json"), encoding="utf-8") as f:
        expected = json.load(f)
    assert len(expected) >= 10
    for text, ids in expected.items():
        assert model.tokenizer.encode(text) == ids, text
        assert model.tokenizer.decode(ids) == text


def test_last_position_logits_match_transformers(model):
    ref = np.load(os.path.join(GGUF_FIX, "real_model_logits.npz"))
    k = 0
    while f"ids_{k}" in ref.files:
        last = model.logits(ref[f"ids_{k}"])[-1]
        want = ref[f"logits_{k}"]
        got = last[ref[f"index_{k}"]]
        assert np.max(np.abs(got - want)) / np.max(np.abs(want)) < 1e-4
        assert np.argmax(last) == ref[f"index_{k}"][0]          # same top token
        k += 1
    assert k == 3


def test_greedy_fibonacci_equals_llama_cpp(model):
    tok = model.tokenizer
    prompt = tok.encode("def fibonacci(n):")
    assert prompt == [750, 75698, 1445, 1648]
    new = model.generate(prompt, max_new_tokens=48)
    assert len(new) == 48
    assert tok.decode(prompt + new) == LLAMA_CPP_FIBONACCI
    with open(os.path.join(GGUF_FIX, "real_model_greedy.json")) as f:
        assert new == json.load(f)["new_ids"]                   # transformers' greedy ids too


@pytest.mark.skipif(importlib.util.find_spec("numba") is None, reason="numba not installed")
def test_numba_backend_on_the_real_model(model):
    """The Numba kernels against the NumPy reference on the real file: last-position logits
    within 1e-4 relative, and llama.cpp's greedy 48 tokens."""
    import qwen_np
    fast = qwen_np.load(default_model_path(), backend="numba")
    ref = np.load(os.path.join(GGUF_FIX, "real_model_logits.npz"))
    for k in range(3):
        ids = ref[f"ids_{k}"]
        a, b = fast.logits(ids)[-1], model.logits(ids)[-1]
        assert np.max(np.abs(a - b)) / np.max(np.abs(b)) < 1e-4
    prompt = fast.tokenizer.encode("def fibonacci(n):")
    new = fast.generate(prompt, max_new_tokens=48)
    assert fast.tokenizer.decode(prompt + new) == LLAMA_CPP_FIBONACCI
