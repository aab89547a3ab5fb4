"""Quantized checkpoints end to end: our quantizer's output, loading, errors."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import qwen_np
from conftest import fixture_path, rel_err
from qwen_np.errors import FormatError, UnsupportedModel
from qwen_np.formats.safetensors import open_safetensors, write_safetensors
from qwen_np.tensors.quantized import QuantizedTensor, dequantize
from qwen_np.apps.quantize import quantize_folder

SRC = fixture_path("qwen2-tied-f32")        # in_features 48 and 80: multiples of 8 and 16


@pytest.fixture(scope="module")
def q4(tmp_path_factory):
    dst = str(tmp_path_factory.mktemp("q") / "q4")
    quantize_folder(SRC, dst, bits=4, group_size=16, sym=True)
    return dst


def test_quantized_model_holds_only_codes_scales_offsets(q4):
    m = qwen_np.load(q4)
    for layer in m.weights.layers:
        for name in ("q", "k", "v", "o", "gate", "up", "down"):
            t = getattr(layer, name)
            assert isinstance(t, QuantizedTensor) and t.bits == 4 and t.codes.dtype == np.uint8
            assert t.codes.nbytes == t.shape[0] * t.shape[1] // 2


def test_quantized_model_equals_its_dequantized_float_twin(q4):
    """The packed model computes what the float model with dequantized weights computes."""
    import copy
    from qwen_np.model.forward import forward
    ids = np.load(fixture_path("qwen2-tied-f32") + ".reference.npz")["ids_1"]
    m = qwen_np.load(q4)
    twin = copy.deepcopy(m.weights)
    for layer in twin.layers:
        for name in ("q", "k", "v", "o", "gate", "up", "down"):
            setattr(layer, name, dequantize(getattr(layer, name)))
    want = forward(m.config, twin, m.backend, ids)
    assert rel_err(m.logits(ids), want) < 1e-5


def test_8bit_logits_track_the_float_model(tmp_path):
    ids = np.load(fixture_path("qwen2-tied-f32") + ".reference.npz")["ids_1"]
    quantize_folder(SRC, str(tmp_path / "q8"), bits=8, group_size=16, sym=True)
    assert rel_err(qwen_np.load(str(tmp_path / "q8")).logits(ids),
                   qwen_np.load(SRC).logits(ids)) < 0.05


def test_quantized_linear_equals_dequantized_float_product(q4):
    m = qwen_np.load(q4)
    w = m.weights.layers[0].up
    x = np.random.default_rng(0).standard_normal((5, w.shape[1])).astype(np.float32)
    want = x.astype(np.float64) @ dequantize(w, np.float64).T
    assert rel_err(m.backend.linear(x, w), want) < 1e-6


def test_output_is_a_gptq_v1_checkpoint(q4):
    cfg = json.load(open(os.path.join(q4, "config.json")))
    qc = cfg["quantization_config"]
    assert (qc["quant_method"], qc["bits"], qc["group_size"], qc["sym"], qc["checkpoint_format"]) \
        == ("gptq", 4, 16, True, "gptq")
    t = open_safetensors(os.path.join(q4, "model.safetensors"))
    p = "model.layers.0.mlp.down_proj."
    assert t[p + "qweight"].dtype == np.int32 and t[p + "qweight"].shape == (80 // 8, 48)
    assert t[p + "scales"].dtype == np.float16 and t[p + "scales"].shape == (80 // 16, 48)
    assert np.all(t[p + "qzeros"] == 0x77777777)  # symmetric: zero 8 stored as 7
    assert t[p + "g_idx"].tolist() == [i // 16 for i in range(80)]
    assert t["model.embed_tokens.weight"].dtype == np.float16


def test_asym_and_8bit_round_trip_through_the_file(tmp_path):
    for bits, sym in ((4, False), (8, True), (8, False)):
        dst = str(tmp_path / f"q{bits}{sym}")
        quantize_folder(SRC, dst, bits=bits, group_size=16, sym=sym)
        m = qwen_np.load(dst)
        w = m.weights.layers[1].gate
        assert w.bits == bits
        src = open_safetensors(os.path.join(SRC, "model.safetensors"))
        orig = src["model.layers.1.mlp.gate_proj.weight"]
        step = w.scale.astype(np.float32)[:, np.arange(orig.shape[1]) // 16]
        assert np.all(np.abs(dequantize(w) - orig) <= 0.5 * step * (1 + 1e-6))


def test_cli_quantize_with_progress(tmp_path):
    r = subprocess.run([sys.executable, "-m", "qwen_np", "quantize", SRC, str(tmp_path / "o"),
                        "--bits", "4", "--group-size", "16", "--asym"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "14/14" in r.stderr and "quantized to 4 bits" in r.stdout
    r = subprocess.run([sys.executable, "-m", "qwen_np", "run", "-m", str(tmp_path / "o"), "-p",
                        "hello", "-n", "4"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


# -- bad input: one-line errors naming the file and tensor ----------------------------------

def edited_copy(q4, tmp_path, config_edit=None, tensor_edit=None):
    d = tmp_path / "bad"
    shutil.copytree(q4, d)
    if config_edit:
        cfg = json.loads((d / "config.json").read_text())
        config_edit(cfg["quantization_config"])
        (d / "config.json").write_text(json.dumps(cfg))
    if tensor_edit:
        t = {k: np.array(v) for k, v in open_safetensors(str(d / "model.safetensors")).items()}
        tensor_edit(t)
        write_safetensors(str(d / "model.safetensors"), t)
    return str(d)


def test_unknown_quant_method(q4, tmp_path):
    d = edited_copy(q4, tmp_path, config_edit=lambda q: q.update(quant_method="bitnet"))
    with pytest.raises(UnsupportedModel, match="config.json: unknown quant_method 'bitnet'"):
        qwen_np.load(d)


def test_bits_other_than_4_or_8(q4, tmp_path):
    d = edited_copy(q4, tmp_path, config_edit=lambda q: q.update(bits=3))
    with pytest.raises(UnsupportedModel, match="3-bit gptq is not supported"):
        qwen_np.load(d)


def test_qweight_shape_disagreeing_with_config(q4, tmp_path):
    name = "model.layers.1.self_attn.q_proj.qweight"
    d = edited_copy(q4, tmp_path, tensor_edit=lambda t: t.update({name: t[name][:-1]}))
    with pytest.raises(FormatError, match=rf"tensor {name} has shape \[5, 48\]"):
        qwen_np.load(d)


def test_missing_scales(q4, tmp_path):
    name = "model.layers.0.mlp.up_proj.scales"
    d = edited_copy(q4, tmp_path, tensor_edit=lambda t: t.pop(name))
    with pytest.raises(FormatError, match=f"missing tensor {name}"):
        qwen_np.load(d)


def test_zero_bias_quirk_is_tolerated_nonzero_is_not(q4, tmp_path):
    name = "model.layers.0.mlp.down_proj.bias"   # AutoGPTQ before 2024 wrote these, all zero
    d = edited_copy(q4, tmp_path, tensor_edit=lambda t: t.update({name: np.zeros(48, np.float16)}))
    qwen_np.load(d)
    shutil.rmtree(d)
    d = edited_copy(q4, tmp_path, tensor_edit=lambda t: t.update({name: np.ones(48, np.float16)}))
    with pytest.raises(FormatError, match=f"unexpected non-zero tensor {name}"):
        qwen_np.load(d)


def test_cli_exits_nonzero_with_one_line(q4, tmp_path):
    d = edited_copy(q4, tmp_path, config_edit=lambda q: q.update(quant_method="bitnet"))
    r = subprocess.run([sys.executable, "-m", "qwen_np", "run", "-m", d, "-p", "x"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1
    assert "unknown quant_method" in r.stderr


def test_older_autogptq_layout_with_quantize_config_json_only(q4, tmp_path):
    """AutoGPTQ-era checkpoints (Qwen-7B-Chat-Int4) carry quantize_config.json and no
    quantization_config in config.json."""
    d = tmp_path / "old"
    shutil.copytree(q4, d)
    cfg = json.loads((d / "config.json").read_text())
    del cfg["quantization_config"]
    (d / "config.json").write_text(json.dumps(cfg))
    qc = json.loads((d / "quantize_config.json").read_text())
    qc.pop("checkpoint_format"), qc.pop("format")       # no format field: v1
    (d / "quantize_config.json").write_text(json.dumps(qc))
    ids = [3, 9, 27]
    assert np.array_equal(qwen_np.load(str(d)).logits(ids), qwen_np.load(q4).logits(ids))


def test_quantized_embedding_rows_are_dequantized_on_lookup():
    from qwen_np.backends import get_backend
    from qwen_np.tensors.rtn import quantize_rtn, rtn_to_canonical
    table = np.random.default_rng(4).standard_normal((50, 24)).astype(np.float32)
    qt = rtn_to_canonical(*quantize_rtn(table, 4, 8, True), 4, 8)
    rows = get_backend("numpy").embed(qt, [7, 7, 49, 0])
    assert np.array_equal(rows, dequantize(qt)[[7, 7, 49, 0]])
