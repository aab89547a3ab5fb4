"""A soak of `qwen-np serve`: many mixed requests from concurrent clients, then the checks
that nothing leaked and nothing was answered wrongly.

    python tools/soak_serve.py [-m MODEL] [--backend numba] [--requests 1000] [--clients 8]

starts a server on a free port (or uses --url, with --pid for its resource checks), sends
the requests, and prints a report (JSON, and one Markdown table row for BENCHMARKS.md).
tests/test_serve_soak.py runs it short in CI. The mix, in a fixed seeded order:

    greedy       completions and chat, plain and streamed: the text must equal the model's own
                 greedy single-stream run (Model.generate in this process, same backend)
    sampled      temperature/top-p/top-k with a seed, and the extreme values that used to
                 fail a whole batch (temperature 1.5e-307, repetition_penalty 1e-310)
    cancelled    a stream whose client leaves after two events; a plain request whose client
                 leaves right after sending it
    bad          a bad parameter, a lone surrogate, bad JSON, a prompt longer than the
                 context, an unknown path: each a 4xx in OpenAI's error shape

Every answer must be well-formed: a 200 in OpenAI's shape (a stream ends with
`data: [DONE]`), or OpenAI's error object; no 500 at all. At the end, after a warm-up fifth
of the requests and again after all of them, the server is read: open file descriptors
(/proc/PID/fd), resident memory (VmRSS), /health's running and waiting counts, and
/metrics' slots and prefix-cache bytes. Nothing may grow but the prefix cache (within its
budget) and the allocator's noise (RSS_SLACK).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

RSS_SLACK = 16 << 20          # resident memory may move this much beyond the prefix cache
PROMPTS = ["Hello there, how are you", "def fibonacci(n):", "The quick brown fox",
           "import numpy as np\n", "SELECT name FROM", "one two three four", "# Sort a list",
           "class Stack:"]
QUESTIONS = ["hi", "What is 2+2?", "Name a river.", "Say something short."]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def started_server(model: str, backend: str, context: int, max_batch: int):
    """A `qwen-np serve` process; yields (url, pid); stopped with SIGTERM afterwards."""
    port = free_port()
    log = tempfile.TemporaryFile()        # (a pipe nobody reads could fill and stop it)
    proc = subprocess.Popen([sys.executable, "-m", "qwen_np", "serve", "-m", model,
                             "--backend", backend, "--port", str(port), "--context",
                             str(context), "--max-batch", str(max_batch), "--log-level",
                             "warning"], stdout=subprocess.DEVNULL, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                log.seek(0)
                raise SystemExit(f"the server exited: {log.read().decode(errors='replace')}")
            try:
                urllib.request.urlopen(url + "/health", timeout=5).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("the server did not start within 300 s")
                time.sleep(0.2)
        yield url, proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def expected_texts(model_path: str, backend: str, tokens: int) -> dict:
    """{("completion" | "chat", text): greedy single-stream text} for every prompt."""
    import qwen_np
    from qwen_np.runtime.chat import messages_prompt_ids
    from qwen_np.runtime.tokenizer import DEFAULT_SYSTEM_BY_MODEL_TYPE
    m = qwen_np.load(model_path, backend=backend)
    kind = m.config.model_type

    def greedy(ids):
        new = m.generate(ids, max_new_tokens=tokens)
        if new and new[-1] in m.stop_ids():
            new = new[:-1]
        return m.tokenizer.decode(new)
    expected = {("completion", p): greedy(m.tokenizer.encode(p)) for p in PROMPTS}
    for q in QUESTIONS:
        ids = messages_prompt_ids(m.tokenizer, kind, [{"role": "user", "content": q}],
                                  DEFAULT_SYSTEM_BY_MODEL_TYPE.get(kind))
        expected[("chat", q)] = greedy(ids)
    return expected


def request_mix(n: int, seed: int, tokens: int, context: int) -> list[dict]:
    """n request specs: {kind, path, body (bytes), stream, expect}."""
    rng = random.Random(seed)
    specs = []
    for i in range(n):
        kind = rng.choices(["greedy", "sampled", "cancelled", "bad"], [5, 2, 2, 1])[0]
        stream = rng.random() < 0.5
        chat = rng.random() < 0.4
        key = ("chat", rng.choice(QUESTIONS)) if chat else ("completion", rng.choice(PROMPTS))
        body = ({"messages": [{"role": "user", "content": key[1]}]} if chat
                else {"prompt": key[1]})
        body.update(max_tokens=tokens, stream=stream)
        path = "/v1/chat/completions" if chat else "/v1/completions"
        spec = {"kind": kind, "path": path, "stream": stream, "expect": None}
        if kind == "greedy":
            body["temperature"] = 0
            spec["expect"] = key
        elif kind == "sampled":
            body.update(rng.choice([
                {"temperature": 0.8, "top_p": 0.9, "seed": i},
                {"temperature": 1.2, "top_k": 5, "seed": i},
                {"temperature": 1.5e-307}, {"temperature": 1, "repetition_penalty": 1e-310}]))
        elif kind == "cancelled":
            body.update(max_tokens=4 * tokens, ignore_eos=True, temperature=0)
        if kind == "bad":
            path, raw = rng.choice([
                ("/v1/completions", json.dumps({"prompt": "hi", "top_p": 2}).encode()),
                ("/v1/completions", b'{"prompt": "\\ud800"}'),
                ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": '),
                ("/v1/completions", json.dumps({"prompt": "word " * (context * 2)}).encode()),
                ("/v1/nothing", b"{}")])
            spec.update(path=path, stream=False)
        else:
            raw = json.dumps(body).encode()
        spec["body"] = raw
        specs.append(spec)
    return specs


def read_stream(response, leave_after: int | None) -> tuple[str, list]:
    """(the streamed text, the events as parsed); with leave_after, stop after that many."""
    events, pieces = [], []
    for line in response:
        if not line.startswith(b"data: "):
            continue
        data = line[6:].strip()
        if data == b"[DONE]":
            events.append("[DONE]")
            break
        event = json.loads(data)
        events.append(event)
        for choice in event.get("choices", []):
            delta = choice.get("delta")
            pieces.append(choice.get("text", "") if delta is None else delta.get("content") or "")
        if leave_after is not None and len(events) >= leave_after:
            break
    return "".join(pieces), events


def one_request(url: str, spec: dict, expected: dict) -> str | None:
    """Send one request; None if its answer is right, else what is wrong."""
    host = url.removeprefix("http://")
    conn = http.client.HTTPConnection(host, timeout=300)
    try:
        if spec["kind"] == "cancelled" and not spec["stream"]:
            conn.request("POST", spec["path"], body=spec["body"])
            return None                        # the client leaves before any answer
        conn.request("POST", spec["path"], body=spec["body"])
        response = conn.getresponse()
        status = response.status
        if spec["kind"] == "bad":
            body = json.loads(response.read())
            ok = 400 <= status < 500 and set(body.get("error", {})) == {
                "message", "type", "param", "code"}
            return None if ok else f"bad request answered {status}: {body}"
        if status == 503:                      # a full waiting line: allowed, well-formed
            body = json.loads(response.read())
            return None if "error" in body else f"503 without an error object: {body}"
        if status != 200:
            return f"{spec['kind']} answered {status}: {response.read()[:300]!r}"
        if spec["stream"]:
            leave = 2 if spec["kind"] == "cancelled" else None
            text, events = read_stream(response, leave)
            if leave is None and events[-1] != "[DONE]":
                return f"a stream ended without [DONE]: {events[-2:]}"
            if any(isinstance(e, dict) and "error" in e for e in events):
                return f"a stream failed: {events[-2:]}"
        else:
            answer = json.loads(response.read())
            choice = answer["choices"][0]
            text = choice["message"]["content"] if "message" in choice else choice["text"]
        if spec["expect"] is not None and text != expected[spec["expect"]]:
            return f"greedy {spec['expect']} gave {text!r}, alone {expected[spec['expect']]!r}"
        return None
    except (OSError, ValueError, KeyError, IndexError) as e:
        return f"{spec['kind']} {spec['path']}: {type(e).__name__}: {e}"
    finally:
        conn.close()


def server_state(url: str, pid: int | None) -> dict:
    """Descriptors and resident bytes (read first: the reads below open connections of their
    own), then /health and the /metrics the soak watches."""
    state = {}
    if pid is not None:
        fds = os.listdir(f"/proc/{pid}/fd")
        state["fds"] = len(fds)
        state["fd_kinds"] = sorted(kind_of_fd(pid, fd) for fd in fds)
        with open(f"/proc/{pid}/status") as f:
            state["rss"] = next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmRSS"))
    with urllib.request.urlopen(url + "/health", timeout=10) as r:
        health = json.loads(r.read())
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        metrics = r.read().decode()
    values = {line.split()[0]: float(line.split()[1]) for line in metrics.splitlines()
              if line and not line.startswith("#")}
    state.update(running=health["running"], waiting=health["waiting"],
                 slots=values["qwen_np_slots"],
                 prefix_cache_bytes=values["qwen_np_prefix_cache_bytes"],
                 answered_500=sum(v for k, v in values.items()
                                  if k.startswith("qwen_np_requests_total")
                                  and 'status="500"' in k))
    return state


def kind_of_fd(pid: int, fd: str) -> str:
    """What a descriptor is: "socket", "pipe", a file's path, ..."""
    try:
        target = os.readlink(f"/proc/{pid}/fd/{fd}")
    except OSError:
        return "gone"
    return target.split(":")[0] if target.endswith("]") else target


