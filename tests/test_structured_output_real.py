"""Structured output on the real default model (Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF),
through `qwen-np serve` and the `openai` client: 200 json_schema answers sampled at
temperature 1 all parse and validate; json_object answers all parse; a tool call with
tool_choice "required" follows its tool's schema. Runs when the file is fetched (CI fetches
it)."""

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from qwen_np.apps.fetch import default_model_path, is_fetched
from serving import client_of, server_process

pytestmark = [pytest.mark.real_model,
              pytest.mark.skipif(not is_fetched(), reason="run `qwen-np fetch` first")]
openai = pytest.importorskip("openai")
jsonschema = pytest.importorskip("jsonschema")

# nested objects, an array of objects, enums, required and optional fields
SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 40},
        "language": {"enum": ["python", "rust", "go", "c"]},
        "difficulty": {"type": "integer", "minimum": 1, "maximum": 5},
        "author": {"type": "object",
                   "properties": {"name": {"type": "string", "maxLength": 30},
                                  "verified": {"type": "boolean"}},
                   "required": ["name", "verified"], "additionalProperties": False},
        "steps": {"type": "array", "minItems": 1, "maxItems": 3,
                  "items": {"type": "object",
                            "properties": {"kind": {"enum": ["read", "write", "test"]},
                                           "note": {"type": "string", "maxLength": 40}},
                            "required": ["kind"], "additionalProperties": False}}},
    "required": ["title", "language", "difficulty", "author", "steps"],
    "additionalProperties": False}
PROMPT = [{"role": "user", "content": "Describe a small programming exercise as JSON."}]
TOOL = {"type": "function", "function": {
    "name": "run_tests", "description": "Run a project's tests.",
    "parameters": {"type": "object", "properties": {
        "path": {"type": "string", "maxLength": 40},
        "verbose": {"type": "boolean"},
        "only": {"type": "array", "items": {"type": "string", "maxLength": 20},
                 "maxItems": 3}},
        "required": ["path", "verbose"], "additionalProperties": False}}}


@pytest.fixture(scope="module")
def client():
    with server_process("--backend", "numba", "--max-batch", "8", "--context", "1024",
                        model=default_model_path()) as s:
        yield client_of(s.url)


def test_200_sampled_json_schema_answers_all_validate(client):
    def one(seed):
        return client.chat.completions.create(
            model="x", messages=PROMPT, temperature=1, seed=seed, max_tokens=300,
            response_format={"type": "json_schema",
                             "json_schema": {"name": "exercise", "schema": SCHEMA}})
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, range(200)))
    for answer in answers:
        choice = answer.choices[0]
        assert choice.finish_reason == "stop", choice
        jsonschema.validate(json.loads(choice.message.content), SCHEMA)


def test_json_object_answers_all_parse(client):
    def one(seed):
        return client.chat.completions.create(
            model="x", seed=seed, temperature=0.7, max_tokens=300,
            messages=[{"role": "user", "content": "Give a JSON object with a person's name "
                                                  "and age."}],
            response_format={"type": "json_object"})
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, range(16)))
    for answer in answers:
        choice = answer.choices[0]
        assert choice.finish_reason == "stop", choice
        assert isinstance(json.loads(choice.message.content), dict)


def test_a_required_tool_call_follows_its_schema(client):
    """parallel_tool_calls false: one call. (With parallel calls allowed, this 0.5B model
    writes "\n" after its </tool_call> rather than <|im_end|>, and calls again until
    max_tokens.)"""
    answer = client.chat.completions.create(
        model="x", temperature=1, seed=3, max_tokens=200, tools=[TOOL], tool_choice="required",
        parallel_tool_calls=False,
        messages=[{"role": "user", "content": "Run the tests in ./src, quietly."}])
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
    for call in choice.message.tool_calls:
        assert call.function.name == "run_tests"
        jsonschema.validate(json.loads(call.function.arguments),
                            TOOL["function"]["parameters"])
