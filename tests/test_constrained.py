"""Constrained decoding (runtime/constraint.py through batch.Batcher): on the tiny random
Qwen2 fixture, sampling at temperature 1 from a model that knows no JSON, every output a
grammar lets finish is valid (a JSON schema's, any JSON object, Qwen's tool calls), and a
constrained row beside free rows leaves their tokens as they are alone.

The fixture's tokenizer has 300 tokens and its model 384 logits (the rest are padding rows):
no constrained row ever samples past the tokenizer. A random model samples strings of any
allowed character for long, so the schemas bound them (maxLength, maxItems, enums)."""

import json
import re

import numpy as np
import pytest

from conftest import fixture_path, run_all
from qwen_np.errors import InputError, QwenNpError
from qwen_np.model.sampling import Sampling
from qwen_np.runtime.batch import Batcher

pytest.importorskip("llguidance")
jsonschema = pytest.importorskip("jsonschema")
from qwen_np.runtime.constraint import GrammarCompiler  # noqa: E402 (needs llguidance)

PROMPT = [1, 5, 6, 7]
SEEDS = range(8)
SCHEMA = {
    "type": "object", "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "maxLength": 6},
        "kind": {"enum": ["cat", "dog", 3]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 4}, "maxItems": 3},
        "where": {"type": "object", "additionalProperties": False,
                  "properties": {"x": {"type": "integer", "minimum": 0, "maximum": 99},
                                 "ok": {"type": "boolean"}},
                  "required": ["x", "ok"]}},
    "required": ["name", "kind", "where"]}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "additionalProperties": False,
        "properties": {"city": {"type": "string", "maxLength": 5}, "unit": {"enum": ["c", "f"]}},
        "required": ["city"]}}},
    {"type": "function", "function": {"name": "add", "parameters": {
        "type": "object", "additionalProperties": False,
        "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 9},
                       "b": {"type": "integer", "minimum": 0, "maximum": 9}},
        "required": ["a", "b"]}}}]
TOOL_CALLS = re.compile(r"<tool_call>\n(.+?)\n</tool_call>(?:\n(?=<tool_call>)|$)", re.S)


@pytest.fixture(scope="module")
def model():
    import qwen_np
    return qwen_np.load(fixture_path("qwen2-tied-f32"), backend="numpy", prepared_cache=False)


def compiler(model, flexible=True):
    return GrammarCompiler(model.tokenizer, model.config.vocab_size, model.stop_ids(),
                           whitespace_flexible=flexible)


def run_constrained(model, make_constraint, seeds=SEEDS, max_tokens=900, sampling=None):
    """One request per seed, all in one batch; [(finish, text)] with the stop token left out."""
    b = Batcher(model, max_batch=len(seeds), context=1024)
    requests = [b.submit(PROMPT, max_tokens, sampling or Sampling(temperature=1.0, seed=s),
                         constraint=make_constraint()) for s in seeds]
    run_all(b, requests)
    return [(r.finish, model.tokenizer.decode([t for t in r.generated if t not in r.stop_ids]))
            for r in requests]


@pytest.mark.parametrize("flexible", [True, False])
def test_every_output_of_a_json_schema_validates(model, flexible):
    c = compiler(model, flexible)
    for finish, text in run_constrained(model, lambda: c.json_schema(SCHEMA)):
        assert finish == "stop", text
        jsonschema.validate(json.loads(text), SCHEMA)
        if not flexible:
            # json.dumps's separators, ", " and ": ", and no other whitespace
            outside = re.sub(r'"(\\.|[^"\\])*"', '""', text)
            assert not re.search(r"\s", outside.replace(", ", ",").replace(": ", ":")), text


def test_every_json_object_output_parses_to_an_object(model):
    """Any object: its keys and strings are unbounded, and a random model writes strings of
    hundreds of tokens, so some outputs run out of tokens (those are cut-short prefixes)."""
    c = compiler(model)
    outputs = run_constrained(model, c.json_object)
    finished = [text for finish, text in outputs if finish == "stop"]
    assert len(finished) >= len(outputs) // 2
    assert all(isinstance(json.loads(text), dict) for text in finished)


@pytest.mark.parametrize("flexible", [True, False])
@pytest.mark.parametrize("name,parallel", [(None, True), ("add", True), (None, False),
                                           ("get_weather", False)])
def test_tool_calls_follow_qwens_format_and_their_tools_parameters(model, flexible, name,
                                                                   parallel):
    c = compiler(model, flexible)
    parameters = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
    for finish, text in run_constrained(model, lambda: c.tool_calls(TOOLS, name, parallel)):
        assert finish == "stop", text
        bodies = TOOL_CALLS.findall(text)
        assert "".join(f"<tool_call>\n{b}\n</tool_call>\n" for b in bodies) == text + "\n"
        assert len(bodies) == 1 or (parallel and len(bodies) > 1)
        for body in bodies:
            call = json.loads(body)
            assert list(call) == ["name", "arguments"]
            assert call["name"] == name if name else call["name"] in parameters
            jsonschema.validate(call["arguments"], parameters[call["name"]])


