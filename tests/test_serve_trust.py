"""qwen-np serve under clients that are unlucky or hostile: each reproduction of the server's
known defects is a test here, against a real server process where the defect lives in the
process (its event loop, its signals, its sockets and open files), and against the app or
the batcher in this process where it lives there.

    one request's sampling fails only that request, and sampling is safe for every value
    a prompt too long for the context is refused by its length, without stalling the server
    SIGTERM / Ctrl-C: open requests finish, or end well-formed once the grace is over
    slow clients (headers or body a byte a second) and 300 sockets do not hold the server
    a lone surrogate is a 400; a 500 names only the request id
    a port out of range, the 503's counts, /health of a dead loop, no ldconfig under the lock,
    and which web pages and Host names may reach the server
"""

import json
import math
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings

import numpy as np
import pytest

import qwen_np
from conftest import run_all
from serving import (FIX, KEY, PROMPT, StandInBatcher, assert_openai_error, call_app,
                     client_of, get_json, raw, server_process, single_stream, streamed_text)
from qwen_np.model.sampling import Sampling, sample_next

openai = pytest.importorskip("openai")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")


@pytest.fixture(scope="module")
def model():
    return qwen_np.load(FIX, backend="numpy")


@pytest.fixture(scope="module")
def server():
    """The issue's server: 4 slots, a context of 1024."""
    with server_process("--backend", "numpy", "--max-batch", "4", "--context", "1024") as s:
        yield s


# -- one request cannot fail the batch ---------------------------------------------------------

CONFIDENT = np.array([30.0, 29.0, -5.0, 1.0, 0.0], dtype=np.float32)


@pytest.mark.parametrize("temperature", [1.5e-307, 5e-324, 1e-300, 1e-30, 1e-3])
def test_a_temperature_too_small_to_divide_by_samples_the_top_token(temperature):
    with warnings.catch_warnings():
        warnings.simplefilter("error")           # no overflow warning either
        got = {sample_next(CONFIDENT, np.random.default_rng(s), Sampling(temperature))
               for s in range(20)}
    assert got == {0}


def test_a_repetition_penalty_near_zero_makes_the_seen_positive_tokens_certain():
    """Logit 29 (token 1, seen) / 1e-310 is +inf in float64: token 1 is the only choice; with
    tokens 0 and 1 both seen, both are +inf and equally likely."""
    sampling = Sampling(temperature=1.0, repetition_penalty=1e-310)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        one = {sample_next(CONFIDENT, np.random.default_rng(s), sampling, [1]) for s in range(20)}
        two = [sample_next(CONFIDENT, np.random.default_rng(s), sampling, [0, 1])
               for s in range(400)]
    assert one == {1}
    assert set(two) == {0, 1} and 150 < two.count(0) < 250


