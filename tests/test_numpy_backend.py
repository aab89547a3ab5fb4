"""The reference ops against plain, independently written formulas (loops, complex numbers)."""

import numpy as np
import pytest

from qwen_np.backends import get_backend
from qwen_np.tensors.dense import BFloat16Array
from qwen_np.model.rope import rope_inv_freq

rng = np.random.default_rng(0)


@pytest.fixture(params=["float32", "float64"])
def be(request):
    return get_backend("numpy", request.param)


def test_rope_equals_complex_rotation(be):
    T, h, Dh = 5, 3, 8
    x = rng.standard_normal((T, h, Dh))
    pos = np.array([0, 1, 2, 7, 100])
    inv = rope_inv_freq(Dh, 10000.0)
    got = be.rope(be.asarray(x), pos, inv)
    # rotate-half: the pair (x[j], x[j + Dh/2]) is the complex number x[j] + i x[j+Dh/2],
    # multiplied by e^{i pos inv_freq[j]}
    z = (x[..., :Dh // 2] + 1j * x[..., Dh // 2:]) * np.exp(1j * pos[:, None, None] * inv)
    want = np.concatenate([z.real, z.imag], axis=-1)
    assert np.allclose(got, want, rtol=0, atol=1e-6 if be.dtype == np.float32 else 1e-13)
    assert got.dtype == be.dtype


@pytest.mark.parametrize("T,start,H,Hkv", [(1, 6, 4, 4), (5, 0, 6, 2), (3, 4, 7, 1), (4, 2, 6, 3)])
def test_attention_equals_per_head_loop(be, T, start, H, Hkv):
    Dh, S = 6, start + T
    q, k, v = (rng.standard_normal(s) for s in ((T, H, Dh), (S, Hkv, Dh), (S, Hkv, Dh)))
    got = be.attention(be.asarray(q), be.asarray(k), be.asarray(v), start)
    want = np.zeros((T, H, Dh))
    for t in range(T):
        for hh in range(H):
            kv = hh // (H // Hkv)
            keys = range(start + t + 1)  # causal: up to and including its own position
            s = np.array([q[t, hh] @ k[j, kv] / np.sqrt(Dh) for j in keys])
            p = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
            want[t, hh] = sum(p[j] * v[j, kv] for j in keys)
    assert np.allclose(got, want, atol=1e-5 if be.dtype == np.float32 else 1e-12)


def test_rms_norm_silu_linear_embed(be):
    x = rng.standard_normal((3, 10))
    w = rng.standard_normal(10)
    want = np.array([row / np.sqrt(np.mean(row ** 2) + 1e-6) * w for row in x])
    tol = 1e-6 if be.dtype == np.float32 else 1e-14
    assert np.allclose(be.rms_norm(be.asarray(x), be.asarray(w), 1e-6), want, atol=tol)

    g, u = rng.standard_normal((2, 3, 7)) * 5
    assert np.allclose(be.silu_mul(be.asarray(g), be.asarray(u)), g / (1 + np.exp(-g)) * u,
                       atol=tol * 10)
    assert np.all(np.isfinite(be.silu_mul(be.asarray([-1000.0, 1000.0]), be.asarray([1.0, 1.0]))))

    W = rng.standard_normal((4, 10)).astype(np.float16)   # stored f16 -> computed in be.dtype
    b = rng.standard_normal(4)
    want = x @ W.astype(np.float64).T + b
    assert np.allclose(be.linear(be.asarray(x), W, be.asarray(b)), want, atol=tol * 100)

    bits = (W.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)  # truncate to bf16
    table = BFloat16Array(bits)
    rows = be.embed(table, [3, 0, 3])
    assert rows.dtype == be.dtype
    assert np.array_equal(rows, (bits[[3, 0, 3]].astype(np.uint32) << 16).view(np.float32))


def test_unknown_backend_and_dtype_are_clear_errors():
    from qwen_np.errors import BackendUnavailable
    with pytest.raises(BackendUnavailable, match="backend 'tpu' is not available"):
        get_backend("tpu")
    with pytest.raises(BackendUnavailable, match="dtype 'float16'"):
        get_backend("numpy", "float16")
