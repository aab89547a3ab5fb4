"""Property-based tests (hypothesis) of what a client controls: every field of a request body
over its whole range, and every sampling setting the sampler accepts. None may crash: a
body gets an answer or a 4xx/503, never a 500, and sampling always gives a token.

The bodies go through the whole app (make_app: JSON, the parser, the prompt's encoding, the
answer's shapes) with a batcher that answers at once (a few tokens, or its own refusals),
so that a few hundred bodies run in seconds. CI runs 300 examples of each;
BENCHMARKS.md records a longer run (QWEN_NP_PROPERTY_EXAMPLES).
"""

import json
import math
import os
import warnings
from types import SimpleNamespace

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
pytest.importorskip("starlette")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

import qwen_np  # noqa: E402
from serving import FIX, call_app  # noqa: E402
from qwen_np.errors import InputError  # noqa: E402
from qwen_np.model.sampling import Sampling, sample_next  # noqa: E402

EXAMPLES = int(os.environ.get("QWEN_NP_PROPERTY_EXAMPLES", "300"))
RUN = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# -- sampling ----------------------------------------------------------------------------------

temperatures = st.one_of(st.just(0.0), st.floats(0, 1e308, allow_subnormal=True),
                         st.sampled_from([5e-324, 1.5e-307, 1e-30, 1.0, 1e308]))
top_ps = st.one_of(st.floats(0, 1, exclude_min=True, allow_subnormal=True),
                   st.sampled_from([5e-324, 1e-9, 1.0]))
penalties = st.one_of(st.floats(0, 1.7e308, exclude_min=True, allow_subnormal=True),
                      st.sampled_from([5e-324, 1e-310, 1.0, 1.7e308]))
F32_MAX = float(np.finfo(np.float32).max)
logit_values = st.floats(-F32_MAX, F32_MAX, width=32, allow_nan=False, allow_infinity=False)


@RUN
@given(logits=st.lists(logit_values, min_size=1, max_size=40),
       temperature=temperatures, top_k=st.integers(0, 60), top_p=top_ps,
       penalty=penalties, seed=st.integers(0, 2**63), seen=st.lists(st.integers(0, 39)))
def test_sampling_gives_a_token_for_every_setting_it_accepts(logits, temperature, top_k, top_p,
                                                             penalty, seed, seen):
    logits = np.array(logits, dtype=np.float32)
    sampling = Sampling(temperature, top_k, top_p, penalty, seed)
    previous = [i for i in seen if i < logits.size]
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # no overflow, no invalid value, no NaN
        token = sample_next(logits, sampling.generator(), sampling, previous)
    assert 0 <= token < logits.size


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
              st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8)),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=3),
    max_leaves=6)


@RUN
@given(values=st.fixed_dictionaries({}, optional={
    name: json_values for name in ("temperature", "top_p", "top_k", "repetition_penalty",
                                   "seed")}))
def test_sampling_settings_are_valid_or_refused_by_name(values):
    try:
        Sampling(**values)
    except InputError as e:
        assert str(e).split(" ")[0] in values


# -- request bodies through the app ------------------------------------------------------------

class AnsweringBatcher:
    """The batcher's interface, answering at once: up to 3 tokens of the vocabulary, then
    "length"; a prompt longer than its context is refused as the real one refuses it."""
    context = 64
    load = (0, 0)
    alive = True
    n_slots, kv_bytes = 1, 0

    def __init__(self, vocab_size):
        self.vocab_size = vocab_size

    def prefix_cache_stats(self):
        return {"hits": 0, "tokens": 0, "evictions": 0, "bytes": 0, "saved": 0}

    def submit(self, ids, max_new_tokens, sampling, stop_ids=None, emit=None,
               cache_prompt=True, logprobs=None, prompt_logprobs=False, constraint=None,
               prompt_lookup=None):
        from qwen_np.runtime.batch import logprob_entries
        if len(ids) >= self.context:
            raise InputError(f"the prompt is {len(ids)} tokens; the context holds "
                             f"{self.context}")
        request = SimpleNamespace(finish="length", generated=[], error=None, cached_tokens=0,
                                  logprobs=logprobs, token_logprobs=[],
                                  prompt_token_logprobs=[])
        rng = sampling.generator()
        if prompt_logprobs:
            rows = rng.standard_normal((len(ids) - 1, self.vocab_size))
            request.prompt_token_logprobs = logprob_entries(rows, ids[1:], logprobs or 0)
        for _ in range(min(max_new_tokens, 3)):
            row = rng.standard_normal(self.vocab_size)
            token = sample_next(row, rng, sampling)
            if logprobs is not None:
                request.token_logprobs += logprob_entries(row[None], [token], logprobs)
            request.generated.append(token)
            emit(token, None)
        emit(None, "length")
        return request

    def cancel(self, request):
        pass


