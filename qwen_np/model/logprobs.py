"""Log-probabilities of tokens from the model's logits, in float64: what the server's
`logprobs` report and what `qwen-np ppl` sums, computed by the one function below.

    log p(t) = x[t] - log_z,   log_z = max(x) + log(sum(exp(x - max(x))))     (x: logits [V])

The logits are the model's own: before any repetition penalty, temperature, top-k or top-p
(those shape the draw, not the model's distribution; OpenAI and vLLM report the same).
"""

from __future__ import annotations

import numpy as np


def log_normalizers(logits: np.ndarray) -> np.ndarray:
    """log_z of each row of logits [..., V], in float64."""
    x = np.asarray(logits, np.float64)
    top = x.max(axis=-1, keepdims=True)
    return top[..., 0] + np.log(np.exp(x - top).sum(axis=-1))


def token_logprobs(logits: np.ndarray, tokens) -> np.ndarray:
    """log p(tokens[i]) under row i of logits [T, V]: [T] float64."""
    x = np.asarray(logits, np.float64)
    return x[np.arange(len(x)), np.asarray(tokens, dtype=np.intp)] - log_normalizers(x)


def top_logprobs(logits_row: np.ndarray, k: int) -> list[tuple[int, float]]:
    """The k most likely tokens of one row of logits [V] with their log-probabilities, most
    likely first (ties by the smaller id)."""
    if k <= 0:
        return []
    x = np.asarray(logits_row, np.float64)
    k = min(k, x.size)
    best = np.argpartition(-x, k - 1)[:k]
    best = best[np.lexsort((best, -x[best]))]
    log_z = log_normalizers(x)
    return [(int(i), float(x[i] - log_z)) for i in best]
