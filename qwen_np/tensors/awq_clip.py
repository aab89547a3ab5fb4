"""AWQ's clipping search: after the scales, each group of each linear may have its range cut,
trading a few clipped outliers for a finer grid, as AutoAWQ 0.2.9 does by default
(awq/quantize/quantizer.py: `_compute_best_clip`; awq/quantize/scale.py: `apply_clip`).

For W [out, in] in groups of g inputs and the linear's (already scaled) inputs X [N, in]:

  1. the tokens        every (N // 512)-th row of X, at least every row: n = ceil(N / step)
  2. the float output  per group, y[o, t, G] = sum over the group's inputs of X[t, i] W[o, i]
  3. the grid          m = max|w| of the group times (1 - k/20), k = 0 .. 9; the group's weights
                       clamped to [-m, m], then fake-quantized (tensors/awq_grid.py)
  4. the error         mean over the tokens of (y_clipped - y)^2, per output row and group; the
                       m with the smallest error wins (the first on a tie)
  5. apply             W clamped to [-m, m] group by group

AutoAWQ skips q_proj and k_proj ("due to qk bmm, it is hard to clip precisely"): their errors
meet in the attention scores, not in a linear output this search could measure. It also
needs out % 64 == 0 (it works on batches of 64 or 256 output rows); here any out works.

Float32, as torch on the CPU; the per-group sums are matrix products (torch sums the
elementwise products: the same value up to float32 rounding).
"""

from __future__ import annotations

import numpy as np

from qwen_np.tensors.awq_grid import fake_quantize

N_GRID = 20
MAX_SHRINK = 0.5
N_SAMPLE_TOKENS = 512
SKIPPED = ("self_attn.q_proj", "self_attn.k_proj")


def clip_tokens(x: np.ndarray) -> np.ndarray:
    """Step 1: every (N // 512)-th row of x [N, in] (every row when N < 1024, so rows
    already thinned, fewer than 1024, are kept as they are)."""
    return x[::max(1, x.shape[0] // N_SAMPLE_TOKENS)]


def group_outputs(x: np.ndarray, w: np.ndarray, group_size: int) -> np.ndarray:
    """Step 2: y [out, n, G], each group's share of the product of x [n, in] and w [out, in]."""
    n, n_in = x.shape
    groups = n_in // group_size
    xg = x.reshape(n, groups, group_size).transpose(1, 0, 2)            # [G, n, g]
    wg = w.reshape(-1, groups, group_size).transpose(1, 2, 0)           # [G, g, out]
    return (xg @ wg).transpose(2, 1, 0)                                  # [out, n, G]


def search_clip(w: np.ndarray, x: np.ndarray, group_size: int, n_grid: int = N_GRID,
                max_shrink: float = MAX_SHRINK) -> np.ndarray:
    """The best clipping bound m [out, G] (float32) of each group of W [out, in] for the
    inputs x [N, in]."""
    w = np.asarray(w, np.float32)
    x = clip_tokens(np.asarray(x, np.float32))                          # [n, in]
    out, n_in = w.shape
    groups = n_in // group_size
    wg = w.reshape(out, groups, group_size)                              # [out, G, g]
    reference = group_outputs(x, w, group_size)                          # [out, n, G]
    full = np.abs(wg).max(-1)                                            # [out, G]
    best = full.copy()
    best_err = np.full(full.shape, 1e9, np.float32)
    for k in range(int(max_shrink * n_grid)):
        m = full * np.float32(1 - k / n_grid)                            # [out, G]
        clipped = np.clip(wg, -m[..., None], m[..., None])
        q = fake_quantize(clipped, group_size).reshape(out, n_in)
        err = np.square(group_outputs(x, q, group_size) - reference).mean(1)   # [out, G]
        better = err < best_err
        best_err[better], best[better] = err[better], m[better]
    return best


def apply_clip(w: np.ndarray, m: np.ndarray, group_size: int) -> np.ndarray:
    """Step 5: W [out, in] with each group clamped to [-m, m] (m [out, G])."""
    out, n_in = w.shape
    wg = w.reshape(out, n_in // group_size, group_size)
    return np.clip(wg, -m[..., None], m[..., None]).reshape(out, n_in)
