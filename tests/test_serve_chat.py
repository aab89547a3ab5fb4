"""The chat endpoint speaks the model's own template: thinking apart from the answer, tool
calls, structured output, content parts, /tokenize and /detokenize, through the `openai`
client.

Two kinds of server: a real `qwen-np serve` process over fixture models given Qwen's
published templates (what the model writes is random, so only constrained output - tool
calls with tool_choice "required", JSON - has a shape to check), and the app in this process
under uvicorn with a scripted batcher that writes a recorded answer token by token (for
thinking and for tool calls the model chose to make)."""

import contextlib
import json
import os
import shutil
import threading
import time
from types import SimpleNamespace

import pytest

from conftest import FIXTURES, HAVE_TRANSFORMERS
from serving import KEY, client_of, free_port, raw, server_process

openai = pytest.importorskip("openai")
pytest.importorskip("uvicorn")
jsonschema = pytest.importorskip("jsonschema")

TEMPLATES = os.path.join(FIXTURES, "chat_templates")
# the tools the real model's answers were recorded with (tools/record_tool_answers.py)
with open(os.path.join(TEMPLATES, "recorded_tool_answers.json"), encoding="utf-8") as f:
    WEATHER, TIME = json.load(f)["tools"]


def folder_with_template(tmp_path_factory, fixture: str, template: str) -> str:
    """A copy of a fixture model whose tokenizer_config.json carries a published template."""
    folder = tmp_path_factory.mktemp("model") / fixture
    shutil.copytree(os.path.join(FIXTURES, fixture), folder)
    with open(os.path.join(TEMPLATES, template), encoding="utf-8") as f:
        text = f.read()
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>", "chat_template": text}))
    return str(folder)


@pytest.fixture(scope="module")
def qwen25_folder(tmp_path_factory):
    return folder_with_template(tmp_path_factory, "qwen2-tied-f32", "qwen2.5-instruct.jinja")


@pytest.fixture(scope="module")
def qwen3_folder(tmp_path_factory):
    return folder_with_template(tmp_path_factory, "qwen3-headdim12-f32", "qwen3.jinja")


@pytest.fixture(scope="module")
def qwen25_server(qwen25_folder):
    with server_process("--backend", "numpy", model=qwen25_folder) as s:
        yield s


@pytest.fixture(scope="module")
def qwen3_server(qwen3_folder):
    with server_process("--backend", "numpy", model=qwen3_folder) as s:
        yield s


def post(server, path, body):
    return raw(server.url, "POST", path, json.dumps(body).encode(),
               {"Content-Type": "application/json"})


# -- the prompt: the template's, as transformers renders it -----------------------------------

@pytest.mark.skipif(not HAVE_TRANSFORMERS, reason="needs transformers")
def test_tokenize_gives_transformers_ids_thinking_off(qwen3_server, qwen3_folder):
    from transformers import AutoTokenizer
    hf = AutoTokenizer.from_pretrained(qwen3_folder)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    for kwargs in ({}, {"enable_thinking": False}):
        expected = list(hf.apply_chat_template(messages, add_generation_prompt=True,
                                               tokenize=True, return_dict=False, **kwargs))
        status, _, body = post(qwen3_server, "/tokenize", {
            "messages": messages, "chat_template_kwargs": kwargs})
        assert status == 200 and body["tokens"] == expected and body["count"] == len(expected)
    off = hf.decode(body["tokens"])
    assert off.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    status, _, body = post(qwen3_server, "/tokenize", {"messages": messages,
                                                        "enable_thinking": False})
    assert body["tokens"] == expected          # the top-level field some clients send
    status, _, text = post(qwen3_server, "/detokenize", {"tokens": expected})
    assert status == 200 and text["prompt"] == off
    status, _, body = post(qwen3_server, "/tokenize", {"prompt": "Hi there"})
    assert body["tokens"] == hf.encode("Hi there", add_special_tokens=False)


