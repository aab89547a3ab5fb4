"""Chat prompts from the model's own template, byte-identical to transformers'
apply_chat_template: the text with the fixtures' tokenizer, the ids with the real Qwen
tokenizer (from the default GGUF), for Qwen2.5-Instruct's, Qwen2.5-Coder's (the GGUF's own)
and Qwen3's published templates, and for every place a folder may keep its template.

The template texts: tests/fixtures/chat_templates/README.md names their sources."""

import json
import os
import shutil

import pytest

from conftest import FIXTURES, HAVE_TRANSFORMERS
from qwen_np.apps.fetch import default_model_path, is_fetched
from qwen_np.errors import InputError
from qwen_np.formats.chat_templates import ChatTemplates, read_chat_templates
from qwen_np.runtime.chat import ChatFormat, conversation_ids, conversation_text
from qwen_np.runtime.chat_template import ChatTemplateError

TEMPLATES = os.path.join(FIXTURES, "chat_templates")
SPECIAL = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
needs_transformers = pytest.mark.skipif(not HAVE_TRANSFORMERS, reason="needs transformers")

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city, now.",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "The city, e.g. Zürich"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city"]}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "The local time <HH:MM> & the zone's name.",
    "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}}}}
CALL = {"id": "call_0", "type": "function",
        "function": {"name": "get_weather", "arguments": {"city": "Zürich", "unit": "celsius"}}}
CALL_STRING_ARGS = {"id": "call_1", "type": "function",
                    "function": {"name": "get_time", "arguments": "{\"zone\": \"CET\"}"}}

# (messages, tools, template keyword arguments)
CONVERSATIONS = {
    "one user turn": ([{"role": "user", "content": "Hello <b>&</b> 'x' \"y\" — ünïcode"}],
                      None, {}),
    "system": ([{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "2+2?"}], None, {}),
    "multi-turn": ([{"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello! How can I help?"},
                    {"role": "user", "content": "Tell me a joke."}], None, {}),
    "earlier thinking": ([{"role": "user", "content": "What is 3*7?"},
                          {"role": "assistant",
                           "content": "<think>\n3*7 = 21.\n</think>\n\n21."},
                          {"role": "user", "content": "And 4*7?"}], None, {}),
    "reasoning_content field": ([{"role": "user", "content": "Q"},
                                 {"role": "assistant", "content": "A",
                                  "reasoning_content": "thought"}], None,
                                {"add_generation_prompt": False}),
    "thinking off": ([{"role": "user", "content": "Hi"}], None, {"enable_thinking": False}),
    "thinking on": ([{"role": "user", "content": "Hi"}], None, {"enable_thinking": True}),
    "tools": ([{"role": "user", "content": "Weather in Zürich?"}], [WEATHER, TIME], {}),
    "tools and system": ([{"role": "system", "content": "You check facts."},
                          {"role": "user", "content": "Weather in Zürich?"}], [WEATHER], {}),
    "tool call and results": (
        [{"role": "user", "content": "Weather and time in Zürich?"},
         # (content "", not None: Qwen3's template reads message.content of every assistant
         # turn, and transformers drops a key whose value is None)
         {"role": "assistant", "content": "", "tool_calls": [CALL, CALL_STRING_ARGS]},
         {"role": "tool", "tool_call_id": "call_0", "content": "{\"temp\": 3}"},
         {"role": "tool", "tool_call_id": "call_1", "content": "14:05"},
         {"role": "assistant", "content": "It is 3 °C at 14:05."},
         {"role": "user", "content": "Thanks"}], [WEATHER, TIME], {}),
    "text before a call": ([{"role": "user", "content": "Weather?"},
                            {"role": "assistant", "content": "Let me look.",
                             "tool_calls": [CALL]},
                            {"role": "tool", "content": "sunny"}], [WEATHER],
                           {"enable_thinking": False}),
}


def template_text(name: str) -> str:
    with open(os.path.join(TEMPLATES, name), encoding="utf-8") as f:
        return f.read()


def published_templates():
    """(name, text): the fixtures' texts, and the default GGUF's own when it is fetched."""
    out = [("qwen2.5-instruct", template_text("qwen2.5-instruct.jinja")),
           ("qwen3", template_text("qwen3.jinja"))]
    if is_fetched():
        out.append(("qwen2.5-coder (GGUF)",
                    read_chat_templates(default_model_path()).templates["default"]))
    return out


def transformers_tokenizer(tokenizer_json: str, template: str):
    from transformers import PreTrainedTokenizerFast
    tok = PreTrainedTokenizerFast(tokenizer_file=tokenizer_json, **SPECIAL)
    tok.chat_template = template
    return tok


