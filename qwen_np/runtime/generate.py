"""The generation loop: prefill the prompt into the KV cache, then one token at a time (or,
with prompt lookup, a token and its drafted followers checked in one pass)."""

from __future__ import annotations

from typing import Callable

from qwen_np.model.kv_cache import new_kv_cache
from qwen_np.errors import InputError
from qwen_np.model.forward import forward, forward_as_decoded
from qwen_np.model.sampling import GREEDY, Sampling, accept_or_sample, sample_next
from qwen_np.runtime.prompt_lookup import MAX_PROMPT_LOOKUP, lookup_draft


PREFILL_CHUNK = 512   # prompt tokens per forward pass: bounds the activations of a long prompt


def generate(cfg, weights, be, ids, max_new_tokens: int = 64, sampling: Sampling = GREEDY,
             stop_ids=(), stream: Callable[[int], None] | None = None, cache=None,
             prefill_chunk: int = PREFILL_CHUNK, prompt_lookup: int = 0,
             cached_ids=()) -> list[int]:
    """New token ids only. Stops after max_new_tokens or on a stop id (which is included).

    `cache` may hold earlier turns (chat): `ids` are then the tokens that follow them, and
    `cached_ids` those the cache holds (the repetition penalty and prompt lookup read them
    with the rest of the text; they are not run again). The
    prompt goes through the model `prefill_chunk` tokens at a time (the same numbers as one
    pass: attention is causal either way, and the original Qwen's dynamic-NTK alpha is chosen
    from the whole prompt).

    `prompt_lookup` = k > 0: speculative decoding with up to k drafted tokens a step, drafted
    from the text so far (runtime/prompt_lookup.py) and checked in one pass whose rows are
    computed as plain decoding computes them (forward_as_decoded). Greedy decoding then gives
    the same tokens, bit for bit, as without it. Sampled decoding keeps a draft by
    speculative sampling's rule (model/sampling.py:accept_or_sample): each token has the
    distribution it has without drafts, but the draws differ, so a seed gives another text.
    """
    ids = [int(i) for i in ids]
    if not ids:
        raise InputError("generate needs at least one prompt token")
    if max_new_tokens < 0:
        raise InputError(f"max_new_tokens is {max_new_tokens}; it cannot be negative")
    if prefill_chunk < 1:
        raise InputError(f"prefill_chunk is {prefill_chunk}; it must be at least 1")
    if not 0 <= prompt_lookup <= MAX_PROMPT_LOOKUP:
        raise InputError(f"prompt_lookup is {prompt_lookup}; it must be 0 (off) to "
                         f"{MAX_PROMPT_LOOKUP}")
    if cache is None:
        cache = new_kv_cache(cfg, len(ids) + max_new_tokens, be)
    rng = sampling.generator()
    stop = set(int(i) for i in stop_ids)
    history = [int(i) for i in cached_ids] + ids
    new: list[int] = []
    if cache.qwen_v1_quantizer:     # Qwen's cache quantizer scales each pass's chunk as one
        prefill_chunk = len(ids)    # block: its prompt goes in one pass, as in Qwen's code
    length = len(ids) if cache.length == 0 else None
    for at in range(0, len(ids), prefill_chunk):                       # prefill
        logits = forward(cfg, weights, be, ids[at:at + prefill_chunk], cache, last_only=True,
                         prompt_length=length)
    token = next_token(be, logits, rng, sampling, history, new) if max_new_tokens else None
    while token is not None:
        new.append(token)
        history.append(token)
        if stream is not None:
            stream(token)
        if token in stop or len(new) == max_new_tokens:
            break
        room = min(max_new_tokens - len(new) - 1, cache.max_tokens - cache.length - 1)
        draft = lookup_draft(history, min(prompt_lookup, room))
        if not draft:
            logits = forward(cfg, weights, be, [token], cache, last_only=True)  # decode one
            token = next_token(be, logits, rng, sampling, history, new)
            continue
        start = cache.length
        logits = forward_as_decoded(cfg, weights, be, [token] + draft, cache)   # [1 + d, V]
        kept, ended = 0, False
        for j, guess in enumerate(draft):                   # the drafts the model agrees with
            token = next_token(be, logits[j:j + 1], rng, sampling, history, new, guess)
            if token != guess:
                break
            kept += 1
            new.append(token)
            history.append(token)
            if stream is not None:
                stream(token)
            if token in stop:
                ended = True
                break
        else:                                   # every draft kept: the token after the last
            token = next_token(be, logits[len(draft):], rng, sampling, history, new)
        if ended:                               # a kept stop token: the end, and (as in
            cache.length = start + kept         # plain decoding) not a cached position
            break
        cache.length = start + 1 + kept         # [token] + the kept drafts stay cached
    return new


def next_token(be, logits, rng, sampling: Sampling, history, generated, draft=None) -> int:
    """The token after the last row of logits [T, V]; `history` is the prompt and the tokens
    generated so far, `generated` those generated only (the penalties' inputs). `draft`: the
    token prompt lookup guessed here (kept by speculative sampling's rule)."""
    if sampling.greedy and hasattr(be, "greedy_token"):
        return be.greedy_token(logits)          # chosen where the logits are (a GPU)
    row = be.to_numpy(logits)[-1]
    if draft is None:
        return sample_next(row, rng, sampling, history, generated)
    return accept_or_sample(row, draft, rng, sampling, history, generated)