def test_greedy_decoding_under_a_constraint(model):
    c = compiler(model, flexible=False)
    [(finish, text)] = run_constrained(model, lambda: c.json_schema(SCHEMA), seeds=[0],
                                       sampling=Sampling())
    assert finish == "stop"
    jsonschema.validate(json.loads(text), SCHEMA)


def test_free_rows_beside_constrained_ones_get_their_single_stream_tokens(model):
    """Three free requests (greedy, two seeded draws, one with logprobs) batched with three
    constrained ones: each free one's tokens (and logprobs) are those it gets alone."""
    c = compiler(model)
    free = [(PROMPT, Sampling()), ([9, 10, 11], Sampling(temperature=1.0, seed=3)),
            ([12, 13], Sampling(temperature=0.8, top_k=40, seed=4))]
    alone = []
    for prompt, sampling in free:
        b = Batcher(model, max_batch=1, context=256)
        r = b.submit(prompt, 40, sampling, stop_ids=[], logprobs=2)
        run_all(b, [r])
        alone.append(r)
        assert r.generated == model.generate(prompt, 40, sampling, stop_ids=[])
    b = Batcher(model, max_batch=6, context=1024)
    constrained = [b.submit(PROMPT, 900, Sampling(temperature=1.0, seed=s),
                            constraint=c.json_schema(SCHEMA)) for s in range(2)]
    constrained.append(b.submit(PROMPT, 900, Sampling(temperature=1.0, seed=2),
                                constraint=c.tool_calls(TOOLS)))
    together = [b.submit(p, 40, s, stop_ids=[], logprobs=2) for p, s in free]
    run_all(b, constrained + together)
    for a, t in zip(alone, together):
        assert t.generated == a.generated and t.finish == a.finish == "length"
        assert t.token_logprobs == a.token_logprobs
    assert all(r.finish == "stop" for r in constrained)


def test_a_constrained_rows_logprobs_are_the_models_own(model):
    """The first token's alternatives are the unmasked model's (vLLM's raw_logprobs), the same
    as a free request's with the same prompt, though only "{" may be sampled."""
    c = compiler(model)
    b = Batcher(model, max_batch=2, context=1024)
    constrained = b.submit(PROMPT, 900, Sampling(temperature=1.0, seed=0), logprobs=5,
                           constraint=c.json_object())
    free = b.submit(PROMPT, 1, Sampling(), stop_ids=[], logprobs=5)
    run_all(b, [constrained, free])
    assert model.tokenizer.decode(constrained.generated[:1]) == "{"
    assert constrained.token_logprobs[0][1] == free.token_logprobs[0][1]


def test_the_mask_allows_no_padding_id_and_only_stop_tokens_once_complete(model):
    c = compiler(model, flexible=False)
    constraint = c.json_schema({"type": "array", "items": {"type": "integer"}})
    assert c.ll_tokenizer is c.ll_tokenizer               # built once, kept
    V = model.config.vocab_size                           # 384; the tokenizer has 300
    logits = np.random.default_rng(0).standard_normal(V).astype(np.float32)
    before = logits.copy()
    for text in ["[", "1", "2", ",", " ", "3"]:      # json.dumps's ", " between items
        allowed = constraint.allowed(V)
        assert allowed.any() and not allowed[300:].any()
        masked = constraint.mask(logits)
        assert masked.dtype == logits.dtype and np.array_equal(logits, before)
        assert np.array_equal(np.isfinite(masked), allowed)
        [token] = model.tokenizer.encode(text)
        assert allowed[token] and not constraint.finished
        constraint.accept(token)
    constraint.accept(model.tokenizer.encode("]")[0])
    assert constraint.finished
    assert set(np.flatnonzero(constraint.allowed(V))) == set(model.stop_ids())
    with pytest.raises(QwenNpError, match="refused token"):
        c.json_object().accept(model.tokenizer.encode("x")[0])


def test_max_tokens_cuts_a_constrained_output_short_as_length(model):
    """A JSON value cut short is a prefix, not a value: finish "length", as OpenAI's API."""
    c = compiler(model)
    [(finish, text)] = run_constrained(model, lambda: c.json_schema(SCHEMA), seeds=[0],
                                       max_tokens=5)
    assert finish == "length" and text.startswith("{")
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


@pytest.mark.parametrize("make,message", [
    (lambda c: c.json_schema({"type": "strin"}), r"^the JSON schema: .*Invalid type: strin"),
    (lambda c: c.json_schema({"properties": {"a": {"$ref": "#/nope"}}}), r"^the JSON schema: .*/nope"),
    (lambda c: c.json_schema("[1, 2"), r"^the JSON schema is not a JSON object"),
    (lambda c: c.tool_calls([TOOLS[0], {"type": "function", "function": {
        "name": "bad", "parameters": {"type": "object", "minProperties": "x"}}}]),
     r"^the parameters of tool 'bad': "),
    (lambda c: c.tool_calls(TOOLS, "nope"), r"names the function 'nope'.*'get_weather', 'add'"),
    (lambda c: c.tool_calls([{"type": "function"}]), r"tools\[0\] has no function name"),
])
def test_a_grammar_the_engine_cannot_compile_is_an_input_error(model, make, message):
    with pytest.raises(InputError, match=message) as e:
        make(compiler(model))
    assert "\n" not in str(e.value)
