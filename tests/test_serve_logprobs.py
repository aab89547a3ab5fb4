"""Probabilities out of qwen-np serve: `logprobs` / `top_logprobs` in OpenAI's shapes
(streamed too), `echo` with `max_tokens: 0` (the prompt's own log-probabilities), and `n`
choices. The expected values come from elsewhere: `qwen-np ppl --per-token` in a process of
its own, and a plain forward pass over the prompt and the answer's tokens in this one.

lm-evaluation-harness's `local-completions` model cannot run here (it loads its tokenizer and
its tasks from the Hugging Face hub), so the exact requests it sends for a loglikelihood task
are sent instead, and its parse_logprobs read of them is done as it does it (lm_eval/models/
openai_completions.py: `{"prompt": [ids], "temperature": 0, "max_tokens": 1, "logprobs": 1,
"seed": 1234, "echo": true}`; the continuation's logprobs are token_logprobs[ctxlen:-1], and
it is greedy when each equals the max of its top_logprobs).
"""

import json
import subprocess
import sys

import numpy as np
import pytest

import qwen_np
from serving import FIX, KEY, client_of, raw, server_process, streamed_text
from qwen_np.model.logprobs import token_logprobs

openai = pytest.importorskip("openai")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

SHORT = "The quick brown fox jumps over the lazy dog."       # one prefill chunk
MEDIUM = " ".join(f"word{i} and" for i in range(25))        # 128 to 512 tokens: one pass
LONG = " ".join(f"word{i} and more" for i in range(60))     # over 512: chunks of 128


@pytest.fixture(scope="module")
def model():
    return qwen_np.load(FIX, backend="numpy")


@pytest.fixture(scope="module")
def server():
    with server_process("--backend", "numpy", "--max-batch", "4") as s:
        yield s