def test_huge_temperatures_and_penalties_still_give_a_token():
    rng = np.random.default_rng(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for sampling in (Sampling(temperature=1e308), Sampling(1.0, repetition_penalty=1e308),
                         Sampling(1e-320, top_k=2, top_p=1e-9, repetition_penalty=1e-320)):
            assert 0 <= sample_next(CONFIDENT, rng, sampling, [0, 2, 3]) < CONFIDENT.size


def test_one_requests_failing_sampling_fails_only_that_request(model, monkeypatch):
    """Three greedy rows and one whose sampling raises, in one decode step: the three get
    their single-stream tokens, the fourth alone ends with "error"."""
    import qwen_np.runtime.batch as batch
    real = batch.sample_next

    def fails_for_seed_666(logits, rng, sampling, previous, *generated):
        if sampling.seed == 666 and len(previous) > 3:
            raise ValueError("Probabilities contain NaN")
        return real(logits, rng, sampling, previous, *generated)
    monkeypatch.setattr(batch, "sample_next", fails_for_seed_666)
    b = batch.Batcher(model, max_batch=4, context=64)
    prompts = [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    requests = [b.submit(p, 12, stop_ids=[]) for p in prompts]
    bad = b.submit([10, 11, 12], 12, Sampling(temperature=1.0, seed=666), stop_ids=[])
    run_all(b, requests + [bad])
    assert bad.finish == "error" and "NaN" in bad.error
    for p, r in zip(prompts, requests):
        assert r.finish == "length" and r.generated == model.generate(p, 12, stop_ids=[])


def test_the_issues_requests_all_succeed_beside_three_greedy_streams(server, model):
    """The reproduction: three greedy streams, and a fourth request with temperature 1.5e-307
    (or a repetition penalty of 1e-310 at temperature 1), which used to fail all four."""
    client = client_of(server.url)
    prompts = ["one two three", "def f(x):", "The quick brown fox"]
    expected = [single_stream(model, model.tokenizer.encode(p), 60)[:2] for p in prompts]
    for odd in ({"temperature": 1.5e-307}, {"temperature": 1, "repetition_penalty": 1e-310}):
        results, errors = [None] * 4, []
        start = threading.Barrier(4)

        def ask(i):
            start.wait()
            try:
                if i < 3:
                    results[i] = streamed_text(client.completions.create(
                        model="x", prompt=prompts[i], max_tokens=60, temperature=0,
                        stream=True))[:2]
                else:
                    results[i] = client.completions.create(
                        model="x", prompt=PROMPT, max_tokens=60, extra_body=odd
                    ).choices[0].finish_reason
            except Exception as e:      # noqa: BLE001 (collected, and the test fails on it)
                errors.append(e)
        threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert errors == [] and results[:3] == expected and results[3] in ("stop", "length")


# -- a large prompt ----------------------------------------------------------------------------

def test_huge_prompts_are_refused_by_length_while_health_answers(server):
    """Six requests with a 1 MB prompt each are 400, and /health answers within a second
    all the while (it used to stall 7.75 s while the prompts were encoded in the event loop)."""
    body = json.dumps({"prompt": "word " * 200_000, "max_tokens": 4}).encode()
    chat = json.dumps({"messages": [{"role": "user", "content": "word " * 200_000}]}).encode()
    statuses, slowest = [], [0.0]
    done = threading.Event()

    def post(data, path):
        statuses.append(raw(server.url, "POST", path, body=data)[0])

    def watch_health():
        while not done.is_set():
            t = time.monotonic()
            assert get_json(server.url + "/health")["status"] == "ok"
            slowest[0] = max(slowest[0], time.monotonic() - t)
            time.sleep(0.02)
    watcher = threading.Thread(target=watch_health)
    watcher.start()
    posters = [threading.Thread(target=post, args=(body, "/v1/completions")) for _ in range(5)]
    posters.append(threading.Thread(target=post, args=(chat, "/v1/chat/completions")))
    for t in posters:
        t.start()
    for t in posters:
        t.join(timeout=120)
    done.set()
    watcher.join()
    assert statuses == [400] * 6
    assert slowest[0] < 1.0
    status, _, answer = raw(server.url, "POST", "/v1/completions", body=body)
    assert answer["error"]["code"] == "context_length_exceeded" and "1024" in \
        answer["error"]["message"]


def test_tokens_at_least_is_a_lower_bound_on_the_real_token_count(model):
    from qwen_np.apps.serve.app import tokens_at_least
    tok = model.tokenizer
    longest = tok.longest_token_bytes()
    for text in ("word " * 500, "é" * 300, "<|im_start|>" * 40, "日本語のテキスト" * 50,
                 "a" * 2000, "\n\n\n" * 100, PROMPT):
        assert tokens_at_least([text], longest) <= len(tok.encode(text))


# -- stopping ----------------------------------------------------------------------------------

def sse_events(response):
    """The data of each server-sent event of an http.client response, as it arrives."""
    for line in response:
        if line.startswith(b"data: "):
            yield line[6:].strip()


def open_stream(url, body):
    import http.client
    conn = http.client.HTTPConnection(url.removeprefix("http://"), timeout=60)
    conn.request("POST", "/v1/completions", body=json.dumps(body),
                 headers={"Authorization": f"Bearer {KEY}"})
    response = conn.getresponse()
    assert response.status == 200
    return conn, sse_events(response)


def test_sigterm_lets_an_open_stream_finish_and_exits_143():
    with server_process("--backend", "numpy", status=143) as s:
        conn, events = open_stream(s.url, {"prompt": PROMPT, "max_tokens": 300, "stream": True,
                                           "ignore_eos": True, "temperature": 0,
                                           "stream_options": {"include_usage": True}})
        first = next(events)
        s.proc.send_signal(signal.SIGTERM)
        rest = [first] + list(events)
        conn.close()
    assert rest[-1] == b"[DONE]"
    chunks = [json.loads(e) for e in rest[:-1]]
    assert all("error" not in c for c in chunks)
    assert chunks[-1]["usage"]["completion_tokens"] == 300
    assert "stopped by SIGTERM" in s.output()


def test_past_the_grace_open_requests_end_with_well_formed_errors_and_ctrl_c_exits_130():
    """--shutdown-grace 0: at SIGINT the stream gets an error event and [DONE], the plain
    request OpenAI's error (503), and the process exits with 130."""
    with server_process("--backend", "numpy", "--context", "8192", "--shutdown-grace", "0",
                        status=130) as s:
        long = {"prompt": PROMPT, "max_tokens": 8000, "ignore_eos": True, "temperature": 0}
        conn, events = open_stream(s.url, {**long, "stream": True})
        first = next(events)
        plain = {}

        def ask_plain():
            plain["answer"] = raw(s.url, "POST", "/v1/completions", body=json.dumps(long))
        asker = threading.Thread(target=ask_plain)
        asker.start()
        deadline = time.monotonic() + 30
        while get_json(s.url + "/health")["running"] < 2:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        s.proc.send_signal(signal.SIGINT)
        rest = [first] + list(events)
        asker.join(timeout=60)
        conn.close()
    assert rest[-1] == b"[DONE]"
    assert_openai_error(json.loads(rest[-2]), "server_error")
    status, headers, body = plain["answer"]
    assert status == 503 and "retry-after" in headers
    assert_openai_error(body, "server_error")
    assert "stopped by SIGINT" in s.output() and "Traceback" not in s.output()


# -- slow clients ------------------------------------------------------------------------------

def open_files_256():
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))


