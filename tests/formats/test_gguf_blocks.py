"""Every GGUF block type against gguf-py's own `gguf.quants.dequantize` (llama.cpp's Python
reference), bit for bit."""

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as T  # noqa: E402

from qwen_np.formats.gguf_blocks import BLOCK_TYPES, block_floats, block_rows_to_canonical  # noqa: E402
from qwen_np.tensors.quantized import dequantize, dequantize_rows  # noqa: E402

rng = np.random.default_rng(0)
LEGACY = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"]          # gguf-py can quantize these
K_QUANTS = {"Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}  # offsets of their f16 fields
TYPE_ID = {v[0]: k for k, v in BLOCK_TYPES.items()}


def random_k_blocks(name, rows, n_blocks):
    """Random bytes, with the float16 super-block scales set to finite values."""
    size = BLOCK_TYPES[TYPE_ID[name]][2]
    b = rng.integers(0, 256, (rows, n_blocks, size), dtype=np.uint8)
    for at in K_QUANTS[name]:
        d = rng.uniform(-0.05, 0.05, (rows, n_blocks)).astype(np.float16)
        b[..., at:at + 2] = d.view(np.uint8).reshape(rows, n_blocks, 2)
    return b.reshape(rows, n_blocks * size)


@pytest.mark.parametrize("name", LEGACY)
@pytest.mark.parametrize("rows,n_blocks", [(1, 1), (3, 5), (7, 2)])
def test_legacy_blocks_bit_identical(name, rows, n_blocks):
    w = (rng.standard_normal((rows, 32 * n_blocks)) * rng.uniform(0.01, 5)).astype(np.float32)
    raw = gguf.quants.quantize(w, T[name])
    qt = block_rows_to_canonical(raw, TYPE_ID[name], w.shape, rows_per_chunk=2)
    assert np.array_equal(dequantize(qt), gguf.quants.dequantize(raw, T[name]))


@pytest.mark.parametrize("name", sorted(K_QUANTS))
@pytest.mark.parametrize("rows,n_blocks", [(1, 1), (5, 3)])
def test_k_quant_blocks_bit_identical(name, rows, n_blocks):
    raw = random_k_blocks(name, rows, n_blocks)
    qt = block_rows_to_canonical(raw, TYPE_ID[name], (rows, 256 * n_blocks), rows_per_chunk=2)
    ref = gguf.quants.dequantize(raw, T[name])
    assert np.isfinite(ref).all()
    assert np.array_equal(dequantize(qt), ref)
    assert np.array_equal(dequantize_rows(qt, np.array([rows - 1, 0])), ref[[rows - 1, 0]])


def test_q4_0_hand_worked():
    # d = 0.5; qs[0] = 0x21: element 0 = (1 - 8) * 0.5 = -3.5, element 16 = (2 - 8) * 0.5 = -3
    block = np.zeros(18, np.uint8)
    block[0:2] = np.array([0.5], np.float16).view(np.uint8)
    block[2] = 0x21
    w = dequantize(block_rows_to_canonical(block[None], TYPE_ID["Q4_0"], (1, 32)))[0]
    assert w[0] == -3.5 and w[16] == -3.0 and w[1] == -4.0


def test_q6_k_hand_worked():
    # d = 1, scales all 1; ql[0] = 0x21, qh[0] = 0b11_10_01_00:
    # element 0: low 1 | high 0 << 4 = 1 -> 1 - 32 = -31;  element 64: low 2 | high 2 << 4 = 34 -> 2
    # element 32: ql[32] low 0 | high 1 << 4 = 16 -> -16; element 96: 0 | 3 << 4 = 48 -> 16
    block = np.zeros(210, np.uint8)
    block[0] = 0x21
    block[128] = 0b11100100
    block[192:208] = 1
    block[208:210] = np.array([1.0], np.float16).view(np.uint8)
    w = dequantize(block_rows_to_canonical(block[None], TYPE_ID["Q6_K"], (1, 256)))[0]
    assert (w[0], w[32], w[64], w[96], w[1]) == (-31, -16, 2, 16, -32)


@pytest.mark.parametrize("name,file_bytes,memory_bytes", [
    ("Q4_0", 18, 20), ("Q4_1", 20, 20), ("Q5_0", 22, 24), ("Q5_1", 24, 24), ("Q8_0", 34, 36)])
def test_what_each_legacy_type_costs(name, file_bytes, memory_bytes):
    w = rng.standard_normal((4, 32 * 8)).astype(np.float32)
    raw = gguf.quants.quantize(w, T[name])
    qt = block_rows_to_canonical(raw, TYPE_ID[name], w.shape)
    assert raw.nbytes == 32 * file_bytes and qt.nbytes == 32 * memory_bytes


@pytest.mark.parametrize("name,memory_bytes", [("Q4_K", 192), ("Q5_K", 224), ("Q6_K", 320)])
def test_what_each_k_type_costs(name, memory_bytes):
    raw = random_k_blocks(name, 2, 3)
    qt = block_rows_to_canonical(raw, TYPE_ID[name], (2, 768))
    assert qt.nbytes == 6 * memory_bytes


@pytest.mark.parametrize("name", LEGACY)
def test_block_floats_of_legacy_types_are_their_scales_and_mins(name):
    """block_floats (what formats/open.py checks for NaN and inf in a table left in its
    blocks) reads d as the converter does, and m where the type has one: a legacy block is
    one group, whose scale is d and whose offset (Q4_1, Q5_1) is m."""
    w = rng.standard_normal((3, 32 * 4)).astype(np.float32)
    raw = gguf.quants.quantize(w, T[name])
    qt = block_rows_to_canonical(raw, TYPE_ID[name], w.shape)
    f = block_floats(raw, TYPE_ID[name])                              # [3, 4, 1 or 2]
    assert np.array_equal(f[..., 0], qt.scale)
    if f.shape[-1] == 2:
        assert np.array_equal(f[..., 1], qt.offset)


@pytest.mark.parametrize("name", sorted(K_QUANTS))
def test_block_floats_of_k_types_are_d_and_dmin(name):
    raw = random_k_blocks(name, 2, 3)
    blocks = raw.reshape(2, 3, -1)
    f = block_floats(raw, TYPE_ID[name])                              # [2, 3, 2 or 1]
    for k, at in enumerate(K_QUANTS[name]):
        assert np.array_equal(f[..., k], blocks[..., at:at + 2].copy().view(np.float16)[..., 0])