def transformers_ids(tok, messages, tools, kwargs) -> list[int]:
    out = tok.apply_chat_template(messages, tools=tools, tokenize=True, **{
        "add_generation_prompt": True, **kwargs})
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def fmt_of(template: str) -> ChatFormat:
    return ChatFormat("qwen2", ChatTemplates({"default": template}, SPECIAL, "fixture"))


@needs_transformers
@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
def test_text_is_transformers_text(conversation):
    messages, tools, kwargs = CONVERSATIONS[conversation]
    for name, template in published_templates():
        tok = transformers_tokenizer(os.path.join(FIXTURES, "qwen2-tied-f32", "tokenizer.json"),
                                     template)
        expected = tok.apply_chat_template(messages, tools=tools, tokenize=False,
                                           **{"add_generation_prompt": True, **kwargs})
        ours = conversation_text(fmt_of(template), messages, tools, **{
            "add_generation_prompt": True, **kwargs})
        assert ours == expected, name


@needs_transformers
@pytest.mark.real_model
@pytest.mark.skipif(not is_fetched(), reason="run `qwen-np fetch` first")
def test_ids_are_transformers_ids_with_the_real_tokenizer(tmp_path):
    """The real Qwen2.5 tokenizer (rebuilt from the GGUF, saved as tokenizer.json): every
    conversation under every template gives transformers' ids."""
    from qwen_np.runtime.tokenizer import load_tokenizer
    ours_tok = load_tokenizer(default_model_path())
    path = str(tmp_path / "tokenizer.json")
    ours_tok.save(path)
    for name, template in published_templates():
        tok = transformers_tokenizer(path, template)
        for conversation, (messages, tools, kwargs) in CONVERSATIONS.items():
            expected = transformers_ids(tok, messages, tools, kwargs)
            assert conversation_ids(ours_tok, fmt_of(template), messages, tools, **{
                "add_generation_prompt": True, **kwargs}) == expected, (name, conversation)


def test_the_published_qwen25_templates_are_one_text():
    """Qwen2.5-Instruct's template is the Coder GGUF's, byte for byte (so one fixture)."""
    if not is_fetched():
        pytest.skip("run `qwen-np fetch` first")
    assert read_chat_templates(default_model_path()).templates["default"] == \
        template_text("qwen2.5-instruct.jinja")


def test_qwen3_thinking_off_writes_the_empty_think_block():
    ids_text = conversation_text(fmt_of(template_text("qwen3.jinja")),
                                 [{"role": "user", "content": "Hi"}], enable_thinking=False)
    assert ids_text == ("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
                        "<think>\n\n</think>\n\n")


def test_qwen3_drops_earlier_thinking():
    messages, _, _ = CONVERSATIONS["earlier thinking"]
    text = conversation_text(fmt_of(template_text("qwen3.jinja")), messages)
    assert "3*7 = 21" not in text and "<|im_start|>assistant\n21.<|im_end|>" in text


def model_folder(tmp_path, files: dict) -> str:
    """A copy of a fixture model with extra files (name -> text)."""
    folder = tmp_path / "model"
    shutil.copytree(os.path.join(FIXTURES, "qwen3-headdim12-f32"), folder)
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    return str(folder)


@needs_transformers
@pytest.mark.parametrize("where", ["tokenizer_config string", "tokenizer_config list",
                                   "chat_template.jinja", "chat_template.json"])
def test_every_place_a_folder_keeps_its_template(tmp_path, where):
    """A folder's template, wherever it is kept, gives the ids AutoTokenizer gives."""
    from transformers import AutoTokenizer

    import qwen_np
    template = template_text("qwen3.jinja")
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|im_end|>",
              "pad_token": "<|endoftext|>"}
    files = {"tokenizer_config.json": json.dumps(config)}
    if where == "tokenizer_config string":
        files["tokenizer_config.json"] = json.dumps({**config, "chat_template": template})
    elif where == "tokenizer_config list":
        files["tokenizer_config.json"] = json.dumps({**config, "chat_template": [
            {"name": "default", "template": template},
            {"name": "tool_use", "template": template_text("qwen2.5-instruct.jinja")}]})
    elif where == "chat_template.jinja":
        files["chat_template.jinja"] = template
    else:
        files["chat_template.json"] = json.dumps({"chat_template": template})
    folder = model_folder(tmp_path, files)
    model = qwen_np.load(folder, prepared_cache=False)
    hf = AutoTokenizer.from_pretrained(folder)
    if where == "chat_template.json":      # a processor's file: AutoTokenizer does not read it
        hf.chat_template = template
    for conversation, (messages, tools, kwargs) in CONVERSATIONS.items():
        expected = transformers_ids(hf, messages, tools, kwargs)
        assert model.chat_prompt_ids(messages, tools, **kwargs) == expected, conversation