@pytest.mark.skipif(not HAVE_TRANSFORMERS, reason="needs transformers")
def test_a_tool_result_follow_up_renders_as_transformers_renders_it(qwen25_server,
                                                                   qwen25_folder):
    """The answer's tool_calls (arguments as JSON text, as OpenAI sends them) and the tool's
    result, sent back: the prompt is transformers' for the same turns (arguments as an
    object, as Qwen's templates expect)."""
    from transformers import AutoTokenizer
    client = client_of(qwen25_server.url)
    question = [{"role": "user", "content": "Weather in Paris?"}]
    answer = client.chat.completions.create(model="x", messages=question,
                                            tools=[WEATHER, TIME], tool_choice="required",
                                            temperature=0, max_tokens=120)
    call = answer.choices[0].message.tool_calls[0]
    follow_up = question + [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "{\"temp\": 21}"}]
    status, _, body = post(qwen25_server, "/tokenize", {"messages": follow_up,
                                                         "tools": [WEATHER, TIME]})
    hf_turns = question + [
        {"role": "assistant", "content": "", "tool_calls": [{
            "id": call.id, "type": "function", "function": {
                "name": call.function.name,
                "arguments": json.loads(call.function.arguments)}}]},
        {"role": "tool", "tool_call_id": call.id, "content": "{\"temp\": 21}"}]
    hf = AutoTokenizer.from_pretrained(qwen25_folder)
    assert status == 200 and body["tokens"] == list(hf.apply_chat_template(
        hf_turns, tools=[WEATHER, TIME], add_generation_prompt=True, tokenize=True,
        return_dict=False))
    follow = client.chat.completions.create(model="x", messages=follow_up,
                                            tools=[WEATHER, TIME], max_tokens=4)
    assert follow.choices[0].finish_reason in ("stop", "length", "tool_calls")


# -- tool calls --------------------------------------------------------------------------------

def test_two_tools_required_give_tool_calls_streamed_as_whole(qwen25_server):
    client = client_of(qwen25_server.url)
    args = dict(model="x", messages=[{"role": "user", "content": "Weather in Paris?"}],
                tools=[WEATHER, TIME], tool_choice="required", max_tokens=200, seed=7,
                temperature=1)
    whole = client.chat.completions.create(**args)
    choice = whole.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
    for call in choice.message.tool_calls:
        schema = {"get_weather": WEATHER, "get_time": TIME}[call.function.name]
        jsonschema.validate(json.loads(call.function.arguments),
                            schema["function"]["parameters"])
        assert call.id.startswith("call_") and call.type == "function"
    calls, reasons, content = {}, [], []
    for chunk in client.chat.completions.create(**args, stream=True):
        for c in chunk.choices:
            content.append(c.delta.content or "")
            for d in c.delta.tool_calls or []:
                calls.setdefault(d.index, [d.function.name, ""])
                calls[d.index][1] += d.function.arguments or ""
            if c.finish_reason:
                reasons.append(c.finish_reason)
    assert reasons == ["tool_calls"]
    assert [calls[i] for i in sorted(calls)] == [
        [c.function.name, c.function.arguments] for c in choice.message.tool_calls]
    assert "".join(content) == (choice.message.content or "")


def test_a_named_tool_choice_calls_that_tool(qwen25_server):
    client = client_of(qwen25_server.url)
    for seed in range(3):
        answer = client.chat.completions.create(
            model="x", messages=[{"role": "user", "content": "Time?"}], tools=[WEATHER, TIME],
            tool_choice={"type": "function", "function": {"name": "get_time"}},
            max_tokens=200, seed=seed, temperature=1)
        calls = answer.choices[0].message.tool_calls
        assert calls and {c.function.name for c in calls} == {"get_time"}
        for c in calls:
            jsonschema.validate(json.loads(c.function.arguments),
                                TIME["function"]["parameters"])


@pytest.mark.parametrize("body, param", [
    ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tool_choice": "sometimes"}, "tool_choice"),
    ({"tools": [{"type": "function", "function": {"name": "a b"}}]}, "tools[0]"),
    ({"tools": [WEATHER, WEATHER]}, "tools[1].function.name"),
    ({"tools": [{"type": "function", "function": {
        "name": "f", "parameters": {"type": "object", "properties": {"x": {"type": "strin"}}}}}],
      "tool_choice": "required"}, "tools"),
    ({"response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "wat"}}}}, "response_format"),
    ({"response_format": {"type": "xml"}}, "response_format"),
    ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
    ({"messages": [{"role": "assistant", "content": None, "tool_calls": [
        {"type": "function", "function": {"name": "f", "arguments": "{not json"}}]}]},
     "messages[0].tool_calls[0].function.arguments"),
    ({"messages": [{"role": "assistant", "content": None, "tool_calls": "x"}]},
     "messages[0].tool_calls"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url",
                                                 "image_url": {"url": "x"}}]}]},
     "messages[0].content[0]"),
    ({"chat_template_kwargs": [1]}, "chat_template_kwargs"),
    ({"reasoning_format": "xml"}, "reasoning_format"),
])
def test_bad_chat_fields_are_400_naming_them(qwen25_server, body, param):
    request = {"messages": [{"role": "user", "content": "Hi"}], "tools": [WEATHER], **body}
    status, _, answer = post(qwen25_server, "/v1/chat/completions", request)
    assert status == 400 and answer["error"]["param"] == param, answer


