"""What qwen-np serve shows of itself: /metrics in Prometheus's format (parsed by
prometheus_client's own parser) whose counters move as requests are served, the prefix
cache's reuse in `usage.prompt_tokens_details.cached_tokens`, and the access log with request
ids at --log-level info (and without it at warning)."""

import json
import time

import pytest

from serving import FIX, KEY, client_of, raw, server_process, streamed_text

openai = pytest.importorskip("openai")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
parser = pytest.importorskip("prometheus_client.parser")

SYSTEM = " ".join(f"rule {i}" for i in range(150))          # about 300 tokens: 2 chunks


def scrape(url) -> dict:
    """Every sample of /metrics: {(name, sorted labels): value}."""
    import urllib.request
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        assert r.headers["content-type"].startswith("text/plain")
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in parser.text_string_to_metric_families(text) for s in family.samples}


@pytest.fixture(scope="module")
def server():
    with server_process("--backend", "numpy", "--max-batch", "2") as s:
        yield s


def ask(client, question, **kw):
    return client.chat.completions.create(
        model="x", max_tokens=3, temperature=0, messages=[
            {"role": "system", "content": SYSTEM}, {"role": "user", "content": question}], **kw)


def test_metrics_parse_and_move_as_requests_are_served(server):
    before = scrape(server.url)
    client = client_of(server.url)
    first = ask(client, "one")
    second = ask(client, "two")
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="x", prompt="hi", extra_body={"top_p": 5})
    after = scrape(server.url)

    def moved(name, labels=()):
        key = (name, tuple(sorted(labels)))
        return after.get(key, 0) - before.get(key, 0)
    chat = {"path": "/v1/chat/completions", "status": "200"}.items()
    assert moved("qwen_np_requests_total", chat) == 2
    assert moved("qwen_np_requests_total",
                 {"path": "/v1/completions", "status": "400"}.items()) == 1
    assert moved("qwen_np_prompt_tokens_total") == (first.usage.prompt_tokens
                                                    + second.usage.prompt_tokens)
    assert moved("qwen_np_completion_tokens_total") == 6
    assert moved("qwen_np_time_to_first_token_seconds_count") == 2
    assert moved("qwen_np_inter_token_seconds_count") == 4
    assert moved("qwen_np_prefix_cache_hits_total") == 1
    assert moved("qwen_np_prefix_cache_tokens_total") == \
        second.usage.prompt_tokens_details.cached_tokens > 0
    assert after[("qwen_np_slots", ())] == 2 and after[("qwen_np_running", ())] == 0
    assert after[("qwen_np_kv_cache_bytes", ())] > 0


def test_cached_tokens_report_the_reuse_and_cache_prompt_false_opts_out(server):
    client = client_of(server.url)
    ask(client, "warm the cache")
    reused = ask(client, "and now?")
    cached = reused.usage.prompt_tokens_details.cached_tokens
    assert cached > 0 and cached % 128 == 0          # whole chunks of the system prompt
    alone = ask(client, "and now?", extra_body={"cache_prompt": False})
    assert alone.usage.prompt_tokens_details.cached_tokens == 0
    assert alone.choices[0].message.content == reused.choices[0].message.content
    stream = ask(client, "and now?", stream=True, stream_options={"include_usage": True})
    text, _, usage = streamed_text(stream)
    assert usage.prompt_tokens_details.cached_tokens == cached
    assert text == reused.choices[0].message.content
    status, _, body = raw(server.url, "POST", "/v1/completions",
                          body=json.dumps({"prompt": "hi", "cache_prompt": "no"}))
    assert status == 400 and body["error"]["param"] == "cache_prompt"


def test_the_access_log_names_each_request_by_its_id(server):
    status, headers, _ = raw(server.url, "GET", "/v1/models")
    request_id = headers["x-request-id"]
    deadline = time.monotonic() + 5
    while f"id={request_id}" not in server.output():
        assert time.monotonic() < deadline, server.output()
        time.sleep(0.05)
    line = next(l for l in server.output().splitlines() if f"id={request_id}" in l)
    assert '"GET /v1/models" 200' in line and line.startswith("INFO:")


def test_log_level_warning_writes_no_access_log():
    with server_process("--backend", "numpy", "--log-level", "warning") as s:
        raw(s.url, "GET", "/v1/models")
        time.sleep(0.2)
        assert "/v1/models" not in s.output()
