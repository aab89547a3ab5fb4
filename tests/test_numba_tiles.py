"""The Numba backend's row-tile layout (backends/numba/tiles.py): the re-laying itself
against NumPy's transpose, the float16 decoding against NumPy's, and `prepare`d matrices
(re-laid in place or copied, padded or not) against the NumPy reference ops."""

import copy
import importlib.util

import numpy as np
import pytest

from conftest import rel_err
from qwen_np.backends import get_backend
from qwen_np.tensors.quantized import QuantizedTensor
from qwen_np.formats.gguf_blocks import BLOCK_TYPES, block_rows_to_canonical
from qwen_np.formats.gptq import gptq_to_canonical
from qwen_np.tensors.packing import pack_codes, pack_high_bits, pack_int32_words
from qwen_np.tensors.rtn import quantize_rtn, rtn_to_canonical
from qwen_np.tensors.quantized import smallest_exact_float

if importlib.util.find_spec("numba") is None:
    pytest.skip("numba is not installed", allow_module_level=True)

rng = np.random.default_rng(1)


@pytest.fixture(scope="module")
def nb():
    get_backend("numba")
    from qwen_np.backends.numba import floats, tiles
    return tiles, floats


def gguf_matrix(name: str, rows: int, blocks: int):
    """Random GGUF blocks of one type (float16 fields kept small and finite)."""
    type_id, (_, block, size, _, _) = next((k, v) for k, v in BLOCK_TYPES.items() if v[0] == name)
    raw = rng.integers(0, 256, (rows, blocks, size), dtype=np.uint8)
    for at in ((208,) if name == "Q6_K" else (0, 2) if name in ("Q4_1", "Q5_1", "Q4_K", "Q5_K")
               else (0,)):
        raw[..., at:at + 2] = rng.uniform(-0.1, 0.1, (rows, blocks)).astype(np.float16) \
            .view(np.uint8).reshape(rows, blocks, 2)
    return block_rows_to_canonical(raw.reshape(rows, -1), type_id, (rows, blocks * block))


def rtn_split(w: np.ndarray, bits: int, group_size: int) -> QuantizedTensor:
    """5- or 6-bit RTN codes as a canonical tensor: a nibble plane and a high plane, as the
    GGUF converter splits them (rtn_to_canonical packs only 4 and 8 bits)."""
    q, zero, scale = quantize_rtn(w, bits, group_size, False)
    offset = smallest_exact_float(-(scale.astype(np.float32) * zero.astype(np.float32)))
    return QuantizedTensor(shape=w.shape, bits=bits, group_size=group_size,
                           codes=pack_codes(q & 15, 4), scale=scale, offset=offset,
                           high=pack_high_bits(q >> 4, bits - 4))


def matrices():
    """Every code width the tiles take, with rows a multiple of 16 (re-laid in place) and
    not (copied, with zero rows padding the last tile), and a partial last group for each."""
    out = {}
    for rows in (32, 21):
        for name in ("Q4_0", "Q4_K", "Q5_0", "Q5_K", "Q6_K", "Q8_0"):
            out[f"{name}-{rows}"] = gguf_matrix(name, rows, 2 if name.endswith("K") else 9)
        w = rng.standard_normal((rows, 200)).astype(np.float32)
        out[f"rtn8-g48-tail-{rows}"] = rtn_to_canonical(*quantize_rtn(w, 8, 48, True), 8, 48)
        w = rng.standard_normal((rows, 256)).astype(np.float32)
        out[f"rtn4-g128-{rows}"] = rtn_to_canonical(*quantize_rtn(w, 4, 128, False), 4, 128)
        out[f"gptq-actorder-{rows}"] = gptq_act_order(rows if rows % 8 == 0 else 24)  # packed by 8
        w = rng.standard_normal((rows, 96)).astype(np.float32)    # groups of 64 and 32
        out[f"rtn4-g64-tail-{rows}"] = rtn_to_canonical(*quantize_rtn(w, 4, 64, False), 4, 64)
        w = rng.standard_normal((rows, 896)).astype(np.float32)   # 3 x 256 and 128
        out[f"rtn5-g256-tail-{rows}"] = rtn_split(w, 5, 256)
        w = rng.standard_normal((rows, 200)).astype(np.float32)   # 3 x 64 and 8
        out[f"rtn6-g64-tail-{rows}"] = rtn_split(w, 6, 64)
    return out