def test_a_template_that_raises_is_400(tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(os.path.join(FIXTURES, "qwen2-tied-f32"), folder)
    (folder / "chat_template.jinja").write_text(
        "{% if messages[0].role != 'user' %}{{ raise_exception('the first turn must be the "
        "user\\'s') }}{% endif %}{{ messages[0].content }}")
    with server_process("--backend", "numpy", model=str(folder)) as s:
        status, _, answer = post(s, "/v1/chat/completions", {
            "messages": [{"role": "system", "content": "x"}], "max_tokens": 2})
        assert status == 400 and answer["error"]["param"] == "messages"
        assert "the first turn must be the user's" in answer["error"]["message"]
        status, _, answer = post(s, "/v1/chat/completions", {
            "messages": [{"role": "user", "content": "x"}], "max_tokens": 2})
        assert status == 200


def test_text_parts_are_joined(qwen25_server):
    parts = [{"type": "text", "text": "Hello"}, {"type": "text", "text": "there"}]
    _, _, joined = post(qwen25_server, "/tokenize", {"messages": [
        {"role": "user", "content": parts}]})
    _, _, plain = post(qwen25_server, "/tokenize", {"messages": [
        {"role": "user", "content": "Hello\nthere"}]})
    assert joined["tokens"] == plain["tokens"]


def test_qwens_published_request_with_presence_penalty_succeeds(qwen25_server):
    """Qwen's vLLM example: temperature 0.7, top_p 0.8, presence_penalty 1.5 (and top_k 20,
    repetition_penalty 1.05 as extra_body)."""
    client = client_of(qwen25_server.url)
    answer = client.chat.completions.create(
        model="x", messages=[{"role": "user", "content": "Give me a short introduction."}],
        temperature=0.7, top_p=0.8, presence_penalty=1.5, max_tokens=8,
        extra_body={"top_k": 20, "repetition_penalty": 1.05, "min_p": 0.0,
                    "chat_template_kwargs": {"enable_thinking": False}})
    assert answer.choices[0].finish_reason in ("stop", "length")


# -- structured output on the fixture ----------------------------------------------------------

SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 10},
    "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3},
    "size": {"type": "object", "properties": {"w": {"type": "integer", "minimum": 0,
                                                    "maximum": 99}},
             "required": ["w"], "additionalProperties": False}},
    "required": ["name", "tags", "size"], "additionalProperties": False}


def test_json_schema_answers_validate_and_leave_free_rows_alone(qwen25_server):
    """Constrained and free requests at once: every constrained answer validates; every free
    answer is the text it gives alone."""
    from concurrent.futures import ThreadPoolExecutor
    client = client_of(qwen25_server.url)
    free = dict(model="x", messages=[{"role": "user", "content": "Hi"}], max_tokens=24,
                temperature=0)
    alone = client.chat.completions.create(**free).choices[0].message.content

    def constrained(seed):
        return client.chat.completions.create(
            model="x", messages=[{"role": "user", "content": "A record"}], seed=seed,
            temperature=1, max_tokens=300, response_format={
                "type": "json_schema", "json_schema": {"name": "r", "schema": SCHEMA}})
    with ThreadPoolExecutor(6) as pool:
        jobs = [pool.submit(constrained, s) for s in range(4)]
        frees = [pool.submit(client.chat.completions.create, **free) for _ in range(2)]
        for job in jobs:
            choice = job.result().choices[0]
            assert choice.finish_reason == "stop"
            jsonschema.validate(json.loads(choice.message.content), SCHEMA)
        assert [f.result().choices[0].message.content for f in frees] == [alone, alone]


# -- a recorded answer, written token by token by a scripted batcher ---------------------------

class ScriptedBatcher:
    """batch.Batcher's interface: every request writes the ids of `script`, one per 2 ms,
    then ends "stop"."""
    context = 4096
    load = (0, 0)
    alive = True

    def __init__(self, ids):
        self.ids = ids

    def submit(self, ids, max_new_tokens, sampling, stop_ids=None, emit=None,
               cache_prompt=True, logprobs=None, prompt_logprobs=False, constraint=None,
               prompt_lookup=None):
        request = SimpleNamespace(finish=None, generated=[], error=None, emit=emit,
                                  cached_tokens=0, logprobs=None)

        def run():
            for token in self.ids:
                if request.finish is not None:
                    return
                request.generated.append(token)
                emit(token, None)
                time.sleep(0.002)
            request.finish = "stop"
            emit(None, "stop")
        threading.Thread(target=run, daemon=True).start()
        return request

    def cancel(self, request):
        if request.finish is None:
            request.finish = "cancelled"
            request.emit(None, "cancelled")


