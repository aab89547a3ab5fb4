"""qwen_np/tensors/gptq_solver.py: GPTQ for one matrix against round-to-nearest on its own grid."""

import numpy as np
import pytest

from qwen_np.formats.gptq import canonical_codes_to_gptq, gptq_to_canonical
from qwen_np.tensors.gptq_solver import (HessianSum, find_params, quantize_column,
                                         quantize_gptq)
from qwen_np.tensors.quantized import dequantize
from qwen_np.tensors.rtn import quantize_rtn


def hessian_of(x):
    hs = HessianSum.zeros(x.shape[1])
    hs.add(x)
    return hs.hessian()


def rtn_same_grid(w, bits, g, sym):
    """Round-to-nearest on GPTQ's grid (find_params per group), no error feedback."""
    out, n_in = w.shape
    g = n_in if g == -1 else g
    dq = np.zeros_like(w, dtype=np.float64)
    for s in range(0, n_in, g):
        scale, zero = find_params(w[:, s:s + g], bits, sym)
        for c in range(s, min(s + g, n_in)):
            dq[:, c] = quantize_column(w[:, c].astype(np.float64), scale, zero, bits)[1]
    return dq


def correlated_inputs(rng, n, n_in):
    mix = rng.standard_normal((n_in, n_in)) / np.sqrt(n_in) + np.eye(n_in)
    return (rng.standard_normal((n, n_in)) @ mix * rng.uniform(0.2, 3, n_in)).astype(np.float32)


@pytest.mark.parametrize("sym", [True, False])
def test_identity_hessian_is_round_to_nearest(sym):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 64)).astype(np.float32)
    x = np.linalg.qr(rng.standard_normal((64, 64)))[0] * 3.0   # orthogonal rows, X^T X = 9 I
    r = quantize_gptq(w, hessian_of(x), 4, 32, sym)
    np.testing.assert_allclose(r.solved(), rtn_same_grid(w, 4, 32, sym), rtol=0, atol=1e-6)


def test_first_column_is_round_to_nearest_for_any_hessian():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((24, 96)).astype(np.float32)
    r = quantize_gptq(w, hessian_of(correlated_inputs(rng, 400, 96)), 4, 32)
    np.testing.assert_allclose(r.solved()[:, 0], rtn_same_grid(w, 4, 32, True)[:, 0],
                               atol=1e-6)


@pytest.mark.parametrize("bits,g,sym,act,static", [
    (4, 32, True, False, False), (4, 64, False, False, False), (4, 128, True, True, False),
    (8, 32, True, False, False), (4, -1, True, False, False), (4, 32, True, True, True),
    (4, 32, False, True, False)])
def test_output_error_not_above_rtn(bits, g, sym, act, static):
    worse = 0
    for seed in range(12):
        rng = np.random.default_rng(seed)
        w = rng.standard_normal((32, 256)).astype(np.float32)
        x = correlated_inputs(rng, 1024, 256)
        r = quantize_gptq(w, hessian_of(x), bits, g, sym, act_order=act, static_groups=static)
        err_gptq = np.linalg.norm(x @ (w - r.dequantize()).T)
        err_rtn = np.linalg.norm(x @ (w - rtn_same_grid(w, bits, g, sym)).T)
        q, z, s = quantize_rtn(w, bits, g, sym)
        gg = 256 if g == -1 else g
        w_rtn = s.astype(np.float32).repeat(gg, 1)[:, :256] * \
            (q.astype(np.float32) - z.astype(np.float32).repeat(gg, 1)[:, :256])
        err_ours = np.linalg.norm(x @ (w - w_rtn).T)
        worse += err_gptq > min(err_rtn, err_ours)
    assert worse == 0


