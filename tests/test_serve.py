"""qwen-np serve (qwen_np/apps/serve/): a real server process, through the official openai client.

Every answer is checked against an independent single-stream run of the same model
(`Model.generate`, greedy), so that batching, streaming, stop strings and the chat prompt are
all held to the text one sequence decoded alone gives. What needs a batcher in a given state
is checked on the app in this process, with a stand-in batcher: a full waiting line (503), and
that a client going away or a stop string cancels the generation (the fixture model decodes
2000 tokens in under a second, too fast for a real server to show whether a request ended
early or by itself).
"""

import http.client
import json
import math
import os
import subprocess
import sys
import threading
import time

import pytest

import qwen_np
from serving import (FIX, KEY, PROMPT, StandInBatcher, assert_openai_error, call_app,
                     client_of, get_json, one_line_error, raw, served, single_stream,
                     streamed_text)

openai = pytest.importorskip("openai")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")


# -- the servers -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server():
    with served("--backend", "numpy") as url:
        yield url


@pytest.fixture(scope="module")
def small_server():
    """The numba backend, a context of 64 tokens, 2 slots."""
    with served("--backend", "numba", "--context", "64", "--max-batch", "2") as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    return client_of(server)


# -- what one sequence decoded alone gives -----------------------------------------------------

@pytest.fixture(scope="module")
def model():
    return qwen_np.load(FIX, backend="numpy")


def chat_ids(model, query):
    from qwen_np.runtime.chat import chat_prompt_ids
    from qwen_np.runtime.tokenizer import DEFAULT_SYSTEM_BY_MODEL_TYPE
    return chat_prompt_ids(model.tokenizer, model.config.model_type, query,
                           DEFAULT_SYSTEM_BY_MODEL_TYPE[model.config.model_type])


# -- answers -----------------------------------------------------------------------------------

def test_completion_is_the_single_stream_text(client, model):
    ids = model.tokenizer.encode(PROMPT)
    text, reason, n = single_stream(model, ids, 24)
    r = client.completions.create(model="x", prompt=PROMPT, max_tokens=24, temperature=0)
    assert r.object == "text_completion" and r.model == "qwen2-tied-f32"
    assert r.choices[0].text == text and r.choices[0].finish_reason == reason
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (len(ids), n)
    assert r.usage.total_tokens == len(ids) + n

    stream = client.completions.create(model="x", prompt=PROMPT, max_tokens=24, temperature=0,
                                       stream=True, stream_options={"include_usage": True})
    s_text, s_reason, usage = streamed_text(stream)
    assert (s_text, s_reason) == (text, reason)
    assert (usage.prompt_tokens, usage.completion_tokens) == (len(ids), n)

    by_ids = client.completions.create(model="x", prompt=ids, max_tokens=24, temperature=0)
    assert by_ids.choices[0].text == text


def test_max_tokens_defaults_to_16_for_completions(client, model):
    text, reason, _ = single_stream(model, model.tokenizer.encode("a b c"), 16)
    r = client.completions.create(model="x", prompt="a b c", temperature=0)
    assert (r.choices[0].text, r.choices[0].finish_reason) == (text, reason)


