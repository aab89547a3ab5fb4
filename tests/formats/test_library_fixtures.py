"""qwen-np against the formats' own libraries: checkpoints written by GPTQModel 7.7.0 and
AutoAWQ 0.2.9 (and our quantizer's, as GPTQModel loads them), with each library's dequantized
weights and float32 logits (tests/fixtures/quant, made by tools/make_quant_fixtures.py)."""

import os

import numpy as np
import pytest

import qwen_np
from conftest import FIXTURES, rel_err
from qwen_np.tensors.quantized import QuantizedTensor, dequantize

QUANT = os.path.join(FIXTURES, "quant")
NAMES = sorted(n for n in os.listdir(QUANT) if os.path.isdir(os.path.join(QUANT, n)))
ATTR = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o", "gate_proj": "gate",
        "up_proj": "up", "down_proj": "down"}


def test_fixture_set():
    assert NAMES == ["autoawq-4bit-g32-gemm", "gptqmodel-4bit-g32-descact-asym",
                     "gptqmodel-4bit-g32-sym", "gptqmodel-8bit-g64-sym",
                     "qwen-np-4bit-g32-asym-v2", "qwen-np-4bit-g32-sym"]


@pytest.mark.parametrize("name", NAMES)
def test_dequantized_weights_equal_the_library_bit_for_bit(name):
    """float32 equality: every library dequantizes s * (q - z) with float16 scales upcast to
    float32 here (GPTQModel's dequantize_weight on a float32-cast model; AutoAWQ's
    dequantize_gemm with float32 scales), which is exact; so is qwen-np's scale * q + offset."""
    ref = np.load(os.path.join(QUANT, name + ".reference.npz"))
    model = qwen_np.load(os.path.join(QUANT, name))
    checked = 0
    for key in ref.files:
        if not key.startswith("dequant."):
            continue
        parts = key.split(".")               # dequant.model.layers.<i>.<block>.<proj>
        w = getattr(model.weights.layers[int(parts[3])], ATTR[parts[-1]])
        assert isinstance(w, QuantizedTensor)
        got = dequantize(w, np.float32)
        assert got.shape == ref[key].shape
        assert np.array_equal(got, ref[key]), key
        checked += 1
    assert checked == 8


@pytest.mark.parametrize("name", NAMES)
def test_logits_match_the_library_forward_pass(name):
    ref = np.load(os.path.join(QUANT, name + ".reference.npz"))
    logits = qwen_np.load(os.path.join(QUANT, name)).logits(ref["ids"])
    assert ref["logits"].std() > 0.3
    assert rel_err(logits, ref["logits"]) < 1e-4


def test_act_order_fixture_really_is_act_order():
    w = qwen_np.load(os.path.join(QUANT, "gptqmodel-4bit-g32-descact-asym")).weights.layers[0].down
    assert w.perm is not None and not np.array_equal(w.perm, np.arange(w.shape[1]))
    assert w.offset.dtype == np.float32    # asymmetric zeros: -scale * zero needs float32


def test_8bit_fixture_holds_a_byte_per_code():
    w = qwen_np.load(os.path.join(QUANT, "gptqmodel-8bit-g64-sym")).weights.layers[0].up
    assert w.bits == 8 and w.codes.shape == w.shape and w.group_size == 64
