"""Log-probabilities in OpenAI's two shapes, from the batcher's entries.

An entry is (logprob, top): a token's log-probability (None for a prompt's first token, which
nothing predicts) and the k most likely tokens of its position as [(id, logprob)] (model/
logprobs.py; the model's own distribution, float64).

    chat          {"content": [{"token", "logprob", "bytes", "top_logprobs": [{"token",
                  "logprob", "bytes"}]}], "refusal": null}
    completions   {"tokens": [...], "token_logprobs": [...], "top_logprobs": [{token: logprob}],
                  "text_offset": [...]}   (the legacy shape; lm-evaluation-harness reads it)

A token's "token" is its own decode (a piece of a UTF-8 character decodes to U+FFFD), and
"bytes" its exact bytes.
"""

from __future__ import annotations


def chat_content(tokenizer, ids: list[int], entries: list) -> list[dict]:
    def one(i, lp):
        return {"token": tokenizer.decode([i]), "logprob": lp,
                "bytes": list(tokenizer.token_bytes(i))}
    return [{**one(i, lp), "top_logprobs": [one(t, tl) for t, tl in top]}
            for i, (lp, top) in zip(ids, entries)]


def completion_logprobs(tokenizer, ids: list[int], entries: list, offset: int = 0) -> dict:
    """The legacy shape for tokens `ids`; text_offset counts characters from `offset` (where
    these tokens' text starts in the choice's text)."""
    tokens = [tokenizer.decode([i]) for i in ids]
    offsets = []
    for t in tokens:
        offsets.append(offset)
        offset += len(t)
    return {"tokens": tokens, "token_logprobs": [lp for lp, _ in entries],
            "top_logprobs": [None if lp is None else
                             {tokenizer.decode([t]): tl for t, tl in top}
                             for lp, top in entries],
            "text_offset": offsets}


def joined(parts: list[dict]) -> dict:
    """Legacy logprobs of consecutive pieces as one (their lists end to end)."""
    out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for part in parts:
        for key in out:
            out[key] += part[key]
    return out
