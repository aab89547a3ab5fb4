import numpy as np
import pytest

from qwen_np.tensors.rtn import quantize_rtn, round_up_float16, rtn_to_canonical
from qwen_np.tensors.quantized import dequantize, dequantize_rows

rng = np.random.default_rng(1)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("shape,group", [((8, 256), 128), ((5, 100), 32), ((3, 77), -1),
                                         ((6, 45), 16)])
def test_error_is_at_most_half_a_step(bits, sym, shape, group):
    w = (rng.standard_normal(shape) * rng.uniform(0.01, 3, (shape[0], 1))).astype(np.float32)
    w[0, :5] = np.abs(w[0, :5]) + 1  # some all-positive stretches
    q, zero, scale = quantize_rtn(w, bits, group, sym)
    g = shape[1] if group == -1 else group
    assert q.max() <= (1 << bits) - 1 and scale.dtype == np.float16
    qt = rtn_to_canonical(q, zero, scale, bits, group)
    step = scale.astype(np.float32)[:, np.arange(shape[1]) // g]
    err = np.abs(dequantize(qt) - w)
    assert np.all(err <= 0.5 * step * (1 + 1e-6))
    # the canonical tensor means exactly scale * (q - zero)
    exact = step * (q.astype(np.float32) - zero[:, np.arange(shape[1]) // g])
    assert np.array_equal(dequantize(qt), exact)


def test_all_positive_group_never_needs_zero_0_in_asym():
    w = rng.uniform(0.1, 1.0, (4, 64)).astype(np.float32)
    q, zero, scale = quantize_rtn(w, 4, 32, sym=False)
    assert zero.min() >= 1      # storable as zero - 1 >= 0 in GPTQ v1
    assert np.all(np.abs(dequantize(rtn_to_canonical(q, zero, scale, 4, 32)) - w)
                  <= 0.5 * scale.astype(np.float32).repeat(32, 1) * (1 + 1e-6))


def test_all_zero_group_dequantizes_to_zero():
    w = np.zeros((2, 32), np.float32)
    for sym in (True, False):
        q, z, s = quantize_rtn(w, 4, 32, sym)
        assert np.array_equal(dequantize(rtn_to_canonical(q, z, s, 4, 32)), w)


def test_sym_clips_at_the_code_range():
    # max |w| = 7.5 gives scale 2 * 7.5 / 15 = 1 exactly; -7.5 rounds (half to even) to -8,
    # code 0; +7.5 rounds to +8, code 16, which clips to 15 (error: half a step)
    w = np.array([[-7.5, 7.5, 0.4] + [0.0] * 29], np.float32)
    q, z, s = quantize_rtn(w, 4, 32, True)
    assert s[0, 0] == 1.0 and z[0, 0] == 8
    assert q[0, :3].tolist() == [0, 15, 8]


def test_round_up_float16():
    x = np.array([1.0, 1.0001, 0.1, 3e-8], np.float32)
    h = round_up_float16(x)
    assert np.all(h.astype(np.float32) >= x)
    assert h[0] == 1.0 and h[1] == np.nextafter(np.float16(1), np.float16(2))


def test_rows_and_whole_agree():
    w = rng.standard_normal((9, 40)).astype(np.float32)
    qt = rtn_to_canonical(*quantize_rtn(w, 4, 16, True), 4, 16)
    full = dequantize(qt)
    assert np.array_equal(dequantize_rows(qt, np.array([8, 0, 3])), full[[8, 0, 3]])
    assert np.array_equal(dequantize_rows(qt, slice(2, 5), np.float64), full[2:5].astype(np.float64))
