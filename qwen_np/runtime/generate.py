"""The generation loop: prefill the prompt into the KV cache, then one token at a time."""

from __future__ import annotations

from typing import Callable

from qwen_np.model.kv_cache import new_kv_cache
from qwen_np.errors import InputError
from qwen_np.model.forward import forward
from qwen_np.model.sampling import GREEDY, Sampling, sample_next


PREFILL_CHUNK = 512   # prompt tokens per forward pass: bounds the activations of a long prompt


def generate(cfg, weights, be, ids, max_new_tokens: int = 64, sampling: Sampling = GREEDY,
             stop_ids=(), stream: Callable[[int], None] | None = None, cache=None,
             prefill_chunk: int = PREFILL_CHUNK) -> list[int]:
    """New token ids only. Stops after max_new_tokens or on a stop id (which is included).

    `cache` may hold earlier turns (chat): `ids` are then the tokens that follow them. The
    prompt goes through the model `prefill_chunk` tokens at a time (the same numbers as one
    pass: attention is causal either way, and the original Qwen's dynamic-NTK alpha is chosen
    from the whole prompt).
    """
    ids = [int(i) for i in ids]
    if not ids:
        raise InputError("generate needs at least one prompt token")
    if max_new_tokens < 0:
        raise InputError(f"max_new_tokens is {max_new_tokens}; it cannot be negative")
    if prefill_chunk < 1:
        raise InputError(f"prefill_chunk is {prefill_chunk}; it must be at least 1")
    if cache is None:
        cache = new_kv_cache(cfg, len(ids) + max_new_tokens, be)
    rng = sampling.generator()
    stop = set(int(i) for i in stop_ids)
    history = list(ids)
    new: list[int] = []
    if cache.qwen_v1_quantizer:     # Qwen's cache quantizer scales each pass's chunk as one
        prefill_chunk = len(ids)    # block: its prompt goes in one pass, as in Qwen's code
    length = len(ids) if cache.length == 0 else None
    for at in range(0, len(ids), prefill_chunk):                       # prefill
        logits = forward(cfg, weights, be, ids[at:at + prefill_chunk], cache, last_only=True,
                         prompt_length=length)
    for _ in range(max_new_tokens):
        token = next_token(be, logits, rng, sampling, history, new)
        new.append(token)
        history.append(token)
        if stream is not None:
            stream(token)
        if token in stop or len(new) == max_new_tokens:
            break
        logits = forward(cfg, weights, be, [token], cache, last_only=True)  # decode one
    return new


def next_token(be, logits, rng, sampling: Sampling, history, generated) -> int:
    """The token after the last row of logits [T, V]; `history` is the prompt and the tokens
    generated so far, `generated` those generated only (the penalties' inputs)."""
    if sampling.greedy and hasattr(be, "greedy_token"):
        return be.greedy_token(logits)          # chosen where the logits are (a GPU)
    return sample_next(be.to_numpy(logits)[-1], rng, sampling, history, generated)
