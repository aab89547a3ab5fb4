"""`qwen_np.load(path)` and the model handle it returns."""

from __future__ import annotations

import os
import sys
from typing import Callable

import numpy as np

from qwen_np.model.kv_cache import KVCache, check_kv_kind, default_kv_kind, new_kv_cache
from qwen_np.model.config import QwenConfig
from qwen_np.errors import FormatError, InputError
from qwen_np.runtime.generate import generate as generate_loop
from qwen_np.formats.chat_templates import read_chat_templates
from qwen_np.formats.generation_config import read_generation_defaults
from qwen_np.formats.open import open_model, reading
from qwen_np.runtime.chat import ChatFormat, chat_format, conversation_ids
from qwen_np.tensors.mapped import lookup_only
from qwen_np.runtime.process_memory import release_free_heap
from qwen_np.model.forward import forward
from qwen_np.runtime.prepared import cache_entry
from qwen_np.model.sampling import GREEDY, Sampling
from qwen_np.runtime.tokenizer import Tokenizer, load_tokenizer, tokenizer_from  # noqa: F401 (load_tokenizer: qwen_np's API)
from qwen_np.model.weights import ModelWeights, build_weights, place_vectors, prepare_tensors


class Model:
    """A loaded model: config, weights, a backend, and (if the checkpoint has one) a tokenizer."""

    def __init__(self, config: QwenConfig, weights: ModelWeights, backend,
                 make_tokenizer: Callable[[], Tokenizer] | None, source: str,
                 kv_cache: str | None = None, generation_defaults: dict | None = None):
        self.config = config
        self.weights = weights
        self.backend = backend
        self.source = source
        # the KV cache's storage (model/kv_cache.py): float32, float16 or int8; by default the compute
        # dtype, or int8 for a Qwen v1 checkpoint whose config asks for cache quantization
        self.kv_cache = check_kv_kind(kv_cache or default_kv_kind(config, backend))
        # generation_config.json's sampling settings (formats/generation_config.py; {} for a
        # GGUF): what `run`, `chat` and the server use where a request does not say
        self.generation_defaults = dict(generation_defaults or {})
        self._make_tokenizer = make_tokenizer   # built on first use (it takes a moment)
        self._tokenizer = None
        self._chat_format = None                # read on first use (runtime/chat.py)

    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            if self._make_tokenizer is None:
                raise FormatError(f"{self.source}: no tokenizer.json or qwen.tiktoken (needed "
                                  f"to turn text into ids)")
            self._tokenizer = self._make_tokenizer()
        return self._tokenizer

    @property
    def chat_format(self) -> ChatFormat:
        """How this model's chat prompts are built: its chat template, read from its files
        on first use (for a GGUF, its metadata: 0.2 s for the real 0.5B file)."""
        if self._chat_format is None:
            with reading(self.source):
                templates = read_chat_templates(self.source)
            self._chat_format = chat_format(self.config.model_type, templates, self.source,
                                            print_notice)
        return self._chat_format

    def chat_prompt_ids(self, messages: list[dict], tools=None, documents=None,
                        add_generation_prompt: bool = True, **template_kwargs) -> list[int]:
        """The prompt ids for `messages`, as transformers' apply_chat_template(messages,
        tools=tools, add_generation_prompt=..., tokenize=True, **template_kwargs) gives them
        with this model's tokenizer and template (template_kwargs: enable_thinking=False,
        ...). A model without a template: ChatML (or the original Qwen's make_context)."""
        return conversation_ids(self.tokenizer, self.chat_format, messages, tools, documents,
                                add_generation_prompt, **template_kwargs)

    def stop_ids(self) -> list[int]:
        """The config's EOS ids and the tokenizer's <|endoftext|> and <|im_end|> (and, for the
        original Qwen, <|im_start|>, as its chat's stop words are)."""
        ids = list(self.config.eos_token_ids)
        if self._make_tokenizer is not None:
            ids += self.tokenizer.stop_ids()
            if self.config.model_type == "qwen" and self.tokenizer.token_id("<|im_start|>"):
                ids.append(self.tokenizer.token_id("<|im_start|>"))
        return list(dict.fromkeys(ids))

    def new_cache(self, max_tokens: int) -> KVCache:
        """An empty KV cache of this model's kind for max_tokens positions."""
        return new_kv_cache(self.config, max_tokens, self.backend, self.kv_cache)

    def logits(self, ids) -> np.ndarray:
        """[len(ids), V]: one full forward pass from position 0 (through a fresh cache of the
        model's kind, so that an int8 cache's rounding is in these logits too)."""
        ids = self._check_ids(ids)
        return self.backend.to_numpy(forward(self.config, self.weights, self.backend, ids,
                                             self.new_cache(len(ids))))

    def generate(self, ids, max_new_tokens: int = 64, sampling: Sampling = GREEDY,
                 stream: Callable[[int], None] | None = None, stop_ids=None,
                 cache=None, prompt_lookup: int = 0, cached_ids=()) -> list[int]:
        """New ids only; stops on the model's EOS tokens (or `stop_ids`) or max_new_tokens.
        `sampling` (model/sampling.py): greedy unless told otherwise. `prompt_lookup` = k:
        speculative decoding with up to k tokens drafted from the text so far (greedy: the
        same tokens; runtime/generate.py). `cached_ids`: the ids `cache` already holds
        (an earlier turn), read by the repetition penalty and prompt lookup."""
        ids = self._check_ids(ids)
        if cache is None:
            cache = self.new_cache(len(ids) + max(max_new_tokens, 0))
        return generate_loop(self.config, self.weights, self.backend, ids, max_new_tokens,
                             sampling, self.stop_ids() if stop_ids is None else stop_ids,
                             stream, cache, prompt_lookup=prompt_lookup,
                             cached_ids=cached_ids)

    def _check_ids(self, ids) -> list[int]:
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.config.vocab_size]
        if bad:
            raise InputError(f"{self.source}: token id {bad[0]} is outside the vocabulary "
                             f"(0..{self.config.vocab_size - 1})")
        if not ids:
            raise InputError(f"{self.source}: no token ids given")
        return ids


