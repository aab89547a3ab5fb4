"""qwen_np.oracle.ref, the stable single-op API, against the formats' own libraries and hand-worked
examples: GPTQ and AWQ tensors as stored in checkpoints written by GPTQModel and AutoAWQ
(their dequantized weights, tests/fixtures/quant), every GGUF block type against gguf-py, and
each op on a case small enough to work out by hand."""

import math
import os

import numpy as np
import pytest

from conftest import FIXTURES
from qwen_np import ref
from qwen_np.errors import FormatError
from qwen_np.formats.safetensors import open_safetensors

QUANT = os.path.join(FIXTURES, "quant")


def stored(name):
    """{tensor name: array} of a fixture checkpoint, as its file holds them."""
    return open_safetensors(os.path.join(QUANT, name, "model.safetensors"))


@pytest.mark.parametrize("name,bits,group,fmt", [
    ("gptqmodel-4bit-g32-descact-asym", 4, 32, "gptq"), ("gptqmodel-4bit-g32-sym", 4, 32, "gptq"),
    ("gptqmodel-8bit-g64-sym", 8, 64, "gptq"), ("qwen-np-4bit-g32-asym-v2", 4, 32, "gptq_v2")])
def test_gptq_equals_gptqmodel_bit_for_bit(name, bits, group, fmt):
    want = np.load(os.path.join(QUANT, name + ".reference.npz"))
    t = stored(name)
    checked = 0
    for key in want.files:
        if key.startswith("dequant."):
            m = key[len("dequant."):]
            got = ref.dequantize_gptq(t[m + ".qweight"], t[m + ".qzeros"], t[m + ".scales"],
                                      t[m + ".g_idx"], bits, group, fmt)
            assert got.dtype == np.float32 and np.array_equal(got, want[key]), key
            checked += 1
    assert checked == 8


def test_gptq_without_g_idx_is_in_order_groups():
    t = stored("gptqmodel-4bit-g32-sym")
    m = "model.layers.0.mlp.up_proj"
    assert np.array_equal(ref.dequantize_gptq(t[m + ".qweight"], t[m + ".qzeros"],
                                              t[m + ".scales"], None, 4, 32),
                          ref.dequantize_gptq(t[m + ".qweight"], t[m + ".qzeros"],
                                              t[m + ".scales"], t[m + ".g_idx"], 4, 32))


def test_awq_equals_autoawq_bit_for_bit():
    name = "autoawq-4bit-g32-gemm"
    want = np.load(os.path.join(QUANT, name + ".reference.npz"))
    t = stored(name)
    keys = [k for k in want.files if k.startswith("dequant.")]
    for key in keys:
        m = key[len("dequant."):]
        got = ref.dequantize_awq(t[m + ".qweight"], t[m + ".qzeros"], t[m + ".scales"], 4, 32)
        assert np.array_equal(got, want[key]), key
    assert len(keys) == 8


gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as T  # noqa: E402

LEGACY = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"]


@pytest.mark.parametrize("name", LEGACY)
def test_gguf_legacy_blocks_equal_gguf_py(name):
    rng = np.random.default_rng(len(name))
    w = (rng.standard_normal((3, 96)) * 2).astype(np.float32)
    raw = gguf.quants.quantize(w, T[name])
    want = gguf.quants.dequantize(raw, T[name])
    assert np.array_equal(ref.dequantize_gguf(raw, name, (3, 96)), want)
    assert np.array_equal(ref.dequantize_gguf(raw.ravel(), int(T[name]), (3, 96)), want)


@pytest.mark.parametrize("name,f16_at", [("Q4_K", (0, 2)), ("Q5_K", (0, 2)), ("Q6_K", (208,))])
def test_gguf_k_blocks_equal_gguf_py(name, f16_at):
    rng = np.random.default_rng(7)
    size = {"Q4_K": 144, "Q5_K": 176, "Q6_K": 210}[name]
    b = rng.integers(0, 256, (2, 2, size), dtype=np.uint8)
    for at in f16_at:
        b[..., at:at + 2] = rng.uniform(-0.05, 0.05, (2, 2)).astype(np.float16) \
            .view(np.uint8).reshape(2, 2, 2)
    raw = b.reshape(2, -1)
    assert np.array_equal(ref.dequantize_gguf(raw, name, (2, 512)),
                          gguf.quants.dequantize(raw, T[name]))


@pytest.mark.parametrize("name", ["F32", "F16", "BF16"])
def test_gguf_float_tensors(name):
    rng = np.random.default_rng(1)
    w = rng.standard_normal((4, 6)).astype(np.float32)
    raw = gguf.quants.quantize(w, T[name])
    assert np.array_equal(ref.dequantize_gguf(raw.view(np.uint8), name, (4, 6)),
                          gguf.quants.dequantize(raw, T[name]).astype(np.float32))


