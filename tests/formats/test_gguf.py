"""GGUF files written by gguf-py's GGUFWriter from the tiny fixtures: config, names, tensors,
tokenizer, and every kind of bad file."""

import os
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
pytest.importorskip("torch")
from gguf import GGMLQuantizationType as T  # noqa: E402

import qwen_np  # noqa: E402
from conftest import fixture_path, rel_err  # noqa: E402
from gguf_writer import write_gguf_from_hf  # noqa: E402
from qwen_np.errors import FormatError, UnsupportedModel  # noqa: E402
from qwen_np.formats.gguf_qwen import hf_name  # noqa: E402
from qwen_np.model.forward import forward  # noqa: E402
from qwen_np.model.weights import build_weights  # noqa: E402

SRC = fixture_path("qwen2-untied-bf16-sharded")     # in 32: every matrix quantizes to blocks
SRC3 = fixture_path("qwen3-headdim12-f32")


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("g") / "tiny-q8_0.gguf")
    return path, write_gguf_from_hf(SRC, path, T.Q8_0)


def test_config_from_metadata_equals_config_json(tiny_gguf):
    ours = qwen_np.load(tiny_gguf[0]).config
    hf = qwen_np.load(SRC).config
    for field in ("model_type", "vocab_size", "hidden_size", "intermediate_size",
                  "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
                  "rope_theta", "tie_word_embeddings", "qkv_bias", "qk_norm"):
        assert getattr(ours, field) == getattr(hf, field), field


def test_logits_equal_the_float_model_with_gguf_py_weights(tiny_gguf):
    """Independent weights: gguf-py's dequantization of every tensor, put into the float model."""
    path, expected = tiny_gguf
    m = qwen_np.load(path)
    twin = build_weights(m.config, {hf_name(k): v for k, v in expected.items()}, np.float32, "twin")
    ids = [5, 9, 100, 3, 77, 200, 31]
    assert rel_err(m.logits(ids), forward(m.config, twin, m.backend, ids)) < 1e-6


def test_qwen3_head_dim_from_key_length(tmp_path):
    path = str(tmp_path / "q3.gguf")
    write_gguf_from_hf(SRC3, path, T.Q8_0)
    m = qwen_np.load(path)
    assert m.config.head_dim == 12 and m.config.qk_norm and m.config.tie_word_embeddings
    ref = qwen_np.load(SRC3).logits([1, 2, 3])
    assert rel_err(m.logits([1, 2, 3]), ref) < 0.05        # Q8_0 of the same weights


def test_tokenizer_from_metadata_encodes_like_tokenizer_json(tiny_gguf):
    from qwen_np.runtime.tokenizer import Tokenizer
    ours = qwen_np.load(tiny_gguf[0]).tokenizer
    ref = Tokenizer.from_file(os.path.join(SRC, "tokenizer.json"))
    for text in ["def fibonacci(n):\n\treturn n", "Hello,  world! 你好 🙂 123",
                 "<|im_start|>user\nhi<|im_end|>\n"]:
        assert ours.encode(text) == ref.encode(text)
        assert ours.decode(ours.encode(text)) == text


def test_cli_runs_a_gguf(tiny_gguf):
    r = subprocess.run([sys.executable, "-m", "qwen_np", "run", "-m", tiny_gguf[0], "-p", "hello",
                        "-n", "4"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "qwen_np", "inspect", tiny_gguf[0]],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "Q8_0" in r.stdout


# -- bad files: one-line errors ---------------------------------------------------------------

def one_line_cli_error(path, *needles):
    r = subprocess.run([sys.executable, "-m", "qwen_np", "run", "-m", path, "-p", "x"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    for n in needles:
        assert n in lines[0]


def test_truncated_file(tiny_gguf, tmp_path):
    p = tmp_path / "cut.gguf"
    raw = open(tiny_gguf[0], "rb").read()
    p.write_bytes(raw[: len(raw) - 1000])
    with pytest.raises(FormatError, match="truncated: tensor"):
        qwen_np.load(str(p))
    one_line_cli_error(str(p), "cut.gguf", "truncated")
    p.write_bytes(raw[:300])
    with pytest.raises(FormatError, match="truncated GGUF header"):
        qwen_np.load(str(p))


def test_wrong_magic_and_version(tiny_gguf, tmp_path):
    raw = open(tiny_gguf[0], "rb").read()
    p = tmp_path / "bad.gguf"
    p.write_bytes(b"GGUX" + raw[4:])
    with pytest.raises(FormatError, match=r"bad.gguf: not a GGUF file \(wrong magic\)"):
        qwen_np.load(str(p))
    one_line_cli_error(str(p), "wrong magic")
    p.write_bytes(raw[:4] + struct.pack("<I", 4) + raw[8:])
    with pytest.raises(FormatError, match="unsupported GGUF version 4"):
        qwen_np.load(str(p))
    one_line_cli_error(str(p), "unsupported GGUF version 4")


@pytest.mark.parametrize("arch,message", [("llama", "unknown GGUF architecture 'llama'"),
                                          ("qwen", "'qwen' is not supported yet")])
def test_unsupported_architecture(tmp_path, arch, message):
    p = str(tmp_path / "a.gguf")
    write_gguf_from_hf(SRC, p, T.Q8_0, arch=arch)
    with pytest.raises(UnsupportedModel, match=message):
        qwen_np.load(p)
    one_line_cli_error(p, message)


def test_unsupported_tensor_type_names_tensor_and_type(tmp_path):
    p = str(tmp_path / "iq.gguf")
    # one IQ2_XS tensor (256 values per 74-byte block)
    write_gguf_from_hf(SRC, p, T.Q8_0, extra_tensor=("blk.0.ffn_extra.weight",
                                                     np.zeros((2, 74), np.uint8), T.IQ2_XS))
    with pytest.raises(UnsupportedModel, match="tensor blk.0.ffn_extra.weight has type IQ2_XS"):
        qwen_np.load(p)


def test_unexpected_tensor_is_named(tmp_path):
    p = str(tmp_path / "x.gguf")
    write_gguf_from_hf(SRC, p, T.Q8_0, extra_tensor=("blk.0.ffn_extra.weight",
                                                     np.zeros((2, 34), np.uint8), T.Q8_0))
    with pytest.raises(FormatError, match="unexpected tensor blk.0.ffn_extra.weight"):
        qwen_np.load(p)


def test_quantize_reads_a_float_gguf_and_refuses_a_quantized_one(tiny_gguf, tmp_path):
    from qwen_np.tensors.quantized import QuantizedTensor, dequantize
    from qwen_np.apps.quantize import quantize_folder
    f16 = str(tmp_path / "f16.gguf")
    expected = write_gguf_from_hf(SRC, f16, T.F16)
    out = str(tmp_path / "q")
    quantize_folder(f16, out, bits=8, group_size=32, sym=True)
    m = qwen_np.load(out)
    assert m.config == qwen_np.load(f16).config
    up = m.weights.layers[0].up
    assert isinstance(up, QuantizedTensor) and up.bits == 8
    step = up.scale.astype(np.float32).repeat(32, axis=1)
    assert np.all(np.abs(dequantize(up) - expected["blk.0.ffn_up.weight"]) <= 0.5 * step * 1.000001)
    assert m.tokenizer.encode("hello world") == qwen_np.load(f16).tokenizer.encode("hello world")
    with pytest.raises(FormatError, match="is already quantized"):
        quantize_folder(tiny_gguf[0], str(tmp_path / "q2"))