def settled_state(url: str, pid: int | None, timeout: float = 30) -> dict:
    """server_state once every request has left the server (cancelled ones take a turn) and
    the descriptors have stopped falling for a second (a client that left is noticed when the
    server next reads from or writes to its socket, or polls it: up to half a second)."""
    deadline = time.monotonic() + timeout
    while True:
        state = server_state(url, pid)
        if (state["running"], state["waiting"]) == (0, 0) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    while True:
        time.sleep(1.0)
        later = server_state(url, pid)
        if later.get("fds") == state.get("fds") or time.monotonic() > deadline:
            return later
        state = later


def soak(url: str, pid: int | None, expected: dict, requests: int, clients: int, tokens: int,
         context: int, seed: int = 0) -> dict:
    specs = request_mix(requests, seed, tokens, context)
    warm = max(1, requests // 5)
    errors: list[str] = []
    lock = threading.Lock()

    def run(batch):
        queue = list(enumerate(batch))

        def client():
            while True:
                with lock:
                    if not queue:
                        return
                    _, spec = queue.pop(0)
                problem = one_request(url, spec, expected)
                if problem:
                    with lock:
                        errors.append(problem)
        threads = [threading.Thread(target=client) for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    started = time.monotonic()
    run(specs[:warm])
    before = settled_state(url, pid)
    run(specs[warm:])
    after = settled_state(url, pid)
    kinds = {k: sum(s["kind"] == k for s in specs)
             for k in ("greedy", "sampled", "cancelled", "bad")}
    report = {"requests": requests, "clients": clients, "kinds": kinds, "errors": errors,
              "seconds": round(time.monotonic() - started, 1), "before": before, "after": after}
    report["grew"] = growth(before, after)
    return report


def growth(before: dict, after: dict) -> list[str]:
    """What grew between the two states, beyond what may."""
    grew = []
    if (after["running"], after["waiting"]) != (0, 0):
        grew.append(f"requests left in the batcher: {after['running']}, {after['waiting']}")
    if after["slots"] != before["slots"]:
        grew.append(f"slots {before['slots']} -> {after['slots']}")
    if after["answered_500"]:
        grew.append(f"{after['answered_500']} answers were 500")
    if "fds" in after and after["fds"] > before["fds"]:
        grew.append(f"file descriptors {before['fds']} -> {after['fds']} "
                    f"({before['fd_kinds']} -> {after['fd_kinds']})")
    if "rss" in after:
        allowed = before["rss"] + RSS_SLACK + max(
            0, after["prefix_cache_bytes"] - before["prefix_cache_bytes"])
        if after["rss"] > allowed:
            grew.append(f"resident memory {before['rss'] >> 20} -> {after['rss'] >> 20} MiB")
    return grew


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-m", "--model", default=None, help="default: the fetched GGUF")
    p.add_argument("--backend", default="numba")
    p.add_argument("--url", default=None, help="a running server (else one is started)")
    p.add_argument("--pid", type=int, default=None, help="its process id (with --url)")
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--tokens", type=int, default=12, help="max_tokens of each request")
    p.add_argument("--context", type=int, default=512)
    p.add_argument("--max-batch", type=int, default=4)
    args = p.parse_args(argv)
    if args.model is None:
        from qwen_np.apps.fetch import default_model_path
        args.model = default_model_path()
    expected = expected_texts(args.model, args.backend, args.tokens)
    with contextlib.ExitStack() as stack:
        if args.url:
            url, pid = args.url, args.pid
        else:
            url, pid = stack.enter_context(started_server(args.model, args.backend,
                                                          args.context, args.max_batch))
        report = soak(url, pid, expected, args.requests, args.clients, args.tokens,
                      args.context)
    print(json.dumps(report, indent=1))
    b, a = report["before"], report["after"]
    print(f"| {report['requests']} | {report['clients']} | {report['seconds']} | "
          f"{len(report['errors'])} | {a['answered_500']:.0f} | {b.get('fds')} -> {a.get('fds')} | "
          f"{b.get('rss', 0) >> 20} -> {a.get('rss', 0) >> 20} MiB | "
          f"{'none' if not report['grew'] else '; '.join(report['grew'])} |")
    return 1 if report["errors"] or report["grew"] else 0


if __name__ == "__main__":
    sys.exit(main())