def test_no_template_falls_back_to_chatml_with_one_notice(tmp_path, capsys):
    import qwen_np
    model = qwen_np.load(os.path.join(FIXTURES, "qwen2-tied-f32"))
    first = model.chat_prompt_ids([{"role": "user", "content": "Hi"}])
    model.chat_prompt_ids([{"role": "user", "content": "Hi"}])
    assert capsys.readouterr().err.count("has no chat template; using ChatML") == 1
    assert model.tokenizer.decode(first) == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
        "assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    with pytest.raises(InputError, match="no chat template"):
        model.chat_prompt_ids([{"role": "user", "content": "Hi"}], tools=[WEATHER])


MALICIOUS = {
    "class walk": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "globals": "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "namespace private": "{% set ns = namespace(_x=1) %}{{ ns._x }}",
    "list append": "{% set x = [] %}{{ x.append(1) }}",
    "huge repetition": "{{ 'a' * 100000000 }}",
    "huge power": "{{ 10 ** 100000000 }}",
    "huge output": "{% for i in range(100000) %}{% for j in range(100000) %}xxxxxxxxxx"
                   "{% endfor %}{% endfor %}",
    "endless loops": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}"
                     "{% endfor %}",
    "quadratic string": "{% set ns = namespace(a='') %}{% for i in range(100000) %}"
                        "{% set ns.a = ns.a ~ 'x' * 100 %}{% endfor %}",
    "huge center": "{{ 'x' | center(10**9) }}",
    "huge lipsum": "{{ lipsum(10**6) }}",
    "huge slice": "{{ range(10) | slice(10**9) | list }}",
    "raises": "{{ raise_exception('Conversation roles must alternate') }}",
    "syntax": "{% if %}",
    "undefined call": "{{ messages[0].nothing.more() }}",
}
# unsafe attributes read as undefined (empty), as in transformers' sandbox
HIDDEN = ["{{ '{0.__class__}'.format(messages) }}", "{{ messages.__class__ }}",
          "{{ messages | attr('__class__') }}", "{{ raise_exception.__globals__ }}"]


@pytest.mark.parametrize("case", sorted(MALICIOUS))
def test_a_malicious_or_broken_template_is_one_clear_error(case):
    fmt = ChatFormat("qwen2", ChatTemplates({"default": MALICIOUS[case]}, {}, "tpl.jinja"))
    with pytest.raises(ChatTemplateError) as e:
        conversation_text(fmt, [{"role": "user", "content": "Hi"}])
    assert str(e.value).startswith("tpl.jinja: ") and "\n" not in str(e.value)
    if case == "raises":
        assert "Conversation roles must alternate" in str(e.value)


@pytest.mark.parametrize("template", HIDDEN)
def test_unsafe_attributes_render_as_nothing(template):
    fmt = ChatFormat("qwen2", ChatTemplates({"default": template}, {}, "tpl.jinja"))
    assert conversation_text(fmt, [{"role": "user", "content": "Hi"}]) == ""


def test_tojson_is_json_dumps_not_jinja_html_escaping():
    fmt = ChatFormat("qwen2", ChatTemplates({"default": "{{ tools | tojson }}|"
                                             "{{ tools | tojson(indent=2) }}"}, {}, "t"))
    tools = [{"a": "<&>'ü"}]
    assert conversation_text(fmt, [{"role": "user", "content": "x"}], tools) == \
        json.dumps(tools, ensure_ascii=False) + "|" + json.dumps(tools, ensure_ascii=False,
                                                                 indent=2)


def test_a_gguf_keeps_named_templates_and_its_special_tokens_as_text():
    from qwen_np.formats.chat_templates import gguf_chat_templates
    meta = {"tokenizer.chat_template": "A", "tokenizer.chat_template.tool_use": "B",
            "tokenizer.ggml.tokens": ["x", "<|endoftext|>", "<|im_end|>"],
            "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
            "tokenizer.ggml.padding_token_id": 7}           # outside the vocabulary: left out
    found = gguf_chat_templates(meta, "m.gguf")
    assert found.templates == {"default": "A", "tool_use": "B"}
    assert found.special_tokens == {"bos_token": "<|endoftext|>", "eos_token": "<|im_end|>"}
    assert gguf_chat_templates({"tokenizer.ggml.tokens": []}, "m.gguf") is None
    fmt = ChatFormat("qwen2", found)
    assert conversation_text(fmt, [{"role": "user", "content": "x"}]) == "A"
    assert conversation_text(fmt, [{"role": "user", "content": "x"}], tools=[WEATHER]) == "B"
    with pytest.raises(Exception, match="is not a string"):
        gguf_chat_templates({"tokenizer.chat_template": 3}, "m.gguf")
