"""RoPE's frequencies: the plain ones, the original Qwen's dynamic NTK base, and YaRN.

A head's first d dims rotate (d = cfg.rope_dim); pair j (dims j and j + d/2) turns by
position * inv_freq[j]. The backends' `rope(x, positions, inv_freq, scaling)` do the turning,
with cos and sin multiplied by `scaling` (1 except under YaRN).

YaRN (transformers' modeling_rope_utils._compute_yarn_parameters; arXiv 2309.00071), with
s = factor, L = original_max_position_embeddings, θ = rope_theta:

    base[j]   = θ^(2j/d)                                j < d/2
    extrap[j] = 1 / base[j]                  (the trained frequencies: fast dims keep them)
    interp[j] = 1 / (s * base[j])            (interpolated: slow dims are stretched s times)
    dim(r)    = d * ln(L / (2π r)) / (2 ln θ)   the pair that turns r times over L tokens
    low, high = floor(dim(beta_fast)), ceil(dim(beta_slow)), clamped to [0, d - 1]
                (no floor/ceil when truncate is false; high += 0.001 if low == high)
    ramp[j]   = clamp((j - low) / (high - low), 0, 1)
    inv_freq  = interp * ramp + extrap * (1 - ramp)
    cos, sin  multiplied by attention_factor (0.1 ln s + 1 unless the config gives it)

It is static: the same frequencies for every length, as transformers, vLLM and llama.cpp use.
Everything here is float64 (transformers computes the tables in float32).
"""

from __future__ import annotations

import math

import numpy as np

from qwen_np.model.config import QwenConfig, YarnScaling


def rope_inv_freq(dim: int, theta: float) -> np.ndarray:
    """inv_freq[j] = 1 / theta^(2j / dim), j < dim/2, in float64 (dim: the rotated dims)."""
    return 1.0 / theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)


def yarn_inv_freq(dim: int, theta: float, yarn: YarnScaling) -> np.ndarray:
    """YaRN's inv_freq [dim/2] (the module docstring's formulas), float64."""
    extrap = rope_inv_freq(dim, theta)
    interp = extrap / yarn.factor

    def correction_dim(rotations):
        L = yarn.original_max_position_embeddings
        return dim * math.log(L / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = correction_dim(yarn.beta_fast), correction_dim(yarn.beta_slow)
    if yarn.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001               # transformers' guard against a zero-width ramp
    ramp = np.clip((np.arange(dim // 2, dtype=np.float64) - low) / (high - low), 0.0, 1.0)
    return interp * ramp + extrap * (1.0 - ramp)


def config_inv_freq(cfg: QwenConfig, theta: float) -> np.ndarray:
    """The config's inv_freq for RoPE base `theta` (the config's, or the original Qwen's
    NTK-scaled one): YaRN's where the config asks for it."""
    if cfg.yarn is None:
        return rope_inv_freq(cfg.rope_dim, theta)
    return yarn_inv_freq(cfg.rope_dim, theta, cfg.yarn)


def cos_sin_factor(cfg: QwenConfig) -> float:
    """What cos and sin are multiplied by: YaRN's attention factor, else 1."""
    return 1.0 if cfg.yarn is None else cfg.yarn.attention_factor
