"""llama.cpp's block quantizers: float32 rows -> the integer codes and scales of each ggml block
type (the bytes are formats/gguf_blocks_write.py's). Each function takes x [rows, n] with n a
multiple of the block and returns the fields its block stores: float16 scales, one code per
input (int8 for Q8_0, unsigned for the others).

Legacy types (32 inputs per block), exactly ggml's `quantize_row_*_ref` (and gguf-py's
`quants.py`), in float32 step by step so that the bytes are the same:
    Q8_0  d = amax / 127                  q = round(x / d)              w = d q         (-127..127)
    Q4_0  d = max / -8  (max: the signed  q = trunc(x / d + 8.5)        w = d (q - 8)   (0..15)
    Q5_0  d = max / -16  value of amax)   q = trunc(x / d + 16.5)       w = d (q - 16)  (0..31)
    Q4_1  d = (max - min) / 15, m = min   q = trunc((x - m) / d + 0.5)  w = d q + m
    Q5_1  d = (max - min) / 31, m = min   as Q4_1                       w = d q + m

K-quants (256 inputs per block of sub-blocks; the same math as ggml's reference quantizers,
`quantize_row_q{4,5,6}_K_ref`, written over all sub-blocks at once):
    Q4_K, Q5_K: 8 sub-blocks of 32, w = d sc q - dmin m, sc and m 6-bit. Per sub-block, a
        weighted least-squares fit of (scale, min) over a ladder of candidate grids (the
        weights |x| + rms(x) favour the large inputs; `fit_scale_and_min`), then the eight
        scales and mins rounded to 6 bits against the block's largest, and the codes
        chosen again for the rounded scales.
    Q6_K: 16 sub-blocks of 16, w = d sc (q - 32), sc int8. Per sub-block a symmetric scale
        chosen among 19 candidate grids by x^2-weighted least squares (`fit_symmetric_scale`),
        then rounded to 8 bits against the block's largest, and the codes chosen again.
Summation order differs from ggml's loops, so a sub-block whose candidates tie to the last
bit may pick the other one: on the test models about 99% of the Q4_K blocks are ggml's bytes,
and every tensor's error is ggml's to within 0.02%.
"""

from __future__ import annotations

import numpy as np

QK = 32          # inputs per block of the legacy types
QK_K = 256       # inputs per K-quant block
GROUP_MAX_EPS = np.float32(1e-15)     # ggml: a sub-block below this is all zero
f32 = np.float32                      # every step in float32, as ggml computes


