"""Choosing the next token from the last position's logits.

The order is vLLM's (v1 sampler.py: penalties, then temperature, then min_p, then top-k and
top-p, then the draw):

    repetition penalty   transformers' (CTRL): over the prompt and the tokens generated
    presence, frequency  OpenAI's: over the tokens generated only (not the prompt)
    temperature          0 means greedy: the argmax after the penalties
    min_p                vLLM's: drop tokens less likely than min_p x the top token
    top-k, top-p         on what min_p kept
    draw                 from a seeded `np.random.Generator`: every draw reproducible

A request's settings travel as one `Sampling` value, from the command line or an HTTP body
to `sample_next`; `sampling_with_defaults` fills the settings a request leaves out from a
model's generation_config.json (formats/generation_config.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from qwen_np.errors import InputError, QwenNpError


@dataclass(frozen=True)
class Sampling:
    """How one sequence chooses its tokens."""
    temperature: float = 0.0          # 0: greedy
    top_k: int = 0                    # 0: all tokens
    top_p: float = 1.0                # 1: off
    repetition_penalty: float = 1.0   # 1: off
    seed: int | None = None           # the draws' generator (None: a fresh random one)
    presence_penalty: float = 0.0     # 0: off; OpenAI's range -2..2
    frequency_penalty: float = 0.0    # 0: off; OpenAI's range -2..2
    min_p: float = 0.0                # 0: off; vLLM's range 0..1

    def __post_init__(self):
        """Refuse settings the sampler cannot honour, naming the setting."""
        checks = (("temperature", lambda v: v >= 0, "a number >= 0"),
                  ("top_p", lambda v: 0 < v <= 1, "a number in (0, 1]"),
                  ("top_k", lambda v: v >= 0 and v == int(v), "an integer >= 0"),
                  ("repetition_penalty", lambda v: v > 0, "a number > 0"),
                  ("presence_penalty", lambda v: -2 <= v <= 2, "a number in [-2, 2]"),
                  ("frequency_penalty", lambda v: -2 <= v <= 2, "a number in [-2, 2]"),
                  ("min_p", lambda v: 0 <= v <= 1, "a number in [0, 1]"))
        for name, ok, allowed in checks:
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and not isinstance(value, bool)
                    and math.isfinite(value) and ok(value)):
                raise InputError(f"{name} is {value!r}; it must be {allowed}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int):
            raise InputError(f"top_k is {self.top_k!r}; it must be an integer")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)
                                      or self.seed < 0):
            raise InputError(f"seed is {self.seed!r}; it must be an integer >= 0")

    @property
    def greedy(self) -> bool:
        """The argmax of the logits as they are (no penalty, no draw; min_p, top-k and
        top-p never drop the top token)."""
        return (self.temperature <= 0 and self.repetition_penalty == 1.0
                and self.presence_penalty == 0 and self.frequency_penalty == 0)

    def generator(self) -> np.random.Generator:
        return np.random.default_rng(self.seed)


GREEDY = Sampling()


def sampling_with_defaults(defaults: dict, **given) -> Sampling:
    """A Sampling from the settings `given` (None: not given), else `defaults` (a model's
    generation_config.json, formats/generation_config.py), else Sampling's own."""
    values = dict(defaults)
    values.update({name: value for name, value in given.items() if value is not None})
    return Sampling(**values)


def apply_repetition_penalty(logits: np.ndarray, previous_ids, penalty: float) -> np.ndarray:
    """CTRL-style penalty on every token seen so far: positive logits / p, negative * p.
    (A penalty near 0 or near float64's largest may send a logit to +inf or -inf; the
    temperature step below takes +inf as "certain".)"""
    if penalty == 1.0 or len(previous_ids) == 0:
        return logits
    logits = logits.copy()
    seen = np.unique(np.asarray(previous_ids))
    vals = logits[seen]
    with np.errstate(over="ignore"):
        logits[seen] = np.where(vals > 0, vals / penalty, vals * penalty)
    return logits


def apply_presence_frequency_penalties(logits: np.ndarray, generated_ids, presence: float,
                                       frequency: float) -> np.ndarray:
    """OpenAI's penalties: logits[j] -= c[j] * frequency + (c[j] > 0) * presence, c[j] the
    times token j was generated so far (the prompt is not counted; vLLM's apply_penalties in
    model_executor/layers/utils.py does the same with its output_bin_counts)."""
    if (presence == 0 and frequency == 0) or len(generated_ids) == 0:
        return logits
    ids, counts = np.unique(np.asarray(generated_ids), return_counts=True)
    logits = logits.copy()
    logits[ids] -= counts * frequency + presence
    return logits


