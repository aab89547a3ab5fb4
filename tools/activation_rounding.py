"""How far rounding the activations to integers per block moves the real model's logits: the
error an integer-arithmetic kernel (int16 or int8 activations, as llama.cpp's kernels use)
would add, measured with the NumPy reference before any such kernel is written.

Each quantized product's input x is replaced, per block of 32 columns, by d * round(x / d)
with d = max|x| / L (L = 32767 for int16, 127 for int8), and the last-position logits of the
three prompts in tests/fixtures/gguf/real_model_logits.npz are compared with the plain
reference's, relative to the largest logit (the conformance suite's measure, tolerance
1e-4).

    python tools/activation_rounding.py [--levels 32767 127]
"""

from __future__ import annotations

import argparse
import os

import numpy as np

import qwen_np
from qwen_np.backends.numpy.backend import NumpyBackend
from qwen_np.apps.fetch import default_model_path
from qwen_np.tensors.quantized import QuantizedTensor

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "gguf",
                       "real_model_logits.npz")


def rounded_per_block(x: np.ndarray, levels: int, block: int = 32) -> np.ndarray:
    """x [T, n] (n a multiple of block) with each block of columns rounded to `levels` steps
    of its own largest magnitude."""
    T, n = x.shape
    xb = x.reshape(T, n // block, block)
    d = np.abs(xb).max(axis=-1, keepdims=True) / levels
    d[d == 0] = 1
    return (np.round(xb / d) * d).reshape(T, n).astype(np.float32)


class RoundedActivations(NumpyBackend):
    """The reference, with each quantized product's input rounded per block first."""

    def __init__(self, levels: int):
        super().__init__("float32")
        self.levels = levels

    def linear(self, x, w, bias=None):
        if isinstance(w, QuantizedTensor) and x.shape[1] % 32 == 0:
            x = rounded_per_block(np.asarray(x, np.float32), self.levels)
        return super().linear(x, w, bias)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--levels", type=int, nargs="+", default=[32767, 127])
    args = ap.parse_args()
    path = default_model_path()
    ref = qwen_np.load(path, backend="numpy", prepared_cache=False)
    fixture = np.load(FIXTURE)
    for levels in args.levels:
        rounded = qwen_np.load(path, backend=RoundedActivations(levels), prepared_cache=False)
        for k in range(3):
            ids = fixture[f"ids_{k}"]
            a, b = rounded.logits(ids)[-1], ref.logits(ids)[-1]
            err = np.max(np.abs(a - b)) / np.max(np.abs(b))
            print(f"levels {levels:6d}, prompt {k} ({len(ids)} tokens): logits error {err:.2e} "
                  f"relative, same argmax: {a.argmax() == b.argmax()}")


if __name__ == "__main__":
    main()
