"""tensors/awq_grid.py, awq_search.py and awq_clip.py on hand-made inputs (AutoAWQ's own
results are compared in tests/test_awq_autoawq.py)."""

import numpy as np
import pytest

from qwen_np.tensors.awq_clip import apply_clip, clip_tokens, group_outputs, search_clip
from qwen_np.tensors.awq_grid import fake_quantize, group_grid, quantize_awq
from qwen_np.tensors.awq_search import (activation_mean, awq_scales, mean_squared_error,
                                        search_scale, weight_mean)

rng = np.random.default_rng(3)


def test_grid_by_hand():
    # one group: min -0.3, max 1.2 -> scale 1.5 / 15 = 0.1, zero round(3) = 3
    x = np.array([[-0.3, 0.0, 0.26, 1.2]], np.float32)
    scale, zero = group_grid(x)
    assert np.isclose(scale[0, 0], 0.1) and zero[0, 0] == 3
    assert np.allclose(fake_quantize(x, 4), [[-0.3, 0.0, 0.3, 1.2]], atol=1e-6)
    # all positive: zero 0 (AWQ stores true zeros), the minimum is on the grid
    pos = np.array([[0.5, 0.6, 2.0, 1.0]], np.float32)
    assert group_grid(pos)[1][0, 0] == 0
    # a constant group keeps a step of 1e-5 / 15
    s, z = group_grid(np.full((1, 4), 0.25, np.float32))
    assert np.isclose(s[0, 0], 1e-5 / 15)


@pytest.mark.parametrize("group", [16, 32, 128])
def test_checkpoint_codes_are_the_float16_grid(group):
    w = (rng.standard_normal((24, 256)) * rng.uniform(0.01, 2, (24, 1))).astype(np.float32)
    r = quantize_awq(w, group)
    assert r.q.dtype == np.uint8 and r.q.max() <= 15 and r.zero.max() <= 15
    assert r.scale.dtype == np.float16 and r.scale.shape == (24, 256 // group)
    # every code within half a step of the float16 weight, plus the float16 rounding of a
    # grid whose ends (zero rounded, 15 steps up) sit within half a step of min and max
    w16 = w.astype(np.float16).astype(np.float32)
    step = np.repeat(r.scale.astype(np.float32), group, 1)
    assert np.all(np.abs(r.dequantize() - w16) <= 0.5 * step * (1 + 1e-2))
    # the canonical form means the same weights
    from qwen_np.tensors.quantized import dequantize
    assert np.array_equal(dequantize(r.to_quantized()), r.dequantize())


def test_statistics_and_scales_by_hand():
    x = [np.array([[1.0, -2.0], [3.0, 0.0]], np.float32), np.array([[-1.0, 4.0]], np.float32)]
    assert np.allclose(activation_mean(x), [5 / 3, 2.0])
    w = np.array([[1.0, -0.5, 2.0, 4.0]], np.float32)           # groups of 2: max 1, then 4
    assert np.allclose(weight_mean([w, 2 * w], 2), [1, 0.5, 0.5, 1], atol=1e-5)
    xm, wm = np.array([4.0, 1.0], np.float32), np.array([0.5, 1.0], np.float32)
    s = awq_scales(xm, wm, 0.5)                # 4^0.5 / (0.5^0.5 + 1e-4), 1 / (1 + 1e-4)
    raw = np.array([2 / (0.5 ** 0.5 + 1e-4), 1 / (1 + 1e-4)])
    assert np.allclose(s, raw / np.sqrt(raw.max() * raw.min()), rtol=1e-6)
    assert np.isclose(s.max() * s.min(), 1.0, rtol=1e-6)
    assert np.allclose(awq_scales(xm, wm, 0.0) * np.sqrt((1 / 0.5001) * (1 / 1.0001)),
                       [1 / 0.5001, 1 / 1.0001], rtol=1e-5)


def test_search_picks_the_smallest_loss_and_beats_no_scaling():
    # a linear whose inputs have a few salient channels, as AWQ's paper describes
    x = rng.standard_normal((2, 64, 128)).astype(np.float32)
    x[..., :4] *= 30.0
    w = (rng.standard_normal((64, 128)) * 0.1).astype(np.float32)
    xs = list(x)

    def block(ws):
        return [xi @ ws[0].T for xi in xs]
    found = search_scale(xs, [w], block, 32)
    assert found.losses.shape == (20,) and np.argmin(found.losses) == round(found.ratio * 20)
    # the loss of the chosen scales recomputed by hand
    s = found.scales
    by_hand = mean_squared_error(block([w]), block([fake_quantize(w * s, 32) / s]))
    assert np.isclose(by_hand, found.losses.min(), rtol=1e-6)
    assert found.ratio > 0 and found.losses.min() < 0.8 * found.losses[0]   # a = 0: s = 1 / w_mean


def test_clip_search_by_brute_force():
    w = rng.standard_normal((16, 64)).astype(np.float32)
    x = rng.standard_normal((1500, 64)).astype(np.float32)
    bound = search_clip(w, x, 32)
    full = np.abs(w.reshape(16, 2, 32)).max(-1)
    assert bound.shape == (16, 2) and np.all(bound <= full) and np.all(bound >= 0.55 * full - 1e-6)
    assert np.any(bound < full)                                 # some groups are clipped
    # each group's bound is the best of the 10 candidates, on every (1500 // 512)-th token
    xt = clip_tokens(x)
    assert len(xt) == 750
    ref = group_outputs(xt, w, 32)
    for o, g in list(zip(*np.nonzero(bound < full)))[:3] + [(0, 1)]:
        errs = []
        for k in range(10):
            m = full[o, g] * np.float32(1 - k / 20)
            c = np.clip(w[o:o + 1], -m, m)
            q = fake_quantize(c, 32)
            errs.append(np.square(group_outputs(xt, q, 32)[0, :, g] - ref[o, :, g]).mean())
        assert np.isclose(bound[o, g], full[o, g] * np.float32(1 - np.argmin(errs) / 20))
    clipped = apply_clip(w, bound, 32)
    assert np.array_equal(np.abs(clipped.reshape(16, 2, 32)).max(-1), bound)
