"""Streamed text costs the same per token at token 1,900 as at token 100.

Two measurements, printed as a table (BENCHMARKS.md, "Streaming is linear"):

1. The text path alone, with the real Qwen2.5 tokenizer: 2,000 token ids (the README, encoded,
   repeated) fed one at a time to the server's StopText (one stop string), which decodes them
   with the tokenizer's decode stream; beside it, what StopText did before, decoding all the
   ids again at every token. Median microseconds per token over tokens 90-110 and 1890-1910,
   rounds interleaved (new, old, new, old, ...).
2. The whole server: `qwen-np serve` on a fixture model, one streamed chat request of 2,000
   tokens (ignore_eos; a copy of qwen2-tied-f32 allowed 4,096 positions), the time between
   chunks as the client reads them, median over the same windows (the model's own work per
   token grows a little with the context: attention). A chunk carries the tokens whose text is
   whole (random ids often end mid-character); its log-probabilities say how many, and the time
   since the last chunk is shared among them.

    python tools/bench_stream_text.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests"))

N = 2000
WINDOWS = {"tokens 90-110": slice(90, 110), "tokens 1890-1910": slice(1890, 1910)}


class DecodeAllText:
    """StopText before the decode stream: the decode of all ids, again at every token."""

    def __init__(self, tokenizer, stops):
        self.tokenizer, self.stops, self.ids, self.released = tokenizer, stops, [], 0

    def add(self, token):
        from qwen_np.apps.serve.stop_text import stop_prefix_length
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""
        end = len(text) - stop_prefix_length(text, self.stops)
        piece, self.released = text[self.released:end], max(self.released, end)
        return piece


def per_token_times(make, ids) -> list[float]:
    text = make()
    times = []
    for token in ids:
        t0 = time.perf_counter()
        text.add(token)
        times.append(time.perf_counter() - t0)
    return times


def text_path(rounds: int) -> dict:
    from qwen_np.apps.fetch import default_model_path
    from qwen_np.apps.serve.stop_text import StopText
    from qwen_np.runtime.tokenizer import load_tokenizer
    tok = load_tokenizer(default_model_path())
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        ids = tok.encode(f.read())
    ids = (ids * (N // len(ids) + 1))[:N]
    stops = ("<|never|>",)
    runs = {"StopText (decode stream)": [], "decode all ids each token (before)": []}
    for _ in range(rounds):
        runs["StopText (decode stream)"].append(
            per_token_times(lambda: StopText(tok, stops), ids))
        runs["decode all ids each token (before)"].append(
            per_token_times(lambda: DecodeAllText(tok, stops), ids))
    return {name: {w: statistics.median(t for r in rs for t in r[s]) * 1e6
                   for w, s in WINDOWS.items()} for name, rs in runs.items()}


def whole_server(rounds: int) -> dict:
    import openai
    from conftest import fixture_path
    from serving import client_of, server_process
    import json
    import shutil
    import tempfile
    gaps = []
    folder = os.path.join(tempfile.mkdtemp(prefix="bench-stream-"), "model")
    shutil.copytree(fixture_path("qwen2-tied-f32"), folder)      # its positions: 256 -> 4096
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    config["max_position_embeddings"] = 4096
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f)
    with server_process("--backend", "numba", "--context", "2100", model=folder) as s:
        client = client_of(s.url)
        for _ in range(rounds):
            per_token, last = [], None
            for chunk in client.chat.completions.create(
                    model="x", messages=[{"role": "user", "content": "Hi"}], max_tokens=N,
                    temperature=0, stream=True, logprobs=True, extra_body={"ignore_eos": True}):
                now = time.perf_counter()
                tokens = chunk.choices[0].logprobs.content if chunk.choices and \
                    chunk.choices[0].logprobs else []
                if tokens:              # a chunk's time, shared by the tokens it carries
                    if last is not None:
                        per_token += [(now - last) / len(tokens)] * len(tokens)
                    last = now
            gaps.append(per_token)
    shutil.rmtree(os.path.dirname(folder))
    assert openai
    return {"server, streamed chat (per token)": {
        w: statistics.median(g for r in gaps for g in r[s]) * 1e6 for w, s in WINDOWS.items()}}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    rows = {**text_path(args.rounds), **whole_server(max(1, args.rounds // 2))}
    print(f"| path | {' | '.join(WINDOWS)} | ratio |")
    print("| --- | " + " | ".join("---:" for _ in WINDOWS) + " | ---: |")
    for name, row in rows.items():
        a, b = row.values()
        print(f"| {name} | {a:.1f} µs | {b:.1f} µs | {b / a:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