def divide_by_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    """(logits - max) / temperature: the same softmax as logits / temperature (softmax does
    not change when a constant is added), and safe for every temperature > 0. Every value is
    <= 0 and the largest is exactly 0, so nothing overflows however small the temperature:
    a value too far below the top for float64 becomes -inf, whose probability is 0 (its exp
    would underflow to 0 anyway). Logits at +inf (from a repetition penalty near 0) are the
    only candidates, equally likely; if every logit is -inf (a penalty near float64's
    largest, on a vocabulary that has all been seen), none is more likely than another."""
    top = logits.max()
    if top == np.inf:
        return np.where(logits == np.inf, 0.0, -np.inf)
    if top == -np.inf:
        return np.zeros_like(logits)
    with np.errstate(over="ignore"):
        return (logits - top) / temperature


def keep_min_p(logits: np.ndarray, min_p: float) -> np.ndarray:
    """vLLM's min_p: tokens whose probability is below min_p x the top token's become -inf
    (the top token always stays; 0 keeps all)."""
    if min_p <= 0:
        return logits
    probs = softmax(logits)
    return np.where(probs < min_p * probs.max(), -np.inf, logits)


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


def sample_next(logits, rng: np.random.Generator, sampling: Sampling = GREEDY,
                previous_ids=(), generated_ids=None) -> int:
    """One token id from logits [V]. `previous_ids`: the prompt and the tokens generated so
    far (the repetition penalty's); `generated_ids`: those generated only (the presence and
    frequency penalties'; None: none). Every setting Sampling accepts gives a token; logits
    holding NaN (a model that computed garbage) are a QwenNpError, not a draw."""
    if sampling.greedy:                  # the argmax as the logits are (float32 -> float64
        return int(np.argmax(logits))    # would change no order, so it is not done)
    logits = sampling_logits(logits, sampling, previous_ids, generated_ids)
    if sampling.temperature <= 0:
        return int(np.argmax(logits))
    return int(rng.choice(logits.size, p=softmax(logits)))


def accept_or_sample(logits, draft: int, rng: np.random.Generator, sampling: Sampling = GREEDY,
                     previous_ids=(), generated_ids=None) -> int:
    """The token from logits [V] where a draft guessed `draft` (prompt lookup: a guess with
    certainty, q(draft) = 1). Speculative sampling's rule (Leviathan et al. 2023, Chen et
    al. 2023) for such a draft: keep it with probability p(draft), else draw from p with
    the draft taken out, renormalized. Then

        P(draft) = p(draft),   P(x) = (1 - p(draft)) * p(x) / (1 - p(draft)) = p(x),

    the distribution sample_next draws from, though not the same draw for a seed. Greedy
    settings (and temperature 0 with penalties) give the argmax, as sample_next does."""
    if sampling.greedy:
        return int(np.argmax(logits))
    logits = sampling_logits(logits, sampling, previous_ids, generated_ids)
    if sampling.temperature <= 0:
        return int(np.argmax(logits))
    p = softmax(logits)                                              # [V] float64
    if rng.random() < p[draft]:
        return int(draft)
    p[draft] = 0.0                  # p(draft) < 1 here, so some other token has mass
    return int(rng.choice(p.size, p=p / p.sum()))


def sampling_logits(logits, sampling: Sampling, previous_ids=(), generated_ids=None):
    """logits [V] in float64 after the penalties, then (temperature > 0) the temperature,
    min-p, top-k and top-p: the draw is from softmax of these (sample_next)."""
    logits = np.asarray(logits, dtype=np.float64)
    if np.isnan(logits).any() or logits.max() == -np.inf:
        raise QwenNpError("the model's logits hold NaN (or are all -inf): nothing to sample")
    logits = apply_repetition_penalty(logits, previous_ids, sampling.repetition_penalty)
    generated = () if generated_ids is None else generated_ids
    logits = apply_presence_frequency_penalties(logits, generated, sampling.presence_penalty,
                                                sampling.frequency_penalty)
    if sampling.temperature <= 0:
        return logits
    logits = keep_min_p(divide_by_temperature(logits, sampling.temperature), sampling.min_p)
    return keep_top_p(keep_top_k(logits, sampling.top_k), sampling.top_p)
