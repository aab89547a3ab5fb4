"""Prompt lookup: drafted tokens copied from the text so far, for speculative decoding.

An edit of code, a summary or an answer that quotes its question repeats long runs of its
prompt. Prompt lookup guesses the next tokens by finding the last few tokens earlier in the
text and copying what followed them there:

    history   ... def area ( r ) : return 3.14 * r * r  ...  def area ( r
    the last n = 2 tokens "( r" first occur earlier at position i; the draft is what came
    next there: ") : return 3.14" (up to k tokens)

The model then checks all k drafted tokens in one pass (model/forward.py:forward_as_decoded)
and keeps those it would have chosen itself (runtime/generate.py), so the output is the
same; only the number of passes changes. The rule is the one of transformers'
`prompt_lookup_num_tokens` (max_matching_ngram_size 2) and llama-cpp-python's
`LlamaPromptLookupDecoding`: the longest n-gram first (n = max_ngram .. 1), its earliest
occurrence whose continuation is not empty.
"""

from __future__ import annotations

import numpy as np

MAX_NGRAM = 2
MAX_PROMPT_LOOKUP = 32    # the most drafted tokens a step a request may ask for (a pass's rows)


def lookup_draft(history, k: int, max_ngram: int = MAX_NGRAM) -> list[int]:
    """Up to k token ids that followed the earliest earlier occurrence of history's last n
    tokens (n from max_ngram down to 1); [] when none occurs or k < 1."""
    if k < 1:
        return []
    ids = np.asarray(history, dtype=np.int64)                        # [L]
    for n in range(min(max_ngram, len(ids) - 1), 0, -1):
        tail = ids[-n:]
        windows = np.lib.stride_tricks.sliding_window_view(ids[:-1], n)   # [L - n, n]
        for at in np.flatnonzero((windows == tail).all(axis=1)):      # earliest first
            follow = ids[at + n:at + n + k]
            if len(follow):
                return follow.tolist()
    return []