def ppl_per_token(text, tmp_path) -> tuple[list[int], list[float]]:
    """(token ids, log p of tokens 1..N-1) from `qwen-np ppl --json --per-token`, one window."""
    path = tmp_path / "text.txt"
    path.write_text(text, encoding="utf-8")
    r = subprocess.run([sys.executable, "-m", "qwen_np", "ppl", "-m", FIX, "--backend", "numpy",
                        "--text", str(path), "--ctx", "2048", "--stride", "2048", "--json",
                        "--per-token"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    return result["token_ids"], result["token_logprobs"]


def echo_logprobs(url, prompt, k=1, max_tokens=0):
    status, _, body = raw(url, "POST", "/v1/completions", body=json.dumps(
        {"prompt": prompt, "echo": True, "logprobs": k, "max_tokens": max_tokens,
         "temperature": 0}))
    assert status == 200, body
    return body["choices"][0]


def test_echo_logprobs_are_ppls_per_token_logprobs(server, tmp_path):
    """Up to 512 tokens the server scores the prompt in one pass, as ppl scores its window:
    bit for bit (float64 through JSON). Over 512 it prefills in chunks of 128, ppl in one
    pass, so the last bits may differ."""
    for text, exact in ((SHORT, True), (MEDIUM, True), (LONG, False)):
        ids, expected = ppl_per_token(text, tmp_path)
        choice = echo_logprobs(server.url, text)
        lp = choice["logprobs"]
        assert choice["text"] == text and choice["finish_reason"] == "length"
        assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
        assert len(lp["token_logprobs"]) == len(ids)
        assert (len(ids) > 512) == (not exact) and (text is SHORT) == (len(ids) <= 128)
        got = np.array(lp["token_logprobs"][1:])
        if exact:
            assert got.tolist() == expected
        else:
            assert np.allclose(got, expected, rtol=0, atol=1e-4)
        assert "".join(lp["tokens"]) == text
        assert lp["text_offset"][:3] == [0, len(lp["tokens"][0]),
                                         len(lp["tokens"][0]) + len(lp["tokens"][1])]


def test_lm_eval_loglikelihood_requests(server, model, tmp_path):
    """lm-eval's request for (context, continuation), tokenized, and its parse."""
    context, continuation = "The capital of France is", " Paris, a city."
    ctx_ids = model.tokenizer.encode(context)
    whole = ctx_ids + model.tokenizer.encode(continuation)
    status, _, out = raw(server.url, "POST", "/v1/completions", body=json.dumps(
        {"model": "m", "prompt": [whole], "temperature": 0, "max_tokens": 1, "logprobs": 1,
         "seed": 1234, "echo": True}))
    assert status == 200
    choice = sorted(out["choices"], key=lambda c: c["index"])[0]
    ctxlen = len(ctx_ids)
    tokens_logprobs = choice["logprobs"]["token_logprobs"][ctxlen:-1]
    top_logprobs = choice["logprobs"]["top_logprobs"][ctxlen:-1]
    is_greedy = all(tok == max(top.values()) for tok, top in zip(tokens_logprobs, top_logprobs))
    # the expected: a forward pass over the whole sequence, float64 log-softmax
    logits = model.backend.to_numpy(model.logits(whole))
    expected = token_logprobs(logits[ctxlen - 1:-1], whole[ctxlen:])
    assert len(tokens_logprobs) == len(whole) - ctxlen
    assert tokens_logprobs == expected.tolist()
    greedy = all(int(np.argmax(logits[i])) == whole[i + 1] for i in range(ctxlen - 1,
                                                                          len(whole) - 1))
    assert is_greedy == greedy
    assert len(choice["logprobs"]["token_logprobs"]) == len(whole) + 1     # + the new token


def decoded_logprobs(model, prompt, answer) -> list[float]:
    """log p of each answer token as the server computes its logits: the prompt in one pass
    (under 128 tokens: one chunk), then one token at a time through the cache (a decode
    step's row equals this, tests/test_batch.py)."""
    from qwen_np.model.forward import forward
    cache = model.new_cache(len(prompt) + len(answer) + 1)
    cfg, w, be = model.config, model.weights, model.backend
    rows = [be.to_numpy(forward(cfg, w, be, prompt, cache, last_only=True))[-1]]
    for token in answer[:-1]:
        rows.append(be.to_numpy(forward(cfg, w, be, [token], cache, last_only=True))[-1])
    return token_logprobs(np.array(rows), answer).tolist()


def test_chat_logprobs_are_the_models_log_softmax_of_each_answer_token(server, model):
    client = client_of(server.url)
    messages = [{"role": "user", "content": "hi"}]
    r = client.chat.completions.create(model="x", messages=messages, max_tokens=8,
                                       temperature=0, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    from qwen_np.runtime.chat import messages_prompt_ids
    prompt = messages_prompt_ids(model.tokenizer, "qwen2", messages,
                                 "You are Qwen, created by Alibaba Cloud. You are a helpful "
                                 "assistant.")
    answer = model.generate(prompt, max_new_tokens=8)
    answer = answer[:-1] if answer[-1] in model.stop_ids() else answer
    assert len(content) == len(answer) == r.usage.completion_tokens - (
        r.choices[0].finish_reason == "stop")
    expected = decoded_logprobs(model, prompt, answer)
    for entry, token, lp in zip(content, answer, expected):
        assert entry.logprob == lp and bytes(entry.bytes) == model.tokenizer.token_bytes(token)
        assert len(entry.top_logprobs) == 3 and entry.top_logprobs[0].logprob == lp   # greedy
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob
    stream = client.chat.completions.create(model="x", messages=messages, max_tokens=8,
                                            temperature=0, logprobs=True, top_logprobs=3,
                                            stream=True)
    streamed = [e for chunk in stream for c in chunk.choices if c.logprobs
                for e in c.logprobs.content]
    assert [(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in content]


def test_streamed_completion_logprobs_and_echo(server):
    client = client_of(server.url)
    plain = client.completions.create(model="x", prompt=SHORT, max_tokens=6, temperature=0,
                                      logprobs=2, echo=True)
    stream = client.completions.create(model="x", prompt=SHORT, max_tokens=6, temperature=0,
                                       logprobs=2, echo=True, stream=True)
    tokens, lps = [], []
    text = ""
    for chunk in stream:
        for c in chunk.choices:
            text += c.text
            if c.logprobs:
                tokens += c.logprobs.tokens
                lps += c.logprobs.token_logprobs
    assert text == plain.choices[0].text and text.startswith(SHORT)
    assert tokens == plain.choices[0].logprobs.tokens
    assert lps == plain.choices[0].logprobs.token_logprobs


def test_n_choices_are_separate_rows_seeded_apart(server):
    client = client_of(server.url)
    many = client.completions.create(model="x", prompt=SHORT, max_tokens=10, temperature=1.0,
                                     seed=5, n=3)
    assert [c.index for c in many.choices] == [0, 1, 2]
    for i, c in enumerate(many.choices):
        alone = client.completions.create(model="x", prompt=SHORT, max_tokens=10,
                                          temperature=1.0, seed=5 + i)
        assert c.text == alone.choices[0].text
    assert many.usage.completion_tokens == sum(
        len(client.completions.create(model="x", prompt=SHORT, max_tokens=10, temperature=1.0,
                                      seed=5 + i, logprobs=0).choices[0].logprobs.tokens)
        for i in range(3))
    stream = client.chat.completions.create(model="x", messages=[{"role": "user",
                                                                  "content": "hi"}],
                                            max_tokens=6, temperature=0, n=2, stream=True)
    texts, reasons = {0: "", 1: ""}, {}
    for chunk in stream:
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
            if c.finish_reason:
                reasons[c.index] = c.finish_reason
    assert texts[0] == texts[1] and set(reasons) == {0, 1}           # greedy: the same


def test_logprob_parameters_out_of_range_are_400(server):
    for path, body, param in (
            ("/v1/completions", {"prompt": "hi", "logprobs": 21}, "logprobs"),
            ("/v1/completions", {"prompt": "hi", "max_tokens": 0}, "max_tokens"),
            ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}],
                                      "top_logprobs": 2}, "top_logprobs"),
            ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}],
                                      "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
            ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}],
                                      "echo": True}, "echo")):
        status, _, answer = raw(server.url, "POST", path, body=json.dumps(body))
        assert status == 400 and answer["error"]["param"] == param, answer