def gptq_act_order(rows: int):
    """A GPTQ matrix with act-order groups (its columns sorted by group, x gathered first)."""
    q = rng.integers(0, 16, (64, rows))
    z = rng.integers(1, 16, (2, rows))
    s = rng.uniform(0.01, 0.1, (2, rows)).astype(np.float16)
    g_idx = (np.arange(64) // 32)[rng.permutation(64)].astype(np.int32)
    return gptq_to_canonical("m", pack_int32_words(q, 4, 0), pack_int32_words(z - 1, 4, 1), s,
                             g_idx, 4, 32, False, (rows, 64))


MATS = matrices()


def test_tile_rows_is_numpys_transpose(nb):
    tiles, _ = nb
    for rows in (16, 48, 37):
        a = rng.integers(0, 2**32, (rows, 11), dtype=np.uint32)
        T = -(-rows // 16)
        padded = np.zeros((T * 16, 11), np.uint32)
        padded[:rows] = a
        expected = padded.reshape(T, 16, 11).transpose(0, 2, 1)
        assert np.array_equal(tiles.tile_rows(a, T), expected)
        if rows % 16 == 0:
            b = a.copy()
            t = tiles.tile_rows_in_place(b)
            assert np.array_equal(t, expected) and np.shares_memory(t, b)


def test_float16_bits_decode_as_numpy_does(nb):
    from numba import njit
    _, floats = nb

    @njit
    def decode_all(bits, out):
        for i in range(bits.shape[0]):
            out[i] = floats.as_f32(bits[i])

    bits = np.arange(1 << 16, dtype=np.uint16)
    out = np.empty(1 << 16, np.float32)
    decode_all(bits, out)
    expected = bits.view(np.float16).astype(np.float32)
    nan = np.isnan(expected)
    assert np.array_equal(np.isnan(out), nan)
    assert np.array_equal(out[~nan].view(np.uint32), expected[~nan].view(np.uint32))


@pytest.mark.parametrize("name", sorted(MATS))
@pytest.mark.parametrize("T", [1, 5])
def test_prepared_matrix_against_the_reference(nb, name, T):
    tiles, _ = nb
    be, ref = get_backend("numba"), get_backend("numpy")
    w = MATS[name]
    prepared = be.prepare(copy.deepcopy(w))
    assert isinstance(prepared, tiles.RowTiles)
    wide = np.full((T, w.shape[1] + 64), np.nan, np.float32)   # NaN past the row's end
    wide[:, :w.shape[1]] = rng.standard_normal((T, w.shape[1]))
    x = wide[:, :w.shape[1]]
    assert rel_err(be.linear(x, prepared), ref.linear(x, w)) < 1e-5
    ids = [0, w.shape[0] - 1, 3, 3]
    assert rel_err(be.embed(prepared, ids), ref.embed(w, ids)) < 1e-6


@pytest.mark.parametrize("name", sorted(MATS))
@pytest.mark.parametrize("B", [2, 3, 4, 5, 6, 8])
def test_rows_of_a_decode_step_are_each_the_one_token_product_bit_for_bit(nb, name, B):
    """linear_rows (the rows_* kernels: B sequences' rows, each tile read once for all) gives
    each row exactly what linear gives for that row alone (the gemv_* kernels), extreme
    values included, and the reference's product to float32 rounding."""
    be, ref = get_backend("numba"), get_backend("numpy")
    w = MATS[name]
    prepared = be.prepare(copy.deepcopy(w))
    x = rng.standard_normal((B, w.shape[1])).astype(np.float32)
    x[1, :7] = [1e30, -1e30, 3e-38, -3e-38, 0.0, -0.0, 1e-45]    # huge, tiny, subnormal
    bias = rng.standard_normal(w.shape[0]).astype(np.float32)
    together = be.linear_rows(x, prepared, bias)
    alone = np.concatenate([be.linear(x[b:b + 1], prepared, bias) for b in range(B)])
    assert together.shape == (B, w.shape[0])
    assert np.array_equal(together.view(np.uint32), alone.view(np.uint32))
    rows = [0] + list(range(2, B))              # the rows without extreme values
    assert rel_err(together[rows], ref.linear(x[rows], w, bias)) < 1e-5


@pytest.mark.parametrize("name", ["Q5_0-32", "Q6_K-32", "Q8_0-32"])
def test_prepare_reuses_the_arrays_memory(nb, name):
    w = copy.deepcopy(MATS[name])
    prepared = get_backend("numba").prepare(w)
    assert np.shares_memory(prepared.codes, w.codes)
    assert prepared.nbytes == w.nbytes


def test_other_shapes_stay_canonical(nb):
    w = rng.standard_normal((9, 200)).astype(np.float32)
    odd = rtn_to_canonical(*quantize_rtn(w, 4, 9, True), 4, 9)
    assert get_backend("numba").prepare(odd) is odd


def test_a_tensor_under_two_names_is_prepared_once():
    from qwen_np.model.weights import prepare_tensors
    shared, other = MATS["Q8_0-32"], MATS["Q5_0-32"]
    tensors = {"model.embed_tokens.weight": shared, "lm_head.weight": shared, "x": other}
    calls = []
    prepare_tensors(tensors, lambda t: calls.append(t) or ("ready", id(t)))
    assert len(calls) == 2
    assert tensors["model.embed_tokens.weight"] is tensors["lm_head.weight"]
    assert tensors["x"] == ("ready", id(other))