def test_chat_is_the_single_stream_text_of_the_chat_prompt(client, model):
    ids = chat_ids(model, "hi")
    text, reason, n = single_stream(model, ids, 20)
    r = client.chat.completions.create(model="x", messages=[{"role": "user", "content": "hi"}],
                                       max_tokens=20, temperature=0)
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert (r.choices[0].message.content, r.choices[0].finish_reason) == (text, reason)
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (len(ids), n)

    chunks = list(client.chat.completions.create(
        model="x", messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        max_tokens=20, temperature=0, stream=True, stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    last = [c for c in chunks if c.choices][-1]
    assert last.choices[0].finish_reason == reason and last.choices[0].delta.content is None
    assert chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens == len(ids)
    assert streamed_text(chunks)[:2] == (text, reason)


def test_chat_with_a_system_prompt_and_earlier_turns(client, model):
    from qwen_np.runtime.chat import chat_prompt_ids
    ids = chat_prompt_ids(model.tokenizer, "qwen2", "and now?", "be brief",
                          history=[("hello", "hi there")])
    text, reason, _ = single_stream(model, ids, 12)
    r = client.chat.completions.create(model="x", max_tokens=12, temperature=0, messages=[
        {"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "hi there"}, {"role": "user", "content": "and now?"}])
    assert (r.choices[0].message.content, r.choices[0].finish_reason) == (text, reason)
    assert r.usage.prompt_tokens == len(ids)


def test_messages_prompt_ids_are_chat_prompt_ids():
    """chat.messages_prompt_ids (the server's chat prompt) writes the turns as chat_prompt_ids
    does, for Qwen2/3 and for the original Qwen (the tiktoken file, if it is fetched)."""
    from qwen_np.runtime.chat import chat_prompt_ids, messages_prompt_ids
    from qwen_np.apps.fetch import QWEN_TIKTOKEN, cached_path
    toks = [("qwen2", qwen_np.load_tokenizer(FIX))]
    if os.path.exists(cached_path(QWEN_TIKTOKEN)):
        toks.append(("qwen", qwen_np.load_tokenizer(cached_path(QWEN_TIKTOKEN))))
    history = [("hello", "hi there"), ("2+2?", "4")]
    turns = [{"role": r, "content": c} for q, a in history
             for r, c in (("user", q), ("assistant", a))] + [{"role": "user", "content": "ok"}]
    for model_type, tok in toks:
        for system in ("be brief", None):
            expected = chat_prompt_ids(tok, model_type, "ok", system, history)
            given = [{"role": "system", "content": system}] if system else []
            assert messages_prompt_ids(tok, model_type, given + turns, system) == expected


def stop_in_the_middle(text: str) -> str:
    """Two characters from the text's middle (no U+FFFD) whose first occurrence is after its
    start."""
    for at in range(len(text) // 3, len(text) - 2):
        stop = text[at:at + 2]
        if "\ufffd" not in stop and text.find(stop) > 0:
            return stop
    raise AssertionError(f"no stop string in {text!r}")


def tokens_until(model, new, stop):
    """How many tokens were generated when `stop` first appeared in final text."""
    for k in range(1, len(new) + 1):
        text = model.tokenizer.decode(new[:k])
        if stop in text and not text.endswith("\ufffd"):
            return k


def test_stop_strings_end_the_text_before_them(client, model):
    ids = model.tokenizer.encode(PROMPT)
    new = model.generate(ids, max_new_tokens=40)
    full = model.tokenizer.decode(new)
    stop = stop_in_the_middle(full)
    expected = full[:full.find(stop)]
    r = client.completions.create(model="x", prompt=PROMPT, max_tokens=40, temperature=0,
                                  stop=["never there", stop])
    assert (r.choices[0].text, r.choices[0].finish_reason) == (expected, "stop")
    assert r.usage.completion_tokens == tokens_until(model, new, stop)
    stream = client.completions.create(model="x", prompt=PROMPT, max_tokens=40, temperature=0,
                                       stop=stop, stream=True)
    assert streamed_text(stream)[:2] == (expected, "stop")

    ids = chat_ids(model, "hi")
    full = model.tokenizer.decode(model.generate(ids, max_new_tokens=30, stop_ids=[]))
    stop = stop_in_the_middle(full)
    stream = client.chat.completions.create(model="x", messages=[{"role": "user",
                                                                  "content": "hi"}],
                                            max_tokens=30, temperature=0, stop=stop,
                                            stream=True, extra_body={"ignore_eos": True})
    assert streamed_text(stream)[:2] == (full[:full.find(stop)], "stop")


def test_a_seed_makes_sampling_reproducible(client):
    def sampled():
        return client.completions.create(model="x", prompt=PROMPT, max_tokens=20,
                                         temperature=0.9, top_p=0.95, seed=7).choices[0].text
    assert sampled() == sampled()


def test_concurrent_streams_each_get_their_single_stream_text(client, model):
    prompts = ["one two three", "def f(x):", "The quick brown fox", "Hello there"]
    expected = [single_stream(model, model.tokenizer.encode(p), 30)[:2] for p in prompts]
    results = [None] * len(prompts)
    start = threading.Barrier(len(prompts))

    def ask(i):
        start.wait()
        results[i] = streamed_text(client.completions.create(
            model="x", prompt=prompts[i], max_tokens=30, temperature=0, stream=True))[:2]

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results == expected


def test_a_client_that_goes_away_frees_its_slot(server, client, model):
    conn = http.client.HTTPConnection(server.removeprefix("http://"), timeout=30)
    conn.request("POST", "/v1/completions", headers={"Authorization": f"Bearer {KEY}"},
                 body=json.dumps({"prompt": PROMPT, "max_tokens": 2000, "temperature": 0,
                                  "stream": True, "ignore_eos": True}))
    response = conn.getresponse()
    assert response.status == 200
    events = 0
    while events < 2:
        events += response.readline().startswith(b"data: ")
    assert get_json(server + "/health")["running"] == 1
    conn.close()
    deadline = time.monotonic() + 10
    while get_json(server + "/health")["running"] != 0:
        assert time.monotonic() < deadline, "the slot was not freed"
        time.sleep(0.05)
    text, reason, _ = single_stream(model, model.tokenizer.encode(PROMPT), 10)
    r = client.completions.create(model="x", prompt=PROMPT, max_tokens=10, temperature=0)
    assert (r.choices[0].text, r.choices[0].finish_reason) == (text, reason)


def test_health_and_models(server, client):
    assert get_json(server + "/health") == {"status": "ok", "model": "qwen2-tied-f32",
                                            "running": 0, "waiting": 0}
    assert [m.id for m in client.models.list().data] == ["qwen2-tied-f32"]
    assert client.models.retrieve("qwen2-tied-f32").id == "qwen2-tied-f32"


# -- refusals ----------------------------------------------------------------------------------

def test_a_wrong_or_missing_key_is_401(server):
    with pytest.raises(openai.AuthenticationError) as e:
        client_of(server, "wrong").completions.create(model="x", prompt="hi", max_tokens=1)
    assert e.value.status_code == 401 and e.value.body["code"] == "invalid_api_key"
    for given in ("", "Bearer", "Basic k", f"Bearer {KEY}x"):
        status, headers, body = raw(server, "GET", "/v1/models",
                                    headers={"Authorization": given})
        assert status == 401 and headers["www-authenticate"] == "Bearer"
        assert_openai_error(body)
    assert get_json(server + "/health")["status"] == "ok"     # /health needs no key


@pytest.mark.parametrize("settings, param", [
    ({"temperature": -1}, "temperature"), ({"top_p": 2}, "top_p"), ({"top_p": 0}, "top_p"),
    ({"n": 0}, "n"), ({"n": 17}, "n"), ({"max_tokens": 0}, "max_tokens"),
    ({"stop": ["a"] * 5}, "stop"),
    ({"frequency_penalty": 2.5}, "frequency_penalty"),
    ({"presence_penalty": -3}, "presence_penalty"), ({"min_p": 1.5}, "min_p"), ({"top_k": 2.5}, "top_k"),
    ({"seed": -3}, "seed"), ({"logprobs": 21}, "logprobs"), ({"logprobs": True}, "logprobs"),
    ({"prompt": ["a", "b"]}, "prompt"),
    ({"prompt": [1, 384]}, "prompt"), ({"prompt": ""}, "prompt"), ({"stream": "yes"}, "stream"),
])
def test_bad_parameters_are_400(client, settings, param):
    body = {"prompt": "hi", **settings}
    prompt = body.pop("prompt")
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="x", prompt=prompt, extra_body=body)
    assert e.value.status_code == 400 and e.value.body["param"] == param


def test_bad_messages_are_400(client):
    for messages in ([], [{"role": "tool", "content": "x"}], [{"role": "user"}],
                     [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]):
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model="x", messages=messages)
        assert e.value.body["param"].startswith("messages")


def test_a_prompt_longer_than_the_context_is_400(small_server, model):
    client = client_of(small_server)
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="x", prompt=[65] * 70, max_tokens=4)
    assert "70 tokens" in e.value.message and "64" in e.value.message
    assert e.value.body["code"] == "context_length_exceeded"


    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="x", messages=[{"role": "user", "content": "hi"}])
    assert e.value.body["param"] == "messages" and "64" in e.value.message


def test_the_numba_backend_serves_the_single_stream_text(small_server):
    """A 64-token context: the answer may run to the context's end, not to max_tokens."""
    numba_model = qwen_np.load(FIX, backend="numba")
    ids = numba_model.tokenizer.encode(PROMPT)
    text, reason, _ = single_stream(numba_model, ids, 64 - len(ids))
    r = client_of(small_server).completions.create(model="x", prompt=PROMPT, max_tokens=1000,
                                                   temperature=0)
    assert (r.choices[0].text, r.choices[0].finish_reason) == (text, reason)


def test_unknown_paths_methods_and_bodies(server):
    status, _, body = raw(server, "GET", "/v1/nothing")
    assert status == 404
    assert_openai_error(body)
    with pytest.raises(openai.NotFoundError):
        client_of(server).models.retrieve("another-model")
    status, headers, body = raw(server, "GET", "/v1/completions")
    assert status == 405 and "POST" in headers["allow"]
    assert_openai_error(body)
    for bad in (b"{not json", b"[1, 2]", b"\xff\xfe", b"[" * 100_000):
        status, _, body = raw(server, "POST", "/v1/completions", body=bad)
        assert status == 400, bad[:10]
        assert_openai_error(body)


def test_a_body_over_1_mib_is_413_before_it_is_read(server):
    """The headers alone (Content-Length 2 MiB) get the answer: no byte of the body is sent."""
    conn = http.client.HTTPConnection(server.removeprefix("http://"), timeout=30)
    conn.putrequest("POST", "/v1/completions")
    conn.putheader("Authorization", f"Bearer {KEY}")
    conn.putheader("Content-Length", str(2 << 20))
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 413
    assert_openai_error(json.loads(response.read()))
    conn.close()


def test_a_taken_port_is_a_one_line_error(server):
    port = server.rsplit(":", 1)[1]
    r = subprocess.run([sys.executable, "-m", "qwen_np", "serve", "-m", FIX, "--backend",
                        "numpy", "--port", port], capture_output=True, text=True, timeout=120)
    assert f"127.0.0.1:{port}: cannot listen there" in one_line_error(r)


def test_serve_help():
    r = subprocess.run([sys.executable, "-m", "qwen_np", "serve", "--help"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "usage: qwen-np serve" in r.stdout
    for option in ("--host", "--port", "--api-key", "--model-name", "--max-batch", "--context",
                   "--max-waiting", "--backend"):
        assert option in r.stdout


def test_serve_without_its_extra_says_what_to_install():
    hide = ("import sys; sys.modules['uvicorn'] = None; from qwen_np.apps.cli import main; "
            f"sys.exit(main(['serve', '-m', {FIX!r}]))")
    r = subprocess.run([sys.executable, "-c", hide], capture_output=True, text=True, timeout=120)
    assert "uvicorn not installed): pip install 'qwen-np[serve]'" in one_line_error(r)


# -- the app in this process, with a stand-in batcher ------------------------------------------

def test_a_full_waiting_line_is_503_with_retry_after(model):
    from qwen_np.apps.serve.app import make_app
    app = make_app(model, StandInBatcher(full=True), "m")
    status, headers, body, _ = call_app(app, [b'{"prompt": "hi"}'])
    assert status == 503 and int(headers["retry-after"]) >= 1
    assert_openai_error(json.loads(body), "server_error")


def test_a_chunked_body_is_refused_as_soon_as_it_passes_the_limit(model):
    from itertools import repeat
    from qwen_np.apps.serve.app import make_app
    app = make_app(model, StandInBatcher(), "m", max_body_bytes=1000)
    status, _, body, read = call_app(app, repeat(b" " * 600))     # endless, no Content-Length
    assert status == 413 and read == 2
    assert_openai_error(json.loads(body))


def test_a_stream_whose_client_goes_away_is_cancelled(model):
    from qwen_np.apps.serve.app import make_app
    batcher = StandInBatcher()
    app = make_app(model, batcher, "m")
    request = json.dumps({"prompt": "hi", "max_tokens": 2000, "stream": True}).encode()
    status, _, body, _ = call_app(app, [request], leaves_after_events=3)
    assert status == 200 and len(batcher.cancelled) == 1
    assert b"[DONE]" not in body


def test_a_plain_request_whose_client_goes_away_is_cancelled(model):
    from qwen_np.apps.serve.app import make_app
    batcher = StandInBatcher()
    app = make_app(model, batcher, "m")
    t = time.monotonic()
    call_app(app, [json.dumps({"prompt": "hi", "max_tokens": 2000}).encode()])
    assert len(batcher.cancelled) == 1 and time.monotonic() - t < 5


def test_a_stop_string_cancels_the_rest_of_the_generation(model):
    from qwen_np.apps.serve.app import make_app
    batcher = StandInBatcher()
    app = make_app(model, batcher, "m")
    stop = model.tokenizer.decode([65]) * 3
    request = json.dumps({"prompt": "hi", "max_tokens": 2000, "stop": stop}).encode()
    status, _, body, _ = call_app(app, [request], leaves_after_events=math.inf)
    answer = json.loads(body)
    assert status == 200 and answer["choices"][0]["finish_reason"] == "stop"
    assert answer["choices"][0]["text"] == "" and answer["usage"]["completion_tokens"] == 3
    assert len(batcher.cancelled) == 1
