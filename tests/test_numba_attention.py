"""The Numba backend's attention (backends/numba/attention.py) against the NumPy reference
where its own choices are hardest: keys split into parts (some of them empty), tokens in
pieces, long caches, float16 caches, and its exp against float64's."""

import numpy as np
import pytest

pytest.importorskip("numba")

from qwen_np.backends import get_backend                       # noqa: E402
from qwen_np.backends.numba import attention as na             # noqa: E402
from qwen_np.backends.numba.floats import exp_of_nonpositive   # noqa: E402

rng = np.random.default_rng(11)


def rel_err(a, b):
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def qkv(T, H, Hkv, S, Dh=16, scale=1.0):
    q = (rng.standard_normal((T, H, Dh)) * scale).astype(np.float32)
    k = (rng.standard_normal((S, Hkv, Dh)) * scale).astype(np.float32)
    v = rng.standard_normal((S, Hkv, Dh)).astype(np.float32)
    return q, k, v


@pytest.mark.parametrize("parts", [1, 2, 3, 7, 40])         # 40 parts of 37 keys: some empty
@pytest.mark.parametrize("H,Hkv", [(4, 4), (14, 2), (6, 3)])
def test_one_token_in_parts(parts, H, Hkv):
    start = 36
    q, k, v = qkv(1, H, Hkv, start + 1)
    rep, Dh = H // Hkv, q.shape[2]
    m = np.empty((1, Hkv, parts, rep), np.float32)
    l = np.empty_like(m)
    o = np.empty((1, Hkv, parts, rep, Dh), np.float32)
    one = lambda x: np.array([x], np.int64)     # noqa: E731
    na.attend_parts(q, k[None], v[None], one(0), one(start + 1), one(parts), m, l, o)
    out = np.empty((1, H, Dh), np.float32)
    na.combine_parts(m, l, o, out)
    out = out[0]
    want = get_backend("numpy").attention(q, k, v, start)[0]
    assert rel_err(out, want) < 1e-5


@pytest.mark.parametrize("S", [513, 1500])
@pytest.mark.parametrize("kind", ["float32", "float16"])
def test_one_token_over_a_long_cache(S, kind):
    """Scores of tens (q and k scaled by 3): the parts' maxima differ, so the combination's
    rescaling matters."""
    q, k, v = qkv(1, 14, 2, S + 5, Dh=64, scale=3.0)      # a cache longer than the keys read
    if kind == "float16":
        k, v = k.astype(np.float16), v.astype(np.float16)
    got = get_backend("numba").attention(q, k, v, S - 1)
    want = get_backend("numpy").attention(q, k[:S], v[:S], S - 1)
    assert rel_err(got, want) < 1e-5


@pytest.mark.parametrize("kind", ["float32", "float16"])
def test_many_tokens_in_pieces(kind, monkeypatch):
    """Pieces of 2 tokens (with a 5-token remainder in the last) over 40 cached positions."""
    monkeypatch.setattr(na, "PIECE_ELEMENTS", 2 * 7 * 60)
    q, k, v = qkv(13, 14, 2, 53)
    if kind == "float16":
        k, v = k.astype(np.float16), v.astype(np.float16)
    got = get_backend("numba").attention(q, k, v, 40)
    want = get_backend("numpy").attention(q, k, v, 40)
    assert rel_err(got, want) < 1e-5


def test_exp_of_nonpositive_against_float64():
    """Within 1.1 ulp of float64's exp, rounded to float32, where the result is a normal
    float32; 0 or a subnormal within 1e-38 below that; exactly 1 at zero, 0 at -inf."""
    from numba import njit

    @njit
    def exps(x, out):
        for i in range(x.shape[0]):
            out[i] = exp_of_nonpositive(x[i])

    x = np.concatenate([-np.logspace(-10, 2.1, 200_001), -np.linspace(87, 88, 2001),
                        [0.0, -0.0, -np.inf, -1e30]]).astype(np.float32)
    got = np.empty_like(x)
    exps(x, got)
    want = np.exp(x.astype(np.float64))
    normal = want >= 2.0 ** -126
    ulps = np.abs(got[normal] - want[normal]) / np.spacing(want[normal].astype(np.float32))
    assert ulps.max() <= 1.1
    assert np.abs(got[~normal] - want[~normal]).max() < 1e-38
    assert list(got[-4:]) == [1.0, 1.0, 0.0, 0.0]