@pytest.fixture(scope="module")
def app():
    from qwen_np.apps.serve.app import make_app
    model = qwen_np.load(FIX, backend="numpy")
    return make_app(model, AnsweringBatcher(model.config.vocab_size), "m")


text = st.text(st.characters(codec=None), max_size=30)        # lone surrogates included
fields = {
    "prompt": st.one_of(text, st.lists(st.integers(-5, 400), max_size=8),
                        st.lists(text, max_size=2), json_values),
    "messages": st.one_of(st.lists(st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "user", "assistant", "developer", "tool", 3]),
         "content": st.one_of(text, st.lists(st.fixed_dictionaries(
             {"type": st.sampled_from(["text", "image_url"]), "text": text}), max_size=2),
             json_values)}), max_size=3), json_values),
    "max_tokens": st.one_of(st.integers(-3, 10**12), json_values),
    "max_completion_tokens": st.one_of(st.integers(-3, 100), json_values),
    "temperature": st.one_of(temperatures, json_values),
    "top_p": st.one_of(top_ps, json_values), "top_k": st.one_of(st.integers(-2, 500), json_values),
    "repetition_penalty": st.one_of(penalties, json_values),
    "seed": st.one_of(st.integers(-1, 2**64), json_values),
    "stop": st.one_of(text, st.lists(text, max_size=6), json_values),
    "stream": st.one_of(st.booleans(), json_values),
    "stream_options": st.one_of(st.fixed_dictionaries({}, optional={
        "include_usage": st.one_of(st.booleans(), json_values)}), json_values),
    "ignore_eos": st.one_of(st.booleans(), json_values),
    "cache_prompt": st.one_of(st.booleans(), json_values),
    "prompt_lookup": st.one_of(st.integers(-2, 40), json_values),
    "n": json_values, "logprobs": json_values, "top_logprobs": json_values,
    "echo": json_values, "logit_bias": json_values, "tools": json_values,
    "response_format": json_values, "model": json_values, "user": json_values,
}


def encoded(body: dict) -> bytes:
    """The body as a client's JSON library writes it (NaN and Infinity as Python writes
    them; a lone surrogate as its \\u escape)."""
    return json.dumps(body).encode()


def check_answer(status: int, body: bytes, stream: bool) -> None:
    """A well-formed answer: 200 with OpenAI's shapes, or OpenAI's error object."""
    assert status in (200, 400, 413, 503), (status, body[:300])
    if status != 200:
        error = json.loads(body)["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"]
        return
    if not stream:
        answer = json.loads(body)
        assert answer["choices"] and answer["usage"]["completion_tokens"] <= 3
        return
    events = [e for e in body.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    for event in events[:-1]:
        assert event.startswith(b"data: ") and isinstance(json.loads(event[6:]), dict)


@RUN
@given(body=st.fixed_dictionaries({}, optional={k: v for k, v in fields.items()
                                                 if k != "messages"}))
def test_any_completions_body_gets_an_answer_or_a_4xx(app, body):
    status, _, answer, _ = call_app(app, [encoded(body)], leaves_after_events=math.inf)
    check_answer(status, answer, body.get("stream") is True)


@RUN
@given(body=st.fixed_dictionaries({}, optional={k: v for k, v in fields.items()
                                                 if k != "prompt"}))
def test_any_chat_body_gets_an_answer_or_a_4xx(app, body):
    status, _, answer, _ = call_app(app, [encoded(body)], leaves_after_events=math.inf,
                                    path="/v1/chat/completions")
    check_answer(status, answer, body.get("stream") is True)


@RUN
@given(raw=st.one_of(st.binary(max_size=200), json_values.map(lambda v: json.dumps(v).encode())))
def test_any_bytes_as_a_body_get_a_4xx_or_an_answer(app, raw):
    status, _, answer, _ = call_app(app, [raw], leaves_after_events=math.inf)
    check_answer(status, answer, False)