def _blocks(x: np.ndarray, size: int) -> np.ndarray:
    """x [rows, n] -> float32 [rows, n / size, size]"""
    x = np.asarray(x, np.float32)
    return x.reshape(x.shape[0], x.shape[1] // size, size)


def _reciprocal_or_zero(d: np.ndarray) -> np.ndarray:
    """1 / d where d != 0, else 0 (ggml's `id = d ? 1.0f/d : 0.0f`)."""
    with np.errstate(divide="ignore"):
        return np.where(d == 0, f32(0), f32(1) / d).astype(np.float32)


def _signed_absmax(b: np.ndarray) -> np.ndarray:
    """b [..., k] -> [..., 1]: the element of largest magnitude, with its sign (the first one
    on a tie, as ggml's `if (amax < fabsf(v))` loop keeps)."""
    return np.take_along_axis(b, np.abs(b).argmax(-1)[..., None], -1)


def round_half_away(v: np.ndarray) -> np.ndarray:
    """C's roundf: halves away from zero (np.rint rounds them to even)."""
    return np.sign(v) * np.floor(np.abs(v) + f32(0.5))


def nearest_int(v: np.ndarray) -> np.ndarray:
    """ggml's nearest_int (adding 1.5 * 2^23 in float32): halves to even, i.e. np.rint."""
    return np.rint(v)


def quantize_q8_0(x):
    """-> d float16 [rows, nb], q int8 [rows, n]"""
    b = _blocks(x, QK)
    d = np.abs(b).max(-1, keepdims=True) / f32(127)
    q = round_half_away(b * _reciprocal_or_zero(d))
    return d[..., 0].astype(np.float16), q.reshape(x.shape).astype(np.int8)


def _quantize_symmetric(x, levels: int):
    """Q4_0 (levels 16) and Q5_0 (32): -> d float16 [rows, nb], q uint8 [rows, n]"""
    b = _blocks(x, QK)
    d = _signed_absmax(b) / f32(-levels // 2)
    q = np.trunc(b * _reciprocal_or_zero(d) + f32(levels // 2 + 0.5))
    q = np.minimum(q, levels - 1).astype(np.uint8)          # never negative: x / d >= -levels/2
    return d[..., 0].astype(np.float16), q.reshape(x.shape)


def quantize_q4_0(x):
    return _quantize_symmetric(x, 16)


def quantize_q5_0(x):
    return _quantize_symmetric(x, 32)


def _quantize_min_max(x, levels: int):
    """Q4_1 (levels 16) and Q5_1 (32): -> d, m float16 [rows, nb], q uint8 [rows, n]"""
    b = _blocks(x, QK)
    lo, hi = b.min(-1, keepdims=True), b.max(-1, keepdims=True)
    d = (hi - lo) / f32(levels - 1)
    q = np.trunc((b - lo) * _reciprocal_or_zero(d) + f32(0.5))
    q = np.clip(q, 0, levels - 1).astype(np.uint8)
    return d[..., 0].astype(np.float16), lo[..., 0].astype(np.float16), q.reshape(x.shape)


def quantize_q4_1(x):
    return _quantize_min_max(x, 16)


def quantize_q5_1(x):
    return _quantize_min_max(x, 32)


# --- K-quants ------------------------------------------------------------------------------

def fit_scale_and_min(x, w, nmax: int, rmin: float, rdelta: float, nstep: int):
    """Asymmetric codes for sub-blocks x [B, k] with weights w [B, k] (ggml's make_qkx2_quants):
    x ~ scale * L - mn, L in 0..nmax, mn >= 0. Start from the min-max grid; then for each
    candidate grid of (nmax + rmin + rdelta * i) steps over [min, max], i = 0..nstep, round,
    solve the weighted least squares for (scale, min) given those codes (min clamped to <= 0),
    and keep the candidate of smallest weighted squared error. As in ggml, each candidate's
    grid starts at the best min found so far, not at the data's min.
    -> scale [B], mn [B], L uint8 [B, k]"""
    mn = np.minimum(x.min(-1), f32(0))                        # the grid always holds 0
    hi = x.max(-1)
    flat = hi == mn
    sum_w, sum_x = w.sum(-1), (w * x).sum(-1)

    def codes(steps):
        """Round x onto `steps` steps over [mn, hi] (a guarded span: flat sub-blocks)."""
        span = hi - mn
        iscale = steps / np.where(span > 0, span, f32(1))
        return iscale, np.clip(nearest_int(iscale[:, None] * (x - mn[:, None])), 0, nmax)
    iscale, L = codes(f32(nmax))
    scale = f32(1) / iscale
    best = (w * np.square(scale[:, None] * L + mn[:, None] - x)).sum(-1)
    for i in range(nstep + 1):
        _, La = codes(f32(rmin) + f32(rdelta) * f32(i) + f32(nmax))
        sum_l, sum_l2, sum_xl = (w * La).sum(-1), (w * La * La).sum(-1), (w * La * x).sum(-1)
        D = sum_w * sum_l2 - sum_l * sum_l
        ok = D > 0
        Ds = np.where(ok, D, f32(1))
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / Ds
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / Ds
        positive = this_min > 0                              # the grid must hold 0: min <= 0
        this_min = np.where(positive, f32(0), this_min)
        with np.errstate(divide="ignore", invalid="ignore"):
            this_scale = np.where(positive, sum_xl / sum_l2, this_scale)
        err = (w * np.square(this_scale[:, None] * La + this_min[:, None] - x)).sum(-1)
        better = ok & (err < best)
        L = np.where(better[:, None], La, L)
        best = np.where(better, err, best)
        scale = np.where(better, this_scale, scale)
        mn = np.where(better, this_min, mn)
    scale = np.where(flat, f32(0), scale)
    L = np.where(flat[:, None], 0, L)
    return scale.astype(np.float32), (-mn).astype(np.float32), L.astype(np.uint8)


def fit_symmetric_scale(x, nmax: int):
    """Symmetric codes for sub-blocks x [B, k] (ggml's make_qx_quants, rmse_type 1): x ~ scale * l,
    l in -nmax..nmax-1. For the grid through the largest |x| and 18 neighbours (nmax + 0.1 i
    steps, i = -9..9), round, take the x^2-weighted least-squares scale for those codes, keep
    the candidate that explains most (largest sum(w x l)^2 / sum(w l^2)).
    -> scale [B], L uint8 [B, k] (l + nmax)"""
    mx = _signed_absmax(x)[:, 0]
    zero = np.abs(mx) < GROUP_MAX_EPS
    mx = np.where(zero, f32(1), mx)
    w = x * x

    def codes_and_fit(iscale):
        l = np.clip(nearest_int(iscale[:, None] * x), -nmax, nmax - 1)
        return l, (w * x * l).sum(-1), (w * l * l).sum(-1)
    l, sumlx, suml2 = codes_and_fit(f32(-nmax) / mx)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(suml2 > 0, sumlx / suml2, f32(0))
    best = scale * sumlx
    for i in range(-9, 10):
        if i == 0:
            continue
        lc, sumlx, suml2 = codes_and_fit(-(f32(nmax) + f32(0.1) * f32(i)) / mx)
        better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        with np.errstate(divide="ignore", invalid="ignore"):
            s = sumlx / suml2
        l = np.where(better[:, None], lc, l)
        scale = np.where(better, s, scale)
        best = np.where(better, s * sumlx, best)
    scale = np.where(zero, f32(0), scale)
    L = np.where(zero[:, None], 0, l + nmax)
    return scale.astype(np.float32), L.astype(np.uint8)


def _quantize_k_asymmetric(x, nmax: int, rmin: float, nstep: int, search: bool):
    """Q4_K (nmax 15) and Q5_K (31). -> d, dmin float16 [rows, nb], sc, m uint8 [rows, nb, 8]
    (6-bit), q uint8 [rows, n]. search=False: the min-max grid only (plain round-to-nearest)."""
    rows = x.shape[0]
    sub = _blocks(x, 32).reshape(-1, 32)                                   # [B, 32]
    av = np.sqrt((sub * sub).sum(-1, keepdims=True) / f32(32))
    scale, mn, L = fit_scale_and_min(sub, av + np.abs(sub), nmax, rmin, 0.1,
                                     nstep if search else -1)
    scale, mn = scale.reshape(rows, -1, 8), mn.reshape(rows, -1, 8)        # [rows, nb, 8]
    max_scale = np.maximum(scale.max(-1), f32(0))
    max_min = np.maximum(mn.max(-1), f32(0))
    sc = np.clip(nearest_int(_steps_per_unit(max_scale)[..., None] * scale), 0, 63).astype(np.uint8)
    m = np.clip(nearest_int(_steps_per_unit(max_min)[..., None] * mn), 0, 63).astype(np.uint8)
    d = (max_scale / f32(63)).astype(np.float16)
    dmin = (max_min / f32(63)).astype(np.float16)
    # the codes again, for the 6-bit scales (a sub-block of scale 0 keeps its first codes)
    ds = d.astype(np.float32)[..., None] * sc                              # [rows, nb, 8]
    dm = dmin.astype(np.float32)[..., None] * m
    xs = _blocks(x, 32).reshape(rows, -1, 8, 32)
    with np.errstate(divide="ignore", invalid="ignore"):
        again = np.clip(nearest_int((xs + dm[..., None]) / ds[..., None]), 0, nmax)
    L = np.where(ds[..., None] != 0, again, L.reshape(xs.shape)).astype(np.uint8)
    return d, dmin, sc, m, L.reshape(x.shape)


def _steps_per_unit(largest):
    """63 / largest where largest > 0, else 0: the 6-bit grid of a block's scales (or mins)."""
    with np.errstate(divide="ignore"):
        return np.where(largest > 0, f32(63) / largest, f32(0)).astype(np.float32)


def quantize_q4_k(x, search: bool = True):
    return _quantize_k_asymmetric(x, 15, -1.0, 20, search)


def quantize_q5_k(x, search: bool = True):
    return _quantize_k_asymmetric(x, 31, -0.5, 15, search)


def quantize_q6_k(x):
    """-> d float16 [rows, nb], sc int8 [rows, nb, 16], q uint8 [rows, n] in 0..63:
    w = d sc (q - 32)"""
    rows = x.shape[0]
    sub = _blocks(x, 16).reshape(-1, 16)                                   # [B, 16]
    scale, L = fit_symmetric_scale(sub, 32)
    scale = scale.reshape(rows, -1, 16)                                    # [rows, nb, 16]
    max_scale = _signed_absmax(scale)[..., 0]                              # [rows, nb]
    zero = np.abs(max_scale) < GROUP_MAX_EPS
    iscale = f32(-128) / np.where(zero, f32(1), max_scale)
    d = np.where(zero, f32(0), f32(1) / iscale).astype(np.float16)
    sc = np.minimum(nearest_int(iscale[..., None] * scale), 127)
    sc = np.where(zero[..., None], 0, sc).astype(np.int8)
    ds = d.astype(np.float32)[..., None] * sc                              # [rows, nb, 16]
    xs = _blocks(x, 16).reshape(rows, -1, 16, 16)
    with np.errstate(divide="ignore", invalid="ignore"):
        again = np.clip(nearest_int(xs / ds[..., None]), -32, 31) + 32
    L = np.where(ds[..., None] != 0, again, L.reshape(xs.shape))
    L = np.where(zero[..., None, None], 0, L).astype(np.uint8)             # ggml: memset 0
    return d, sc, L.reshape(x.shape)
