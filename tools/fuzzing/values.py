"""Interesting values: wrong JSON values (some near the old one, some a path to the planted
sentinel), JSON nested past any recursion limit, interesting 64-bit integers."""

from __future__ import annotations

import random


class Raw:
    """JSON text written as it is: what json.dumps cannot or will not write (nesting past the
    recursion limit, integers past Python's 4300-digit limit, NaN spelled as a literal)."""

    def __init__(self, text: str, label: str):
        self.text, self.label = text, label

    def __repr__(self):
        return self.label


def deep_json(rng: random.Random) -> Raw:
    depth = rng.choice([1000, 10_000, 100_000])
    if rng.random() < 0.5:
        return Raw("[" * depth + "]" * depth, f"[[...]] x{depth}")
    return Raw('{"a":' * depth + "1" + "}" * depth, f'{{"a":...}} x{depth}')


def wrong_value(rng: random.Random, ctx, old=None):
    """A value a JSON field should not hold, sometimes a path to the planted sentinel, and
    half the time (when there is an old value) one near the old value: plausible numbers and
    names get past type checks to the shape and index arithmetic behind them."""
    near = near_values(old)
    if near and rng.random() < 0.5:
        return rng.choice(near)
    pool = [None, [], {}, "x", "", True, False, 0, -1, 1, 1.5, 1e308, -1e308, 2**31, 2**63,
            2**64, 10**30, -2**63 - 1, [None], [1, None], [-1], {"x": 1}, "64",
            Raw("1" + "0" * 5000, "10**5000"), Raw("NaN", "NaN"), Raw("-Infinity", "-Infinity"),
            Raw("1e999", "1e999"), "deep", "sentinel", "sentinel-rel", "/etc/passwd", "../x"]
    v = rng.choice(pool)
    if v == "deep":
        return deep_json(rng)
    if v == "sentinel":
        return ctx.sentinel
    if v == "sentinel-rel":
        return ctx.sentinel_rel
    return v


def near_values(old) -> list:
    if isinstance(old, bool):
        return [not old]
    if isinstance(old, int):
        return [old + 1, old - 1, old * 2, old // 2, old + 1000, -old, 2, 3, 7, 48]
    if isinstance(old, float):
        return [0.0, -old, old * 1e6, old / 1e6, 1e-45]
    if isinstance(old, str):
        return ["qwen3", "qwen2_moe", "llama", "Qwen2ForCausalLM", old.upper(), old + "x"]
    if isinstance(old, list) and old:
        return [old[:1], old + old, old[::-1]]
    return []


def interesting_u64(rng: random.Random, size: int) -> int:
    return rng.choice([0, 1, 2**31, 2**32 - 1, 2**32, 2**40, 2**63 - 1, 2**63, 2**64 - 1,
                       size, size - 1, size + 1])
