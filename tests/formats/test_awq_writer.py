"""formats/awq.py's writer (pack_awq, awq_from_codes) against its reader and AutoAWQ's bytes."""

import os

import numpy as np

from conftest import fixture_path
from qwen_np.formats.awq import awq_from_codes, awq_to_canonical, pack_awq, unpack_awq
from qwen_np.formats.safetensors import open_safetensors
from qwen_np.tensors.awq_grid import quantize_awq
from qwen_np.tensors.quantized import dequantize

rng = np.random.default_rng(9)


def test_pack_draws_the_interleave():
    codes = np.arange(8, dtype=np.uint8)[None]          # column c holds code c
    word = int(pack_awq(codes)[0, 0]) & 0xFFFFFFFF
    # nibble k holds column ORDER[k] = 0, 2, 4, 6, 1, 3, 5, 7
    assert [(word >> (4 * k)) & 0xF for k in range(8)] == [0, 2, 4, 6, 1, 3, 5, 7]


def test_writer_then_reader_gives_the_codes_back():
    w = rng.standard_normal((48, 96)).astype(np.float32)
    r = quantize_awq(w, 32)
    parts = awq_from_codes(r.q, r.zero, r.scale)
    assert parts["qweight"].dtype == np.int32 and parts["qweight"].shape == (96, 6)
    assert parts["qzeros"].shape == (3, 6) and parts["scales"].shape == (3, 48)
    assert np.array_equal(unpack_awq(parts["qweight"]), r.q.T)
    assert np.array_equal(unpack_awq(parts["qzeros"]), r.zero.T)
    t = awq_to_canonical("m", parts["qweight"], parts["qzeros"], parts["scales"], 4, 32, (48, 96))
    assert np.array_equal(dequantize(t), r.dequantize())


def test_packing_is_autoawqs_bit_for_bit():
    """AutoAWQ's own checkpoint, unpacked and packed again by us: the same int32 words."""
    d = fixture_path(os.path.join("quant", "autoawq-4bit-g32-gemm"))
    f = open_safetensors(os.path.join(d, "model.safetensors"))
    names = [n for n in f.keys() if n.endswith((".qweight", ".qzeros"))]
    assert len(names) == 28
    for name in names:
        words = np.asarray(f[name])
        assert np.array_equal(pack_awq(unpack_awq(words)), words), name
