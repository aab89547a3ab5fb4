"""`qwen_np.load(path)` and the model handle it returns."""

from __future__ import annotations

import os
from typing import Callable

import numpy as np

from .config import QwenConfig
from .errors import FormatError
from .generate import generate as generate_loop
from .io.hf_dir import read_hf_dir
from .memory import release_free_heap
from .model import forward
from .tokenizer import Tokenizer
from .weights import ModelWeights, build_weights


class Model:
    """A loaded model: config, weights, a backend, and (if the checkpoint has one) a tokenizer."""

    def __init__(self, config: QwenConfig, weights: ModelWeights, backend, tokenizer_path,
                 source: str):
        self.config = config
        self.weights = weights
        self.backend = backend
        self.source = source
        self._tokenizer_path = tokenizer_path
        self._tokenizer = None

    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            if self._tokenizer_path is None:
                raise FormatError(f"{self.source}: no tokenizer.json (needed to turn text into ids)")
            self._tokenizer = Tokenizer.from_file(self._tokenizer_path)
        return self._tokenizer

    def stop_ids(self) -> list[int]:
        ids = list(self.config.eos_token_ids)
        if self._tokenizer_path is not None:
            ids += self.tokenizer.stop_ids()
        return list(dict.fromkeys(ids))

    def logits(self, ids) -> np.ndarray:
        """[len(ids), V]: one full forward pass from position 0, no cache."""
        ids = self._check_ids(ids)
        return self.backend.to_numpy(forward(self.config, self.weights, self.backend, ids))

    def generate(self, ids, max_new_tokens: int = 64, temperature: float = 0.0, top_k: int = 0,
                 top_p: float = 1.0, seed: int | None = None,
                 stream: Callable[[int], None] | None = None, repetition_penalty: float = 1.0,
                 stop_ids=None, cache=None) -> list[int]:
        """New ids only; stops on the model's EOS tokens (or `stop_ids`) or max_new_tokens."""
        ids = self._check_ids(ids)
        return generate_loop(self.config, self.weights, self.backend, ids, max_new_tokens,
                             temperature, top_k, top_p, repetition_penalty, seed,
                             self.stop_ids() if stop_ids is None else stop_ids, stream, cache)

    def _check_ids(self, ids) -> list[int]:
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.config.vocab_size]
        if bad:
            raise ValueError(f"token id {bad[0]} is outside the vocabulary (0..{self.config.vocab_size - 1})")
        if not ids:
            raise ValueError("no token ids given")
        return ids


def load(path: str, backend: str = "numpy", dtype: str = "float32") -> Model:
    """Load a Hugging Face model folder (safetensors) for the named backend and dtype."""
    from .backends import get_backend
    be = get_backend(backend, dtype)
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FormatError(f"{path}: no such file or folder")
    if not os.path.isdir(path):
        raise FormatError(f"{path}: not a model folder (expected a Hugging Face folder "
                          f"with config.json and safetensors)")
    config, tensors, tokenizer_path = read_hf_dir(path)
    weights = build_weights(config, tensors, be.dtype, path)
    release_free_heap()  # the temporaries of converting quantized tensors
    return Model(config, weights, be, tokenizer_path, path)
