"""The server process and the requests the serve tests share (test_serve.py, test_serve_trust.py)."""

import asyncio
import contextlib
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from types import SimpleNamespace

from conftest import fixture_path

FIX = fixture_path("qwen2-tied-f32")
KEY = "k"
PROMPT = "Hello there, how are you"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


@contextlib.contextmanager
def server_process(*args, status=143, preexec_fn=None, model=FIX, key=KEY):
    """A `qwen-np serve` process on a free port: yields (url, proc, output()) once /health
    answers; afterwards it is sent SIGTERM (unless it has exited) and its exit status must be
    `status` (143: stopped by SIGTERM)."""
    port = free_port()
    log = tempfile.TemporaryFile()
    key_args = ("--api-key", key) if key else ()
    proc = subprocess.Popen([sys.executable, "-m", "qwen_np", "serve", "-m", model,
                             "--port", str(port), *key_args, *args],
                            stdout=log, stderr=log, preexec_fn=preexec_fn)

    def output() -> str:
        # pread: the server writes through the same open file, so moving its offset (seek)
        # would make the server's next lines overwrite the start of the log
        fd = log.fileno()
        return os.pread(fd, os.fstat(fd).st_size, 0).decode(errors="replace")

    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, output()
            try:
                get_json(url + "/health")
                break
            except OSError:
                assert time.monotonic() < deadline, output()
                time.sleep(0.1)
        yield SimpleNamespace(url=url, proc=proc, output=output)
    finally:
        if proc.poll() is None:
            proc.terminate()
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
    assert code == status, output()
    assert f"qwen-np: serving qwen2-tied-f32 on {url}" in output() or model != FIX


@contextlib.contextmanager
def served(*args):
    """server_process's URL."""
    with server_process(*args) as s:
        yield s.url


def client_of(url: str, key: str = KEY):
    import openai
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=60)


def single_stream(model, ids, max_tokens):
    """(text, finish_reason, completion_tokens) of a greedy run of `ids` alone."""
    new = model.generate(ids, max_new_tokens=max_tokens)
    stopped = bool(new) and new[-1] in model.stop_ids()
    return (model.tokenizer.decode(new[:-1] if stopped else new),
            "stop" if stopped else "length", len(new))


def streamed_text(stream):
    """(text, finish_reason, usage) of a completions or chat stream."""
    pieces, reasons, usage = [], [], None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            delta = getattr(choice, "delta", None)
            pieces.append(choice.text if delta is None else (delta.content or ""))
            if choice.finish_reason is not None:
                reasons.append(choice.finish_reason)
    assert len(reasons) == 1
    return "".join(pieces), reasons[0], usage


def raw(url, method, path, body=b"", headers=None, key=KEY):
    """(status, headers, JSON body) of one HTTP request."""
    conn = http.client.HTTPConnection(url.removeprefix("http://"), timeout=30)
    conn.request(method, path, body=body, headers={"Authorization": f"Bearer {key}",
                                                   **(headers or {})})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, json.loads(data)


def assert_openai_error(body, kind="invalid_request_error"):
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == kind and body["error"]["message"]


def one_line_error(r, status=1) -> str:
    assert r.returncode == status, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("qwen-np: error: "), r.stderr
    return lines[0]


# -- the app in this process, with a stand-in batcher ------------------------------------------

class StandInBatcher:
    """batch.Batcher's interface: a request emits token 65 every 5 ms until it is cancelled;
    with `full`, every submit is refused with QueueFull; with `raises`, submit raises it; with
    `fails`, the generation ends at once with "error" and that cause."""
    context = 64
    load = (0, 0)
    alive = True

    def __init__(self, full=False, raises=None, fails=None):
        self.full, self.raises, self.fails, self.cancelled = full, raises, fails, []

    def submit(self, ids, max_new_tokens, sampling, stop_ids=None, emit=None, cache_prompt=True,
               logprobs=None, prompt_logprobs=False, constraint=None, prompt_lookup=None):
        from qwen_np.runtime.batch import QueueFull
        if self.full:
            raise QueueFull("all 1 slots are taken and 0 requests wait for one (at most 0); "
                            "try again later")
        if self.raises is not None:
            raise self.raises
        request = SimpleNamespace(finish=None, generated=[], error=None, emit=emit,
                                  cached_tokens=0, logprobs=None)
        if self.fails is not None:
            request.error, request.finish = self.fails, "error"
            emit(None, "error")
            return request

        def run():
            while request.finish is None and len(request.generated) < 2000:
                request.generated.append(65)
                emit(65, None)
                time.sleep(0.005)
        threading.Thread(target=run, daemon=True).start()
        return request

    def cancel(self, request):
        if request.finish is None:
            self.cancelled.append(request)
            request.finish = "cancelled"
            request.emit(None, "cancelled")


def call_app(app, body_chunks, leaves_after_events=0, path="/v1/completions", method="POST"):
    """Call the ASGI app as uvicorn does (ASGI spec 2.3): the body in `body_chunks` (an
    iterable of bytes; the last is sent as final, unless the iterable is endless); after it,
    the client goes away once the app has sent `leaves_after_events` server-sent events
    (0: at once; math.inf: it stays). Returns (status, headers, body bytes, body chunks
    read)."""
    async def run():
        chunks = iter(body_chunks)
        pending = next(chunks, b"")
        read, sent = 0, []
        gone = asyncio.Event()
        if leaves_after_events == 0:
            gone.set()

        async def receive():
            nonlocal pending, read
            if pending is not None:
                chunk, pending = pending, next(chunks, None)
                read += 1
                return {"type": "http.request", "body": chunk, "more_body": pending is not None}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)
            events = sum(m.get("body", b"").count(b"data: ") for m in sent)
            if events >= leaves_after_events:
                gone.set()

        scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
                 "http_version": "1.1", "method": method, "scheme": "http", "path": path,
                 "raw_path": path.encode(), "query_string": b"", "root_path": "",
                 "headers": [(b"content-type", b"application/json")],
                 "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
        await app(scope, receive, send)
        start = next(m for m in sent if m["type"] == "http.response.start")
        return (start["status"], {k.decode(): v.decode() for k, v in start["headers"]},
                b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"),
                read)
    return asyncio.run(run())
