"""Choosing the next token from the last position's logits.

The order is transformers': repetition penalty, then temperature, top-k, top-p, then a draw.
temperature == 0 means greedy (argmax after the penalty). A seeded `np.random.Generator`
makes every draw reproducible.
"""

from __future__ import annotations

import numpy as np


def apply_repetition_penalty(logits: np.ndarray, previous_ids, penalty: float) -> np.ndarray:
    """CTRL-style penalty on every token seen so far: positive logits / p, negative * p."""
    if penalty == 1.0 or len(previous_ids) == 0:
        return logits
    logits = logits.copy()
    seen = np.unique(np.asarray(previous_ids))
    vals = logits[seen]
    logits[seen] = np.where(vals > 0, vals / penalty, vals * penalty)
    return logits


def keep_top_k(logits: np.ndarray, k: int) -> np.ndarray:
    """Logits outside the k largest become -inf (k <= 0 keeps all)."""
    if k <= 0 or k >= logits.size:
        return logits
    kth = np.partition(logits, -k)[-k]
    return np.where(logits >= kth, logits, -np.inf)


def keep_top_p(logits: np.ndarray, p: float) -> np.ndarray:
    """Keep the smallest set of most likely tokens whose probabilities sum to at least p."""
    if p >= 1.0:
        return logits
    order = np.argsort(-logits, kind="stable")
    probs = softmax(logits[order])
    mass_before = np.cumsum(probs) - probs          # probability of the tokens ranked above
    drop = order[mass_before >= p]                  # the first token always stays (mass 0)
    logits = logits.copy()
    logits[drop] = -np.inf
    return logits


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - np.max(x))
    return e / e.sum()


def sample_next(logits, rng: np.random.Generator, temperature: float = 0.0, top_k: int = 0,
                top_p: float = 1.0, repetition_penalty: float = 1.0, previous_ids=()) -> int:
    """One token id from logits [V]."""
    logits = np.asarray(logits, dtype=np.float64)
    logits = apply_repetition_penalty(logits, previous_ids, repetition_penalty)
    if temperature <= 0:
        return int(np.argmax(logits))
    logits = keep_top_p(keep_top_k(logits / temperature, top_k), top_p)
    return int(rng.choice(logits.size, p=softmax(logits)))