def print_notice(text: str) -> None:
    print(f"qwen-np: {text}", file=sys.stderr)


def read_model(path: str):
    """(config, tensors under HF names, tokenizer factory or None) of a Hugging Face folder
    (float, GPTQ or AWQ safetensors) or a GGUF file (formats/open.py)."""
    config, tensors, source = open_model(path)
    return config, tensors, None if source is None else (lambda: tokenizer_from(source))


def load(path: str, backend="numpy", dtype: str = "float32",
         threads: int | None = None, kv_cache: str | None = None,
         prepared_cache: bool | None = None) -> Model:
    """Load a Hugging Face model folder or a GGUF file for the named backend ("numpy", the
    reference, "numba", "cupy", or "auto": numba where it loads, else numpy with a notice on
    stderr; or a backend object) and dtype; `threads` (default: all
    cores) for the CPU backends' kernels and BLAS;
    `kv_cache` the KV cache's storage: "float32", "float16" or "int8" (model/kv_cache.py; default the
    compute dtype, or int8 where a Qwen v1 config sets use_cache_quantization);
    `prepared_cache` whether to map the model as prepared by an earlier load, and write it
    after this one (runtime/prepared/): default on for the numpy and numba backends unless
    QWEN_NP_PREPARED_CACHE=0; False turns it off."""
    if kv_cache is not None:
        check_kv_kind(kv_cache)
    from qwen_np.backends import get_backend
    be = get_backend(backend, dtype, threads, notice=print_notice) \
        if isinstance(backend, str) else backend
    path = os.fspath(path)
    cache = cache_entry(path, be, prepared_cache)         # None: not cached
    loaded = cache.read() if cache is not None else None
    if loaded is None:
        config, tensors, make_tokenizer = read_model(path)
        prepare_tensors(tensors, be.prepare)
    else:
        config, tensors, make_tokenizer = loaded
    weights = build_weights(config, tensors, be.dtype, path)
    if cache is not None and loaded is None:    # written once the tensors are checked
        make_tokenizer = cache.write(config, tensors, make_tokenizer)
    place_vectors(weights, be.asarray)
    if weights.embed is not weights.lm_head:    # lookups only: rows read from the file
        weights.embed = lookup_only(weights.embed)
    release_free_heap()  # the temporaries of converting quantized tensors
    return Model(config, weights, be, make_tokenizer, path, kv_cache,
                 checked_generation_defaults(path))


def checked_generation_defaults(path: str) -> dict:
    """generation_config.json's sampling settings, each in the sampler's range (a FormatError
    naming the file, at load, for one that is not)."""
    defaults = read_generation_defaults(path)
    try:
        Sampling(**defaults)
    except InputError as e:
        raise FormatError(f"{os.path.join(path, 'generation_config.json')}: {e}") from None
    return defaults