def test_slowloris_and_a_slow_body_neither_hold_the_server_nor_flood_the_log():
    """300 sockets sending a header byte a second, and a body sent a byte a second, at an
    open-files limit of 256: new clients are served within a second all the while, the slow
    body gets 408 once its time is up, and the log stays short."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1024:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    with server_process("--backend", "numpy", "--header-timeout", "2", "--body-timeout", "3",
                        preexec_fn=open_files_256) as s:
        host, port = s.url.removeprefix("http://").split(":")
        stop = threading.Event()
        sockets = []

        def slowloris():
            head = b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            for _ in range(300):
                c = socket.create_connection((host, int(port)))
                c.sendall(head[:1])
                sockets.append(c)
            sent = 1
            while not stop.is_set() and sent < len(head):
                for c in sockets:
                    try:
                        c.sendall(head[sent:sent + 1])
                    except OSError:
                        pass
                sent += 1
                stop.wait(1.0)
        loris = threading.Thread(target=slowloris)
        loris.start()
        slow_body = socket.create_connection((host, int(port)))
        slow_body.sendall(f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: "
                          f"Bearer {KEY}\r\nContent-Length: 100\r\n\r\n{{".encode())
        slow_body.settimeout(0.5)
        answer, started, slowest = b"", time.monotonic(), 0.0
        while time.monotonic() - started < 8:
            t = time.monotonic()
            assert get_json(s.url + "/health")["status"] == "ok"
            slowest = max(slowest, time.monotonic() - t)
            if not answer:
                try:
                    slow_body.sendall(b" ")
                    answer = slow_body.recv(4096)
                except socket.timeout:
                    pass
                except OSError:
                    answer = b"closed"
        r = client_of(s.url).completions.create(model="x", prompt=PROMPT, max_tokens=4)
        stop.set()
        loris.join()
        for c in sockets + [slow_body]:
            c.close()
        # the log but for the access log's lines (one per request answered, /health included)
        log = "\n".join(line for line in s.output().splitlines()
                        if not (line.startswith("INFO:") and " id=" in line))
    assert slowest < 1.0 and r.choices[0].finish_reason in ("stop", "length")
    assert answer.startswith(b"HTTP/1.1 408")
    assert len(log) < 5_000 and "Too many open files" not in log and "Traceback" not in log


def test_a_client_has_header_timeout_seconds_for_its_headers_and_the_cap_makes_room():
    """--header-timeout 1: half a request head is closed in about a second. --max-connections
    2: with two idle connections open, a new client pushes out the older and is served; with
    two requests in flight, a third connection gets a 503 in OpenAI's shape and is closed."""
    with server_process("--backend", "numpy", "--header-timeout", "1", "--max-connections",
                        "2", "--context", "8192") as s:
        address = tuple(s.url.removeprefix("http://").split(":"))
        address = (address[0], int(address[1]))
        half = socket.create_connection(address)
        half.sendall(b"GET /hea")
        half.settimeout(10)
        started = time.monotonic()
        assert half.recv(100) == b""                          # closed, with no answer
        assert 0.8 < time.monotonic() - started < 5
        half.close()
        idle = [socket.create_connection(address) for _ in range(2)]
        time.sleep(0.2)
        assert get_json(s.url + "/health")["status"] == "ok"   # pushed the older one out
        idle[0].settimeout(5)
        assert idle[0].recv(100) == b""
        for c in idle:
            c.close()
        long = json.dumps({"prompt": PROMPT, "max_tokens": 8000, "ignore_eos": True,
                           "stream": True}).encode()
        busy = []
        for _ in range(2):
            c = socket.create_connection(address)
            c.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: "
                      b"Bearer " + KEY.encode() + b"\r\nContent-Length: %d\r\n\r\n" % len(long)
                      + long)
            c.settimeout(30)
            assert c.recv(12) == b"HTTP/1.1 200"
            busy.append(c)
        third = socket.create_connection(address)
        third.settimeout(10)
        answer = b""
        while chunk := third.recv(4096):
            answer += chunk
        head, body = answer.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 503") and b"retry-after: 1" in head
        assert_openai_error(json.loads(body), "server_error")
        for c in busy + [third]:
            c.close()


