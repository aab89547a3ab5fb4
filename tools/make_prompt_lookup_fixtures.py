"""Regenerate tests/fixtures/prompt_lookup/llama_cpp_drafts.json: what llama-cpp-python's
prompt lookup (`LlamaPromptLookupDecoding.find_candidate_pred_tokens`, 0.3.36 here) drafts
for a set of token sequences, the expected values of qwen_np/runtime/prompt_lookup.py.

    /work/lcpvenv/bin/python tools/make_prompt_lookup_fixtures.py

Run it with a Python that has llama-cpp-python. The sequences are drawn from small
vocabularies (so that n-grams repeat), lengths 1 to 60, with hand-made ones for the edges (no
earlier occurrence; a match whose continuation runs into the tail; n-gram sizes 1 to 3).
"""

import json
import os

import numpy as np
from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "prompt_lookup",
                   "llama_cpp_drafts.json")


def main():
    rng = np.random.default_rng(20261207)
    sequences = [[7], [7, 7], [1, 2, 3], [1, 2, 1], [1, 2, 3, 1, 2], [5, 1, 2, 9, 9, 1, 2],
                 [3, 3, 3, 3], [1, 2, 3, 4, 5, 6, 1, 2, 3]]
    for _ in range(200):
        vocab = int(rng.integers(2, 12))
        sequences.append(rng.integers(0, vocab, int(rng.integers(1, 61))).tolist())
    cases = []
    for ids in sequences:
        for max_ngram in (1, 2, 3):
            for k in (1, 3, 10):
                draft = LlamaPromptLookupDecoding.find_candidate_pred_tokens(
                    np.array(ids, dtype=np.intc), max_ngram, k)
                cases.append({"ids": ids, "max_ngram": max_ngram, "k": k,
                              "draft": [int(t) for t in draft]})
    with open(OUT, "w") as f:
        json.dump({"source": "llama-cpp-python LlamaPromptLookupDecoding."
                             "find_candidate_pred_tokens", "cases": cases}, f, separators=(",", ":"))
    print(f"{OUT}: {len(cases)} cases")


if __name__ == "__main__":
    main()