@contextlib.contextmanager
def scripted_server(folder: str, answer: str):
    """The app over the model in `folder`, under uvicorn in this process, answering
    `answer`."""
    import uvicorn

    import qwen_np
    from qwen_np.apps.serve.app import make_app
    model = qwen_np.load(folder, backend="numpy")
    app = make_app(model, ScriptedBatcher(model.tokenizer.encode(answer)), "scripted",
                   api_key=KEY)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        yield client_of(f"http://127.0.0.1:{port}")
    finally:
        server.should_exit = True
        thread.join(10)


THOUGHT = "<think>\nThe user greets me. I greet back.\n</think>\n\nHello! Nice to meet you."
CALLING = ('I will look that up.<tool_call>\n{"name": "get_weather", "arguments": '
           '{"city": "Zürich", "unit": "celsius"}}\n</tool_call>\n<tool_call>\n'
           '{"name": "get_time", "arguments": {"zone": "CET"}}\n</tool_call>')


def streamed_parts(stream):
    reasoning, content, calls, reasons = [], [], {}, []
    for chunk in stream:
        for c in chunk.choices:
            extra = c.delta.model_extra or {}
            reasoning.append(extra.get("reasoning_content") or "")
            content.append(c.delta.content or "")
            for d in c.delta.tool_calls or []:
                calls.setdefault(d.index, [d.id, d.function.name, ""])
                calls[d.index][2] += d.function.arguments or ""
            if c.finish_reason:
                reasons.append(c.finish_reason)
    return "".join(reasoning), "".join(content), [calls[i] for i in sorted(calls)], reasons


def test_thinking_is_reasoning_content_streamed_and_not(qwen3_folder):
    messages = [{"role": "user", "content": "Hi"}]
    with scripted_server(qwen3_folder, THOUGHT) as client:
        whole = client.chat.completions.create(model="x", messages=messages)
        message = whole.choices[0].message
        assert message.model_extra["reasoning_content"] == \
            "\nThe user greets me. I greet back.\n"
        assert message.content == "\n\nHello! Nice to meet you."
        reasoning, content, _, reasons = streamed_parts(client.chat.completions.create(
            model="x", messages=messages, stream=True))
        assert (reasoning, content, reasons) == (message.model_extra["reasoning_content"],
                                                 message.content, ["stop"])
        raw_text = client.chat.completions.create(model="x", messages=messages,
                                                  extra_body={"reasoning_format": "none"})
        assert raw_text.choices[0].message.content == THOUGHT
        off = client.chat.completions.create(model="x", messages=messages, extra_body={
            "chat_template_kwargs": {"enable_thinking": False}})
        assert off.choices[0].message.content == THOUGHT      # no thinking to split


def test_a_recorded_tool_call_answer_is_tool_calls_streamed_and_not(qwen25_folder):
    with scripted_server(qwen25_folder, CALLING) as client:
        args = dict(model="x", messages=[{"role": "user", "content": "Weather?"}],
                    tools=[WEATHER, TIME])
        whole = client.chat.completions.create(**args).choices[0]
        assert whole.finish_reason == "tool_calls"
        assert whole.message.content == "I will look that up."
        got = [(c.function.name, json.loads(c.function.arguments))
               for c in whole.message.tool_calls]
        assert got == [("get_weather", {"city": "Zürich", "unit": "celsius"}),
                       ("get_time", {"zone": "CET"})]
        _, content, calls, reasons = streamed_parts(client.chat.completions.create(
            **args, stream=True))
        assert reasons == ["tool_calls"] and content == "I will look that up."
        assert [(n, json.loads(a)) for _, n, a in calls] == got
        plain = client.chat.completions.create(**args, tool_choice="none").choices[0]
        assert plain.finish_reason == "stop" and plain.message.content == CALLING


def test_a_malformed_tool_call_stays_text(qwen25_folder):
    broken = '<tool_call>\n{"name": "get_weather", "arguments": {"city": }\n</tool_call>'
    with scripted_server(qwen25_folder, broken) as client:
        args = dict(model="x", messages=[{"role": "user", "content": "Weather?"}],
                    tools=[WEATHER])
        whole = client.chat.completions.create(**args).choices[0]
        assert whole.finish_reason == "stop" and whole.message.content == broken
        assert not whole.message.tool_calls
        _, content, calls, reasons = streamed_parts(client.chat.completions.create(
            **args, stream=True))
        assert (content, calls, reasons) == (broken, [], ["stop"])
