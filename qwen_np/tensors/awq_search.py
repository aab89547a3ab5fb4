"""AWQ's activation-aware scale search (Lin et al. 2023, "AWQ: Activation-aware Weight
Quantization for LLM Compression and Acceleration", section 3.2) for one group of linears
that share an input, step by step as AutoAWQ 0.2.9 runs it (awq/quantize/quantizer.py:
`_search_best_scale`, `_compute_best_scale`, with its default duo_scaling=True).

The idea. A few input channels carry large activations; the weights that meet them matter
most. Scaling such a weight column up by s > 1 before quantizing (and the input down by s,
so the product is unchanged: W X = (W diag(s)) (diag(s)^-1 X)) shrinks its relative rounding
error. The scales come from activation and weight statistics, with one exponent searched:

  1. activation statistics   x_mean[i] = mean over tokens of |x[t, i]|              [in]
  2. weight statistics       each weight divided by the largest |w| of its group,
                             w_mean[i] = mean over the output rows of every linear   [in]
                             of that normalised |w|
  3. per-channel scales      s = x_mean^a / (w_mean^(1-a) + 1e-4), at least 1e-4,
                             divided by sqrt(max(s) min(s))                          [in]
  4. the grid over a         a = 0, 1/20, ..., 19/20; for each, the linears become
                             Q(W diag(s)) diag(s)^-1 (tensors/awq_grid.py:fake_quantize)
  5. the loss                the block's output with those weights against its float output,
                             mean squared error over every element; the a with the smallest
                             loss wins (the first, on a tie)

"The block" is what AutoAWQ calls module2inspect: for q/k/v the whole attention (o_proj left
float), for gate/up the whole MLP (down left float), for o_proj or down_proj the linear alone.
Everything is float32 as torch computes on the CPU; sums over tokens accumulate in float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qwen_np.tensors.awq_grid import fake_quantize

N_GRID = 20


def activation_mean(xs) -> np.ndarray:
    """Step 1: mean |x| per input channel over every token of the samples xs ([T, in] each)
    -> float32 [in]."""
    total = sum(np.abs(x.reshape(-1, x.shape[-1])).sum(0, dtype=np.float64) for x in xs)
    count = sum(x.size // x.shape[-1] for x in xs)
    return (total / count).astype(np.float32)


def weight_mean(weights, group_size: int) -> np.ndarray:
    """Step 2: the linears' weights [out_k, in], stacked along out, each |w| over the largest
    |w| of its group (plus 1e-6), averaged over all output rows -> float32 [in]."""
    w = np.concatenate([np.asarray(m, np.float32) for m in weights])    # [sum out, in]
    groups = np.abs(w).reshape(-1, group_size)                           # [rows * G, g]
    normalised = groups / (groups.max(1, keepdims=True) + np.float32(1e-6))
    return normalised.reshape(w.shape).mean(0, dtype=np.float64).astype(np.float32)


def awq_scales(x_mean: np.ndarray, w_mean: np.ndarray, ratio: float) -> np.ndarray:
    """Step 3: s = x_mean^a / (w_mean^(1-a) + 1e-4), clamped at 1e-4, then normalised so
    that max(s) min(s) = 1 -> float32 [in]. A channel whose scale overflows keeps 1."""
    a = np.float32(ratio)
    s = np.maximum(x_mean ** a / (w_mean ** (np.float32(1) - a) + np.float32(1e-4)),
                   np.float32(1e-4))
    s = s / np.sqrt(s.max() * s.min())
    return np.where(np.isfinite(s), s, np.float32(1)).astype(np.float32)


def scaled_fake_quantized(w: np.ndarray, s: np.ndarray, group_size: int) -> np.ndarray:
    """Step 4 for one linear: Q(W diag(s)) diag(s)^-1, float32 [out, in]."""
    return fake_quantize(w * s, group_size) / s


@dataclass
class ScaleSearch:
    scales: np.ndarray       # float32 [in]: the chosen s
    ratio: float             # its exponent a
    losses: np.ndarray       # float64 [N_GRID]: the loss at each a


def search_scale(xs, weights, block, group_size: int, n_grid: int = N_GRID) -> ScaleSearch:
    """The best per-channel scales of the linears `weights` ([out_k, in] float32 each) that all
    read the input xs (a list of samples [T, in]). `block(weights)` is the block's output for
    every sample (a list of arrays), computed with those weights in place of the linears'."""
    x_mean = activation_mean(xs)                                         # [in]
    w_mean = weight_mean(weights, group_size)                            # [in]
    reference = block(weights)                                           # the float output
    losses = np.full(n_grid, np.inf)
    best_k, best_s = -1, None
    for k in range(n_grid):
        s = awq_scales(x_mean, w_mean, k / n_grid)
        out = block([scaled_fake_quantized(w, s, group_size) for w in weights])
        losses[k] = mean_squared_error(reference, out)
        if losses[k] < (losses[best_k] if best_k >= 0 else np.inf):   # the first a on a tie
            best_k, best_s = k, s
    if best_k < 0:
        raise ValueError("AWQ scale search: no finite loss for any exponent")
    return ScaleSearch(best_s, best_k / n_grid, losses)


def mean_squared_error(reference, out) -> float:
    """Step 5: sum of (reference - out)^2 over every element of every sample, divided by the
    number of elements (float64 accumulator)."""
    total = sum(float(np.sum(np.square((r - o).astype(np.float64))))
                for r, o in zip(reference, out))
    return total / sum(r.size for r in reference)
