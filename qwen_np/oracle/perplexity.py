"""Perplexity with a sliding window, the method transformers documents ("Perplexity of
fixed-length models"): windows of at most `ctx` tokens start every `stride` tokens; each window
scores only the tokens the previous window did not reach, so every token after the first is
predicted once, with up to ctx - 1 tokens of context.

    window [begin, end), end = min(begin + ctx, N); the previous window ended at prev_end
    targets: tokens j with max(prev_end, begin + 1) <= j < end, each predicted from the
             window's tokens begin .. j - 1
    perplexity = exp(sum of -log p(token j | context) / number of targets)

The log-softmax is taken in float64 from the model's logits. The same windows, and so the same
scored tokens with the same contexts, feed the KL divergence against a saved base
(oracle/kl_divergence.py) through `each_window`.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from qwen_np.errors import InputError
from qwen_np.model.logprobs import token_logprobs


def windows(n: int, ctx: int, stride: int):
    """(begin, end, first_target) of each window over n tokens."""
    if ctx < 2 or stride < 1 or stride > ctx:
        raise InputError(f"ctx {ctx} and stride {stride}: need ctx >= 2 and 1 <= stride <= ctx")
    prev_end = 0
    for begin in range(0, n, stride):
        end = min(begin + ctx, n)
        yield begin, end, max(prev_end, begin + 1)
        prev_end = end
        if end == n:
            break


def perplexity(logits_of: Callable[[list[int]], np.ndarray], ids, ctx: int = 512,
               stride: int = 256, progress: Callable[[int, int], None] | None = None,
               per_token: bool = False,
               each_window: Callable[[np.ndarray, list[int]], None] | None = None) -> dict:
    """{"perplexity", "nll" (mean, nats), "tokens" (scored), "windows"} of ids under a model
    whose logits_of(window ids) gives [len, V] logits for every position of a pass from
    position 0; with per_token, also "token_logprobs": log p of tokens 1 .. N-1 in order
    (model/logprobs.py, float64). each_window(logits, targets), if given, sees each window's
    predicting rows in order: logits [rows, V] float64 and the tokens they predict."""
    ids = [int(i) for i in ids]
    if len(ids) < 2:
        raise InputError(f"perplexity needs at least 2 tokens, the text has {len(ids)}")
    total, count, n_windows, logprobs = 0.0, 0, 0, []
    for begin, end, first in windows(len(ids), ctx, stride):
        logits = np.asarray(logits_of(ids[begin:end]), np.float64)          # [end-begin, V]
        rows = np.arange(first - 1 - begin, end - 1 - begin)                 # predicting rows
        scored = token_logprobs(logits[rows], ids[first:end])               # [rows] log p
        if each_window is not None:
            each_window(logits[rows], ids[first:end])
        total -= float(np.sum(scored))
        logprobs += scored.tolist()
        count += len(rows)
        n_windows += 1
        if progress is not None:
            progress(end, len(ids))
    nll = total / count
    result = {"perplexity": math.exp(nll), "nll": nll, "tokens": count, "windows": n_windows,
              "ctx": ctx, "stride": stride}
    if per_token:
        result["token_logprobs"] = logprobs
    return result