def test_gguf_errors_name_the_problem():
    with pytest.raises(FormatError, match="IQ2_XXS.*not one this version reads"):
        ref.dequantize_gguf(np.zeros(66, np.uint8), "IQ2_XXS", (1, 256))
    with pytest.raises(FormatError, match="Q4_0 tensor of shape \\[2, 64\\]"):
        ref.dequantize_gguf(np.zeros(71, np.uint8), "Q4_0", (2, 64))


def test_float64_on_request():
    x = np.array([[1.0, 2.0, 3.0]])
    for out in (ref.rms_norm(x, np.ones(3), dtype="float64"),
                ref.silu_mul(x, x, dtype="float64"),
                ref.linear(x, np.eye(3), dtype="float64")):
        assert out.dtype == np.float64
    assert ref.rms_norm(x, np.ones(3)).dtype == np.float32
    with pytest.raises(ValueError):
        ref.rms_norm(x, np.ones(3), dtype="float16")


def test_ops_on_hand_worked_cases():
    # RMSNorm of [3, 4]: mean square 12.5
    got = ref.rms_norm([[3.0, 4.0]], [1.0, 2.0], eps=0.0, dtype="float64")
    assert np.allclose(got, [[3 / math.sqrt(12.5), 8 / math.sqrt(12.5)]], rtol=1e-15)
    # RoPE: head_dim 2, position 1, theta any: a rotation of (1, 0) by 1 radian
    got = ref.rope([[[1.0, 0.0]]], [1], theta=10000.0, dtype="float64")
    assert np.allclose(got, [[[math.cos(1), math.sin(1)]]], rtol=1e-15)
    # partial rotary: the last two of four dims pass; the first pair rotates by position 2
    got = ref.rope([[[1.0, 0.0, 5.0, 6.0]]], [2], rotary_dim=2, dtype="float64")
    assert np.allclose(got, [[[math.cos(2), math.sin(2), 5.0, 6.0]]], rtol=1e-15)
    # NTK: base 10000 * 3^(4/2) for rotary_dim 4: inv_freq [1, 1/300]
    assert np.allclose(ref.rope_inv_freq(4, 10000.0, ntk_alpha=3.0), [1.0, 1 / 300.0], rtol=1e-15)
    # attention: one query at position 1 over two keys with scores 0 and ln 3 * sqrt(Dh)
    Dh = 4
    q = np.zeros((1, 1, Dh))
    q[0, 0, 0] = math.log(3) * math.sqrt(Dh)
    k = np.zeros((2, 1, Dh))
    k[1, 0, 0] = 1.0
    v = np.array([[[1.0, 0, 0, 0]], [[0, 1.0, 0, 0]]])
    got = ref.attention(q, k, v, start=1, dtype="float64")
    assert np.allclose(got, [[[0.25, 0.75, 0, 0]]], rtol=1e-15)
    # the same query at position 0 sees the first key only
    assert np.allclose(ref.attention(q, k, v, start=0, dtype="float64"), [[[1.0, 0, 0, 0]]])
    # GQA: two query heads share one KV head
    got = ref.attention(np.concatenate([q, q], axis=1), k, v, start=1, dtype="float64")
    assert np.allclose(got[0, 1], [0.25, 0.75, 0, 0])
    # SwiGLU: silu(0) = 0, silu(-1000) = -0, silu(2) = 2 / (1 + e^-2)
    got = ref.silu_mul([0.0, -1000.0, 2.0], [5.0, 1.0, 3.0])
    assert got[0] == 0 and got[1] == 0 and np.signbit(got[1])
    assert np.isclose(got[2], 3 * 2 / (1 + math.exp(-2)), rtol=1e-6)
    # linear with a bias, and with float16 weights converted as read
    got = ref.linear([[1.0, 2.0]], np.array([[1.0, 0.0], [0.5, 0.25]], np.float16), [10.0, 0.0])
    assert np.array_equal(got, np.array([[11.0, 1.0]], np.float32))


def test_linear_takes_quantized_weights():
    t = stored("gptqmodel-4bit-g32-sym")
    m = "model.layers.0.mlp.up_proj"
    w = ref.dequantize_gptq(t[m + ".qweight"], t[m + ".qzeros"], t[m + ".scales"],
                            t[m + ".g_idx"], 4, 32, dtype="float64")
    import qwen_np
    qt = qwen_np.load(os.path.join(QUANT, "gptqmodel-4bit-g32-sym")).weights.layers[0].up
    x = np.random.default_rng(0).standard_normal((3, w.shape[1]))
    assert np.allclose(ref.linear(x, qt, dtype="float64"), x @ w.T, rtol=1e-12, atol=1e-12)
