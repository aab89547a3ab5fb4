"""GPTQ (Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization for Generative
Pre-trained Transformers") for one weight matrix W [out, in], in plain NumPy, step by step as
GPTQModel's `GPTQ.quantize` runs it (gptqmodel/quantization/gptq.py and quantizer.py).

The problem. For calibration inputs X [N, in] (the rows this linear layer saw), find integer
codes Q minimising the layer's output error ||W X^T - Q X^T||^2. The error of each output row
is a quadratic in that row's weights whose Hessian is the same for every row:

    H = 2 X^T X / N                       [in, in]

H says how much the inputs co-vary: a rounding error made in column i can be partly cancelled
by moving the not-yet-quantized columns j that correlate with it. Optimal Brain Surgeon gives
the move: after quantizing column i with error e = (w_i - q_i), the remaining columns change by
    W[:, j] -= e / Hinv[i, i] * Hinv[i, j]          (Hinv the inverse of H over the columns left)
GPTQ's observation is that the inverses over "the columns left" are read off the upper
Cholesky factor U of H^-1 (H^-1 = U^T U): row i of U, divided by U[i, i], is exactly that
update. So one Cholesky factorisation replaces a rank-one downdate per column.

The steps, in order (each named below as a function or a comment):
  1. the Hessian            H = 2 X^T X / N, summed in float64 (HessianSum)
  2. dead inputs            H[i, i] == 0 (an input that was always 0): H[i, i] = 1, W[:, i] = 0
  3. static groups          (static_groups) every group's scale/zero from W up front
  4. act-order              (act_order, GPTQModel's desc_act) columns by descending H[i, i],
                            the inputs with the most energy quantized first
  5. dampening              H += damp_percent * mean(diag H) * I   (keeps H invertible)
  6. U = upper Cholesky of H^-1
  7. column by column, in lazy blocks of 128 columns: a group's scale/zero when it starts
     (unless static), quantize the column, spread its error over the block's later columns;
     at the block's end, spread the block's errors over all later columns at once
  8. undo act-order: codes back in the input order, g_idx[i] = the group of input i

The grid is GPTQModel's Quantizer.find_params, per output row over a group's columns x, with
maxq = 2^bits - 1:
    xmin = min(x, 0), xmax = max(x, 0)                       (the grid holds 0)
    symmetric:  xmax = max(|xmin|, xmax); where xmin < 0: xmin = -xmax
                (an all-non-negative group keeps xmin = 0: GPTQModel's quirk, kept)
    xmin = xmax = 0: xmin = -1, xmax = 1
    scale = (xmax - xmin) / maxq
    zero  = (maxq + 1) / 2 symmetric, round(-xmin / scale) asymmetric
    q = clamp(round(w / scale) + zero, 0, maxq);   w ~ scale * (q - zero)
The scale keeps its float64 value while GPTQ runs and is rounded to float16 (nearest) only for
the file, as GPTQModel's packer does; the quotients w / scale and -xmin / scale are computed in
float32, as the reference computes them (steps_float32), because a symmetric grid puts each
group's most negative weight exactly on a tie (-(maxq + 1) / 2 steps), as an asymmetric one
does the zero of a group whose extremes are opposite, and float32 and float64 arithmetic decide
such ties differently; a code decided otherwise changes the error feedback of the rest of its
row, and a zero every code of its group.
One difference, for the checkpoint: an asymmetric zero of 0 (an all-non-negative group)
becomes zero 1 with scale max(x) / (maxq - 1), as tensors/rtn.py does, because GPTQ v1 files
store zero - 1.

A last group shorter than group_size (in not a multiple of it) is allowed, as in quantize_rtn
and GPTQModel: its scale comes from its own columns.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qwen_np.tensors.packing import pack_codes
from qwen_np.tensors.quantized import QuantizedTensor, smallest_exact_float

BLOCK = 128                 # GPTQ's lazy batch: columns whose updates are applied together
DAMP_STEP = 0.0025          # GPTQModel's damp_auto_increment when H + damp is not definite


@dataclass
class HessianSum:
    """Step 1: X^T X over the calibration rows seen so far, in float64. `hessian()` is
    H = 2 X^T X / N (GPTQModel keeps this running mean; the scale does not change GPTQ's
    result, only the dampening's meaning, which is relative to mean(diag H))."""
    xtx: np.ndarray         # [in, in] float64
    rows: int = 0           # N

    @classmethod
    def zeros(cls, n_in: int) -> HessianSum:
        return cls(np.zeros((n_in, n_in), np.float64))

    def add(self, x) -> None:
        """Add the rows x [T, in]: their product in x's float dtype (a sample's few hundred
        rows lose nothing that matters in float32, at half float64's cost), the running sum
        in float64."""
        x = np.asarray(x)
        x = x.reshape(-1, self.xtx.shape[0]).astype(np.promote_types(x.dtype, np.float32))
        self.xtx += x.T @ x                                              # [in, in]
        self.rows += x.shape[0]

    def hessian(self) -> np.ndarray:
        return 2.0 * self.xtx / max(self.rows, 1)                        # [in, in]


@dataclass
class GPTQResult:
    """One quantized matrix, as the GPTQ writer (formats/gptq.py) takes it.

    q      uint8 [out, in]   codes, in the input's order
    zero   uint8 [out, G]    zero points
    scale  float16 [out, G]  as written
    g_idx  int32 [in]        group of each input: i // group_size, or scattered (act-order)
    W[o, i] ~ scale[o, g_idx[i]] * (q[o, i] - zero[o, g_idx[i]])
    exact_scale  float64 [out, G] or None: the scale GPTQ quantized with, before float16
    """
    q: np.ndarray
    zero: np.ndarray
    scale: np.ndarray
    g_idx: np.ndarray
    bits: int
    group_size: int         # as given (-1: per channel)
    exact_scale: np.ndarray | None = None

    def dequantize(self) -> np.ndarray:
        """The float32 matrix [out, in] the codes stand for."""
        s = self.scale.astype(np.float32)[:, self.g_idx]
        z = self.zero.astype(np.float32)[:, self.g_idx]
        return s * (self.q.astype(np.float32) - z)

    def solved(self) -> np.ndarray:
        """The float32 matrix [out, in] GPTQ's error feedback assumed: the codes on the exact
        scale. The reference puts this back into the layer; the file's float16 scale gives it
        to within a relative 2^-11 (dequantize)."""
        if self.exact_scale is None:
            return self.dequantize()
        s = self.exact_scale[:, self.g_idx]
        z = self.zero.astype(np.float64)[:, self.g_idx]
        return (s * (self.q - z)).astype(np.float32)

    def to_quantized(self) -> QuantizedTensor:
        """The canonical form: columns sorted by group (stable), the order kept as perm, as
        formats/gptq.py:gptq_to_canonical reads an act-order checkpoint."""
        out, n_in = self.q.shape
        g = n_in if self.group_size in (-1, 0) else self.group_size
        perm = None
        q = self.q
        if not np.array_equal(self.g_idx, np.arange(n_in) // g):
            perm = np.argsort(self.g_idx, kind="stable")
            q = q[:, perm]
        s32 = self.scale.astype(np.float32)
        offset = smallest_exact_float(-(s32 * self.zero.astype(np.float32)))
        return QuantizedTensor(shape=(out, n_in), bits=self.bits, group_size=g,
                               codes=pack_codes(q, self.bits), scale=self.scale.copy(),
                               offset=offset, perm=None if perm is None else perm.astype(np.int32))


def find_params(x: np.ndarray, bits: int, sym: bool):
    """GPTQModel's grid for the columns x [out, n] of one group: (scale [out], zero [out]
    integers), both float64. The module docstring gives the rules."""
    maxq = (1 << bits) - 1
    x = np.asarray(x, np.float64)
    xmin = np.minimum(x.min(1), 0.0)                                      # [out]
    xmax = np.maximum(x.max(1), 0.0)
    if sym:
        xmax = np.maximum(np.abs(xmin), xmax)
        xmin = np.where(xmin < 0, -xmax, xmin)
    empty = (xmin == 0) & (xmax == 0)
    xmin, xmax = np.where(empty, -1.0, xmin), np.where(empty, 1.0, xmax)
    scale = (xmax - xmin) / maxq
    if sym:
        zero = np.full(scale.shape, (maxq + 1) / 2)
    else:
        zero = np.round(steps_float32(-xmin, scale))
        v1 = zero == 0                        # all non-negative: v1 files cannot store zero 0
        scale = np.where(v1, xmax / (maxq - 1), scale)
        zero = np.where(v1, 1.0, zero)
    return scale, zero


def float16_scale(scale: np.ndarray) -> np.ndarray:
    """scale in float16 (nearest), never 0 (a group of tiny weights keeps the smallest step)."""
    s16 = np.asarray(scale).astype(np.float16)
    return np.where(s16 == 0, np.float16(2.0 ** -24), s16)


def quantize_column(w: np.ndarray, scale: np.ndarray, zero: np.ndarray, bits: int):
    """(codes, dequantized values) of one column w [out] on the grid (scale, zero) [out]; the
    quotient in float32 (the module docstring says why)."""
    q = np.clip(np.round(steps_float32(w, scale)) + zero, 0, (1 << bits) - 1)
    return q, np.asarray(scale, np.float64) * (q - zero)


def steps_float32(x: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """x / scale computed in float32 (returned as float64), as the reference divides: where
    the exact quotient is a tie (k + 0.5), float32's rounding decides it as GPTQModel's does."""
    return (np.asarray(x, np.float32) / np.asarray(scale, np.float32)).astype(np.float64)


@dataclass
class PreparedHessian:
    """Steps 2, 4, 5 and 6, which depend on H alone: the matrices that share an input (q, k
    and v; gate and up) share one (the factorisation of a 4864-wide H is most of GPTQ's time).
    """
    dead: np.ndarray        # bool [in]: inputs no calibration row set
    perm: np.ndarray        # [in] the order columns are quantized in (act-order, or 0..in-1)
    U: np.ndarray           # [in, in] upper, H^-1 = U^T U, in the order `perm`


def prepare_hessian(h: np.ndarray, damp_percent: float = 0.01,
                    act_order: bool = False) -> PreparedHessian:
    H = np.array(h, np.float64)                                          # [in, in]
    # 2. dead inputs: no calibration row ever set them, so their weights cannot matter here
    dead = np.diag(H) == 0                                               # [in]
    H[dead, dead] = 1.0
    # 4. act-order: the inputs with the largest diag(H) first
    perm = np.argsort(-np.diag(H), kind="stable") if act_order else np.arange(H.shape[0])
    H = H[np.ix_(perm, perm)]
    # 5-6. dampening, then U with H^-1 = U^T U
    return PreparedHessian(dead, perm, upper_cholesky_of_inverse(H, damp_percent))


def quantize_gptq(w, h, bits: int = 4, group_size: int = 128, sym: bool = True,
                  damp_percent: float = 0.01, act_order: bool = False,
                  static_groups: bool = False, block_size: int = BLOCK) -> GPTQResult:
    """GPTQ of W [out, in] given the Hessian h [in, in] of its inputs (HessianSum.hessian()),
    or prepare_hessian's result for it (then damp_percent and act_order were given there).

    bits 4 or 8; group_size 32/64/128/... or -1 (one group per output row).
    """
    if bits not in (4, 8):
        raise ValueError(f"bits {bits}: GPTQ here writes 4 or 8")
    W = np.array(w, np.float64)                                          # [out, in]
    out, n_in = W.shape
    prep = h if isinstance(h, PreparedHessian) else prepare_hessian(h, damp_percent, act_order)
    if prep.U.shape != (n_in, n_in):
        raise ValueError(f"Hessian {list(prep.U.shape)} does not match W {list(W.shape)}")
    act_order = not np.array_equal(prep.perm, np.arange(n_in))
    g = n_in if group_size in (-1, 0) else group_size
    n_groups = -(-n_in // g)

    # per channel: one grid from the whole row, found before anything moves (as GPTQModel)
    channel = find_params(W, bits, sym) if g == n_in else None
    W[:, prep.dead] = 0.0                                                # 2. dead inputs

    # 3. static groups: every group's grid from the (dead-zeroed) weights, up front
    static = [find_params(W[:, s:s + g], bits, sym) for s in range(0, n_in, g)] \
        if static_groups and channel is None else None

    perm, U = prep.perm, prep.U
    W = W[:, perm]                                                       # 4. act-order

    # 7. column by column in lazy blocks
    Q = np.zeros((out, n_in))                                            # codes, permuted order
    scales = np.zeros((out, n_groups))                                   # [out, G]
    zeros = np.zeros((out, n_groups))
    grid = channel
    for b0 in range(0, n_in, block_size):
        b1 = min(b0 + block_size, n_in)
        W1 = W[:, b0:b1].copy()                                          # [out, B]
        Err1 = np.zeros_like(W1)
        U1 = U[b0:b1, b0:b1]                                             # [B, B]
        for i in range(b1 - b0):
            col = b0 + i
            if static is not None:
                grp = perm[col] // g                   # the grid of the input's own group
                grid = static[grp]
            elif channel is None and col % g == 0:
                # a new group's grid from W as it stands: later blocks' updates are in it,
                # this block's are not yet (GPTQModel reads W, not the block's copy)
                grid = find_params(W[:, col:col + g], bits, sym)
                scales[:, col // g], zeros[:, col // g] = grid
            q, dq = quantize_column(W1[:, i], *grid, bits)               # [out]
            Q[:, col] = q
            err = (W1[:, i] - dq) / U1[i, i]                             # [out]
            W1[:, i:] -= np.outer(err, U1[i, i:])    # spread over the block's later columns
            Err1[:, i] = err
        W[:, b1:] -= Err1 @ U[b0:b1, b1:]            # ... and over every later column at once

    if static is not None:
        scales = np.stack([s for s, _ in static], 1)
        zeros = np.stack([z for _, z in static], 1)
    elif channel is not None:
        scales, zeros = channel[0][:, None], channel[1][:, None]

    # 8. codes back in the input's order; g_idx of each input
    inv = np.argsort(perm)
    if static is not None or not act_order:
        g_idx = np.arange(n_in) // g                  # static groups follow the input order
    else:
        g_idx = (np.arange(n_in) // g)[inv]           # group = position in act-order // g
    return GPTQResult(q=Q[:, inv].astype(np.uint8), zero=zeros.astype(np.uint8),
                      scale=float16_scale(scales), g_idx=g_idx.astype(np.int32),
                      bits=bits, group_size=group_size, exact_scale=scales)


def upper_cholesky_of_inverse(H: np.ndarray, damp_percent: float) -> np.ndarray:
    """Steps 5-6: U upper triangular with (H + damp I)^-1 = U^T U, the factor the reference
    gets as cholesky(H); cholesky_inverse; cholesky(upper=True). When H + damp is not positive
    definite the dampening grows by DAMP_STEP, as GPTQModel's does, up to 1.

    The same U (a Cholesky factor with a positive diagonal is unique) for a sixth of the work,
    without forming H^-1: with J the reversal of the columns and J H J = M M^T (M lower),
    H^-1 = J M^-T M^-1 J = U^T U for U = J M^-1 J, upper."""
    n = H.shape[0]
    mean_diag = np.mean(np.diag(H))
    damp = damp_percent
    while True:
        try:
            M = np.linalg.cholesky((H + damp * mean_diag * np.eye(n))[::-1, ::-1])
            return np.ascontiguousarray(inverse_lower(M)[::-1, ::-1])
        except np.linalg.LinAlgError:
            damp += DAMP_STEP
            if damp >= 1.0:
                raise ValueError("GPTQ: the Hessian is not positive definite even with "
                                 "dampening 1.0") from None


def inverse_lower(L: np.ndarray) -> np.ndarray:
    """L^-1 of a lower-triangular L, by halves (NumPy has no triangular solve; a general inverse
    costs six times the work):  [[A, 0], [C, D]]^-1 = [[A^-1, 0], [-D^-1 C A^-1, D^-1]]."""
    n = L.shape[0]
    if n <= 256:
        return np.tril(np.linalg.inv(L))
    k = n // 2
    Ai, Di = inverse_lower(L[:k, :k]), inverse_lower(L[k:, k:])
    out = np.zeros_like(L)
    out[:k, :k], out[k:, k:] = Ai, Di
    out[k:, :k] = -Di @ (L[k:, :k] @ Ai)
    return out
