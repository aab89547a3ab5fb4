"""Time to first token with and without the prefix cache, in one run of one server.

    python tools/bench_prefix_cache.py [-m MODEL] [--backend numba] [--system-tokens 1000]

A system prompt of about --system-tokens tokens, shared by 8 chat requests with different
user turns, streamed one after another. Each user turn is asked twice, interleaved: with the
cache (it reuses the system prompt's whole 128-token chunks) and with `cache_prompt: false`
(the whole prompt prefilled); the time to first token is from sending the request to the
first streamed content. One warm-up request first (it fills a slot with the system prompt).
Prints each pair and the medians (Markdown, for BENCHMARKS.md), and checks that both give
the same greedy text.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import time

from soak_serve import started_server

QUESTIONS = ["What is a list?", "Name three rivers.", "How do I sort a dict by value?",
             "What is 17 times 23?", "Write a haiku about rain.", "What does HTTP 404 mean?",
             "Explain recursion briefly.", "Which is larger, 2^10 or 10^3?"]


def system_prompt(tokens: int) -> str:
    """About `tokens` tokens of plain rules (about 12 tokens each)."""
    return " ".join(f"Rule {i}: answer plainly and keep it short." for i in range(tokens // 12))


def first_token_seconds(url: str, messages: list, cache: bool) -> tuple[float, str, int]:
    """(seconds to the first content chunk, the whole text, (prompt tokens, cached))."""
    conn = http.client.HTTPConnection(url.removeprefix("http://"), timeout=600)
    body = {"messages": messages, "max_tokens": 8, "temperature": 0, "stream": True,
            "cache_prompt": cache, "stream_options": {"include_usage": True}}
    started = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", body=json.dumps(body))
    response = conn.getresponse()
    first, text, cached = None, "", None
    for line in response:
        if not line.startswith(b"data: ") or line.strip() == b"data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        if chunk.get("usage"):
            cached = (chunk["usage"]["prompt_tokens"],
                      chunk["usage"]["prompt_tokens_details"]["cached_tokens"])
        for c in chunk["choices"]:
            piece = c["delta"].get("content")
            if piece and first is None:
                first = time.perf_counter() - started
            text += piece or ""
    conn.close()
    return first, text, cached


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-m", "--model", default=None)
    p.add_argument("--backend", default="numba")
    p.add_argument("--system-tokens", type=int, default=1000)
    args = p.parse_args(argv)
    if args.model is None:
        from qwen_np.apps.fetch import default_model_path
        args.model = default_model_path()
    system = system_prompt(args.system_tokens)
    rows, same = [], True
    with started_server(args.model, args.backend, context=2048, max_batch=2) as (url, _):
        first_token_seconds(url, [{"role": "system", "content": system},
                                  {"role": "user", "content": "hello"}], True)
        for q in QUESTIONS:
            messages = [{"role": "system", "content": system}, {"role": "user", "content": q}]
            with_cache = first_token_seconds(url, messages, True)
            without = first_token_seconds(url, messages, False)
            same &= with_cache[1] == without[1]
            rows.append((q, with_cache[0], without[0], with_cache[2], without[2]))
    print("| user turn | prompt tokens | reused (cache / no cache) | first token, cache (s) "
          "| first token, no cache (s) | ratio |")
    print("|---|---:|---:|---:|---:|---:|")
    for q, a, b, ca, cb in rows:
        print(f"| {q} | {ca[0]} | {ca[1]} / {cb[1]} | {a:.3f} | {b:.3f} | {a / b:.2f} |")
    med_a = statistics.median(r[1] for r in rows)
    med_b = statistics.median(r[2] for r in rows)
    print(f"| **median** | | | **{med_a:.3f}** | **{med_b:.3f}** | **{med_a / med_b:.2f}** |")
    print(f"same greedy text with and without the cache: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