@pytest.mark.parametrize("static", [False, True])
def test_act_order_groups_and_canonical_form(static):
    rng = np.random.default_rng(3)
    w = rng.standard_normal((16, 128)).astype(np.float32)
    x = correlated_inputs(rng, 500, 128)
    r = quantize_gptq(w, hessian_of(x), 4, 32, act_order=True, static_groups=static)
    assert np.bincount(r.g_idx, minlength=4).tolist() == [32] * 4      # each group: 32 inputs
    if static:
        assert np.array_equal(r.g_idx, np.arange(128) // 32)
    else:
        order = np.argsort(-np.diag(hessian_of(x)), kind="stable")    # act-order's columns
        assert np.array_equal(r.g_idx[order], np.arange(128) // 32)
    np.testing.assert_array_equal(dequantize(r.to_quantized()), r.dequantize())
    # the GPTQ writer's tensors, with this g_idx, read back to the same matrix
    parts = canonical_codes_to_gptq(r.q, r.zero, r.scale, 4, 32)
    back = gptq_to_canonical("t", parts["qweight"], parts["qzeros"], parts["scales"], r.g_idx,
                             4, 32, False, (16, 128))
    np.testing.assert_array_equal(dequantize(back), r.dequantize())


def test_dead_inputs_get_zero_weight():
    rng = np.random.default_rng(4)
    w = rng.standard_normal((8, 64)).astype(np.float32)
    x = correlated_inputs(rng, 300, 64)
    x[:, [5, 40]] = 0
    r = quantize_gptq(w, hessian_of(x), 4, 32, act_order=True)
    dq = r.dequantize()
    assert np.all(np.isfinite(dq)) and np.all(dq[:, [5, 40]] == 0)


def test_partial_last_group_and_odd_sizes():
    rng = np.random.default_rng(5)
    w = rng.standard_normal((7, 200)).astype(np.float32)               # 200 = 3 * 64 + 8
    x = correlated_inputs(rng, 300, 200)
    for act in (False, True):
        r = quantize_gptq(w, hessian_of(x), 4, 64, act_order=act)
        assert r.scale.shape == (7, 4) and np.bincount(r.g_idx).tolist() == [64, 64, 64, 8]
        np.testing.assert_array_equal(dequantize(r.to_quantized()), r.dequantize())
        assert np.linalg.norm(x @ (w - r.dequantize()).T) < \
            np.linalg.norm(x @ (w - rtn_same_grid(w, 4, 64, True)).T)


@pytest.mark.parametrize("sym", [True, False])
def test_extreme_values(sym):
    rng = np.random.default_rng(6)
    w = rng.standard_normal((8, 64)).astype(np.float32)
    w[:, 3] = 0                           # a zero column
    w[2, :] = 0                           # a zero row: every group all zero
    w[5, 10] = 3e4                        # an outlier
    w[6, :] = np.abs(w[6, :])             # an all-positive row
    x = correlated_inputs(rng, 300, 64)
    r = quantize_gptq(w, hessian_of(x), 4, 32, sym)
    dq = r.dequantize()
    assert np.all(np.isfinite(dq)) and np.all(dq[2] == 0)
    assert r.q.max() <= 15 and r.zero.min() >= 1                        # v1 can store the zeros
    assert abs(dq[5, 10] - 3e4) <= r.scale[5, 0] / 2 * 1.001                 # half a step


def test_zero_hessian_and_tiny_weights():
    w = np.full((8, 32), 1e-9, np.float32)
    r = quantize_gptq(w, np.zeros((32, 32)), 4, 32)                     # every input dead
    assert np.all(r.dequantize() == 0)


def test_upper_cholesky_of_inverse_is_the_references():
    from qwen_np.tensors.gptq_solver import upper_cholesky_of_inverse
    rng = np.random.default_rng(7)
    x = correlated_inputs(rng, 700, 600)
    H = hessian_of(x)
    damped = H + 0.01 * np.mean(np.diag(H)) * np.eye(600)
    reference = np.linalg.cholesky(np.linalg.inv(damped)).T    # cholesky(H^-1, upper=True)
    np.testing.assert_allclose(upper_cholesky_of_inverse(H, 0.01), reference, rtol=1e-8,
                               atol=1e-10 * np.abs(reference).max())
