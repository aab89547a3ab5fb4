"""Load on an OpenAI-compatible server: N concurrent streaming clients, N = 1, 2, 4, 8.

    python tools/load_test.py --url http://127.0.0.1:8000 [--clients 1,2,4,8] [--tokens 64]
                              [--pid SERVER_PID] [--disconnect] [--json OUT.json]

Each client streams one greedy completion (temperature 0, `max_tokens` --tokens) of its own
prompt from PROMPTS through POST /v1/completions. First every prompt is served alone, one
after another: those texts are the single-stream greedy outputs, and every later output must
equal its own. For each N it reports:

    aggregate decode tok/s   the tokens after each client's first, all clients together, over
                             the time from the first first-token to the last token (a server
                             that serves one request at a time gets its one-stream rate)
    output tok/s             all tokens / the wall time of the round (prefills included)
    TTFT                     time to first token, median and worst over the clients
    p50 / p99 latency        of the gaps between a client's successive tokens, all clients
    failed, mismatched       requests that failed, and outputs unequal to their single-stream one

Tokens are counted as the streamed chunks that carry text (one per token for llama.cpp and
qwen-np, which sends held-back text, such as an unfinished UTF-8 character, with the next
token, so a merged chunk counts once); `usage` gives the exact count where the server sends
it with stream_options.include_usage, and is used for the tokens/s then.

--disconnect runs 8 clients of which 4, chosen at random (seeded), hang up after a random
number of tokens; the other 4 must still get their single-stream outputs, and with --pid the
server's resident memory (VmRSS) is read before the load, after it, and after the same load
again, to show it comes back to its level.

Nothing is written but the --json file (if asked for); the server is started by the caller
(BENCHMARKS.md has the commands for qwen-np serve, llama-cpp-python's server and llama.cpp's
llama-server).
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import statistics
import sys
import threading
import time
import urllib.parse

PROMPTS = [
    "def fibonacci(n):",
    "import numpy as np\n\ndef softmax(x):",
    "class Stack:\n    def __init__(self):",
    "# Sort a list of numbers with quicksort\n",
    "SELECT name, COUNT(*) FROM orders",
    "def is_prime(n):\n    \"\"\"Return True if n is prime.\"\"\"",
    "function debounce(fn, ms) {",
    "#include <stdio.h>\n\nint main(void) {",
]


def stream_one(url: str, model: str, prompt: str, tokens: int, hang_up_after: int | None = None,
               key: str | None = None) -> dict:
    """One streamed completion: its text, the arrival time of each chunk with text, the usage
    count if sent, and whether it failed."""
    body = {"model": model, "prompt": prompt, "max_tokens": tokens, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    out = {"text": "", "times": [], "usage": None, "failed": None, "start": time.perf_counter()}
    where = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(where.hostname, where.port, timeout=600)
    try:
        connection.request("POST", "/v1/completions", json.dumps(body), headers)
        r = connection.getresponse()
        if r.status != 200:
            out["failed"] = f"HTTP {r.status}: {r.read()[:200]!r}"
            return out
        for raw in r:                                    # the event stream, line by line
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                out["usage"] = event["usage"]["completion_tokens"]
            for choice in event.get("choices", []):
                if choice.get("text"):
                    out["text"] += choice["text"]
                    out["times"].append(time.perf_counter())
            if hang_up_after is not None and len(out["times"]) >= hang_up_after:
                out["hung_up"] = True
                return out              # closing the connection below hangs up
    except (OSError, http.client.HTTPException, ValueError) as e:
        out["failed"] = f"{type(e).__name__}: {e}"
    finally:
        connection.close()
    return out


def run_round(url, model, prompts, tokens, hang_ups=None, key=None) -> list[dict]:
    """Every prompt streamed at once, one thread each."""
    results = [None] * len(prompts)

    def client(i):
        results[i] = stream_one(url, model, prompts[i], tokens,
                                None if hang_ups is None else hang_ups[i], key)
    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def summary(results: list[dict], references: list[str] | None) -> dict:
    done = [r for r in results if not r["failed"] and not r.get("hung_up")]
    gaps, ttft = [], []
    for r in done:
        t = r["times"]
        gaps += [b - a for a, b in zip(t, t[1:])]
        if t:
            ttft.append(t[0] - r["start"])
    timed = [r for r in done if len(r["times"]) >= 2]
    decode_span = max(r["times"][-1] for r in timed) - min(r["times"][0] for r in timed) \
        if timed else float("nan")
    decoded = sum((r["usage"] or len(r["times"])) - 1 for r in timed)
    wall = max(r["times"][-1] for r in done if r["times"]) - min(r["start"] for r in results) \
        if any(r["times"] for r in done) else float("nan")
    tokens = sum(r["usage"] or len(r["times"]) for r in done)
    mismatched = 0 if references is None else sum(
        r["text"] != ref for r, ref in zip(results, references)
        if not r["failed"] and not r.get("hung_up"))
    q = statistics.quantiles(gaps, n=100) if len(gaps) >= 2 else [float("nan")] * 99
    return {"clients": len(results), "aggregate_decode_tok_s": decoded / decode_span,
            "output_tok_s": tokens / wall, "ttft_median_s": statistics.median(ttft),
            "ttft_max_s": max(ttft), "latency_p50_ms": 1e3 * q[49], "latency_p99_ms": 1e3 * q[98],
            "tokens": tokens, "failed": sum(bool(r["failed"]) for r in results),
            "mismatched": mismatched}


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--model", default="default", help="the request's model field")
    ap.add_argument("--clients", default="1,2,4,8")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--key", default=None, help="API key, if the server wants one")
    ap.add_argument("--pid", type=int, default=None, help="the server's pid (memory readings)")
    ap.add_argument("--disconnect", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=1,
                    help="run the list of client counts this many times (the machine is noisy: "
                         "compare counts within one pass)")
    ap.add_argument("--json", default=None, help="write the results here too")
    args = ap.parse_args()
    counts = [int(c) for c in args.clients.split(",")]
    n_prompts = 8 if args.disconnect else max(counts)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(n_prompts)]

    alone = [stream_one(args.url, args.model, p, args.tokens, key=args.key) for p in prompts]
    failed = [r["failed"] for r in alone if r["failed"]]
    if failed:
        print(f"load_test: single-stream requests failed: {failed[0]}", file=sys.stderr)
        return 1
    references = [r["text"] for r in alone]
    rows = []
    if args.disconnect:
        rng = random.Random(args.seed)
        leave = set(rng.sample(range(8), 4))
        hang_ups = [rng.randint(1, args.tokens // 2) if i in leave else None for i in range(8)]
        before = rss_kib(args.pid) if args.pid else None
        rounds = []
        for _ in range(2):
            results = run_round(args.url, args.model, prompts, args.tokens, hang_ups, args.key)
            time.sleep(2.0)     # the server notices the hang-ups and frees their slots
            rounds.append((summary(results, references),
                           rss_kib(args.pid) if args.pid else None))
        for s, rss in rounds:
            s.update(disconnected=sorted(leave), rss_before_kib=before, rss_after_kib=rss)
            rows.append(s)
    else:
        for _ in range(args.repeat):
            for n in counts:
                rows.append(summary(run_round(args.url, args.model, prompts[:n], args.tokens,
                                              key=args.key), references[:n]))
    print("| clients | aggregate decode tok/s | x 1 client | output tok/s | TTFT median / max (s) "
          "| latency p50 / p99 (ms) | failed | mismatched |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    one = None
    for s in rows:
        if s["clients"] == 1:
            one = s["aggregate_decode_tok_s"]     # the pass's own single stream
        ratio = f"{s['aggregate_decode_tok_s'] / one:.2f}" if one else "-"
        s["vs_one_client"] = ratio
        print(f"| {s['clients']} | {s['aggregate_decode_tok_s']:.1f} | {ratio} | "
              f"{s['output_tok_s']:.1f} | "
              f"{s['ttft_median_s']:.2f} / {s['ttft_max_s']:.2f} | {s['latency_p50_ms']:.1f} / "
              f"{s['latency_p99_ms']:.1f} | {s['failed']} | {s['mismatched']} |")
        if "rss_before_kib" in s and s["rss_before_kib"]:
            print(f"  disconnected clients {s['disconnected']}; server VmRSS before "
                  f"{s['rss_before_kib'] / 1024:.1f} MiB, after {s['rss_after_kib'] / 1024:.1f} MiB")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0 if all(s["failed"] == 0 and s["mismatched"] == 0 for s in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