def test_a_message_repeated_is_written_at_most_five_times_a_window(monkeypatch):
    import logging
    from qwen_np.apps.serve import request_log
    clock = [100.0]
    monkeypatch.setattr(request_log.time, "monotonic", lambda: clock[0])
    f = request_log.RepeatFilter()

    def record(msg):
        return logging.LogRecord("uvicorn.error", logging.WARNING, "x", 1, msg, (), None)
    passed = [f.filter(record("Invalid HTTP request received.")) for _ in range(20)]
    assert passed == [True] * 5 + [False] * 15
    assert f.filter(record("another message"))
    clock[0] += request_log.REPEAT_WINDOW + 1
    again = record("Invalid HTTP request received.")
    assert f.filter(again) and again.msg.endswith("(15 more like this left out)")


def test_a_defect_of_the_batchers_loop_ends_every_request_with_error_and_is_raised(model):
    from qwen_np.runtime.batch import Batcher
    b = Batcher(model, max_batch=1, context=64)
    requests = [b.submit([1, 2], 4, stop_ids=[]) for _ in range(3)]

    def broken():
        raise RuntimeError("a defect of the loop")
    b.turn = broken
    with pytest.raises(RuntimeError, match="a defect of the loop"):
        b.run()
    assert [r.finish for r in requests] == ["error"] * 3
    assert all("a defect of the loop" in r.error for r in requests)
    assert not b.alive and b.failure.startswith("RuntimeError")


def test_the_connection_cap_keeps_an_accept_batch_and_spare_files_free():
    from qwen_np.apps.serve.connections import ACCEPT_BATCH, SPARE_FILES, connection_cap
    assert connection_cap(1024, 256) == 256 - ACCEPT_BATCH - SPARE_FILES
    assert connection_cap(100, 65536) == 100
    assert connection_cap(1024, 64) == 1


# -- bad text, and what a 500 may say ----------------------------------------------------------

def test_a_lone_surrogate_is_400(server):
    for path, body in (("/v1/completions", b'{"prompt": "\\ud800", "max_tokens": 2}'),
                       ("/v1/chat/completions",
                        b'{"messages": [{"role": "user", "content": "a\\udfff"}]}')):
        status, _, answer = raw(server.url, "POST", path, body=body)
        assert status == 400 and "surrogate" in answer["error"]["message"]
        assert_openai_error(answer)


@pytest.mark.parametrize("batcher", [StandInBatcher(raises=RuntimeError("secret detail")),
                                     StandInBatcher(fails="ValueError: secret detail")])
def test_a_500_names_only_the_request_id(model, batcher, caplog):
    from qwen_np.apps.serve.app import make_app
    app = make_app(model, batcher, "m")
    with caplog.at_level("ERROR"):
        status, headers, body, _ = call_app(app, [b'{"prompt": "hi"}'],
                                            leaves_after_events=math.inf)
    message = json.loads(body)["error"]["message"]
    assert status == 500 and headers["x-request-id"] in message
    assert "secret" not in message and "Error" not in message
    assert "secret detail" in caplog.text and headers["x-request-id"] in caplog.text


# -- smaller defects ---------------------------------------------------------------------------

def test_a_port_out_of_range_is_a_usage_error_without_a_traceback():
    r = subprocess.run([sys.executable, "-m", "qwen_np", "serve", "-m", FIX, "--port", "99999"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "argument --port: 99999 is not a port (0 to 65535)" in r.stderr


def test_the_503_counts_the_slots_taken_and_the_requests_left_waiting(model):
    from qwen_np.runtime.batch import Batcher, QueueFull
    b = Batcher(model, max_batch=2, context=64, max_waiting=1)
    for _ in range(3):                   # two take the free slots at the next turn, one waits
        b.submit([1, 2], 4)
    with pytest.raises(QueueFull) as e:
        b.submit([1, 2], 4)
    assert str(e.value) == ("all 2 slots are taken and 1 requests wait for one (at most 1); "
                            "try again later")


def test_health_fails_when_the_batchers_loop_is_not_running(model):
    from qwen_np.apps.serve.app import make_app
    from qwen_np.runtime.batch import Batcher
    b = Batcher(model, max_batch=2, context=64)
    app = make_app(model, b, "m")

    def health():
        status, _, body, _ = call_app(app, [b""], path="/health", method="GET")
        return status, json.loads(body)["status"]
    assert health() == (503, "error")          # not started
    b.start()
    assert health() == (200, "ok")
    b.close()
    assert health() == (503, "error")          # stopped


def test_going_idle_frees_the_heap_outside_the_lock_and_runs_no_ldconfig(model, monkeypatch):
    import ctypes.util
    import qwen_np.runtime.batch as batch
    from qwen_np.runtime.process_memory import release_free_heap

    def no_ldconfig(name):
        raise AssertionError("find_library runs ldconfig in a child process")
    monkeypatch.setattr(ctypes.util, "find_library", no_ldconfig)
    release_free_heap()
    held = []
    monkeypatch.setattr(batch, "release_free_heap", lambda: held.append(b.lock._is_owned()))
    b = batch.Batcher(model, max_batch=1, context=64)
    r = b.submit([1, 2], 2, stop_ids=[])
    run_all(b, [r])
    assert held == [False]


def test_only_loopback_host_names_and_allowed_origins_reach_a_loopback_server():
    with server_process("--backend", "numpy", "--allowed-origins", "http://good.example") as s:
        port = s.url.rsplit(":", 1)[1]
        ok_body = json.dumps({"prompt": "hi", "max_tokens": 1}).encode()

        def post(headers):
            return raw(s.url, "POST", "/v1/completions", body=ok_body, headers=headers)
        status, _, body = post({"Host": f"rebound.example:{port}"})
        assert status == 403 and body["error"]["code"] == "host_not_allowed"
        status, _, body = post({"Origin": "http://evil.example"})
        assert status == 403 and body["error"]["code"] == "origin_not_allowed"
        for host in (f"localhost:{port}", f"127.0.0.1:{port}"):
            assert post({"Host": host})[0] == 200
        assert post({"Origin": f"http://127.0.0.1:{port}"})[0] == 200   # its own pages
        status, headers, _ = post({"Origin": "http://good.example"})
        assert status == 200 and headers["access-control-allow-origin"] == "http://good.example"
        import http.client
        conn = http.client.HTTPConnection(s.url.removeprefix("http://"), timeout=30)
        conn.request("OPTIONS", "/v1/completions", headers={
            "Origin": "http://good.example", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type"})
        preflight = conn.getresponse()
        preflight.read()
        conn.close()
        assert preflight.status == 200
        assert preflight.getheader("access-control-allow-origin") == "http://good.example"


def test_without_allowed_origins_no_cors_headers_are_sent(server):
    status, headers, _ = raw(server.url, "GET", "/v1/models",
                             headers={"Origin": f"http://127.0.0.1:{server.url.rsplit(':', 1)[1]}"})
    assert status == 200 and "access-control-allow-origin" not in headers
