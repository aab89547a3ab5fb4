"""Where a model keeps its chat template, and the special tokens the template may name.

The template is Jinja text that turns a list of messages into the prompt (runtime/
chat_template.py renders it). A checkpoint ships it in one of these places, read in this order
(a later one is used only when the earlier ones are absent, as transformers loads them):

    model folder/
      chat_template.jinja          the template as it is                  (transformers >= 4.43)
      chat_template.json           {"chat_template": "..."}               (processors' file)
      tokenizer_config.json        {"chat_template": "..." | [{"name": "default",
                                                               "template": "..."}, ...],
                                    "bos_token": ..., "eos_token": ..., ...}
    model.gguf
      tokenizer.chat_template              the template (llama.cpp's convert script copies it
      tokenizer.chat_template.<name>       from tokenizer_config.json), and named ones
      tokenizer.ggml.{bos,eos,padding,unknown}_token_id   the special tokens, as ids

A list of named templates is kept by name; "default" is the one used unless a request has
tools and a "tool_use" template exists (transformers' get_chat_template). The special tokens
(bos_token, eos_token, pad_token, unk_token) are passed to the template as text, as
transformers passes its special_tokens_map: a template may write {{ eos_token }}.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from qwen_np.errors import FormatError
from qwen_np.formats.files import read_json, regular_file

MAX_TEMPLATE_BYTES = 1 << 20          # published templates are a few kB
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "pad_token")
GGUF_SPECIAL_TOKEN_KEYS = {"bos_token": "tokenizer.ggml.bos_token_id",
                           "eos_token": "tokenizer.ggml.eos_token_id",
                           "unk_token": "tokenizer.ggml.unknown_token_id",
                           "pad_token": "tokenizer.ggml.padding_token_id"}


@dataclass(frozen=True)
class ChatTemplates:
    """A model's chat templates by name ("default", "tool_use", ...) and its special tokens."""
    templates: dict[str, str]
    special_tokens: dict[str, str] = field(default_factory=dict)
    where: str = ""                   # the file they were read from


def read_chat_templates(path: str) -> ChatTemplates | None:
    """The chat templates of a model folder or GGUF file; None when it ships none."""
    if os.path.isdir(path):
        return folder_chat_templates(path)
    from qwen_np.formats.gguf import read_gguf
    meta, _ = read_gguf(path)
    return gguf_chat_templates(meta, path)


def folder_chat_templates(folder: str) -> ChatTemplates | None:
    config_path = os.path.join(folder, "tokenizer_config.json")
    config = read_json(config_path, "tokenizer_config.json") \
        if os.path.lexists(config_path) else {}
    if not isinstance(config, dict):
        raise FormatError(f"{config_path}: not a JSON object")
    special = {name: text for name in SPECIAL_TOKEN_NAMES
               if (text := special_token_text(config.get(name), config_path, name)) is not None}
    jinja_path = os.path.join(folder, "chat_template.jinja")
    json_path = os.path.join(folder, "chat_template.json")
    if os.path.lexists(jinja_path):
        return ChatTemplates({"default": read_template_text(jinja_path)}, special, jinja_path)
    if os.path.lexists(json_path):
        value = read_json(json_path, "chat_template.json")
        value = value.get("chat_template") if isinstance(value, dict) else None
        return ChatTemplates(named_templates(value, json_path), special, json_path)
    if config.get("chat_template") is not None:
        return ChatTemplates(named_templates(config["chat_template"], config_path), special,
                             config_path)
    return None


def gguf_chat_templates(meta: dict, source: str) -> ChatTemplates | None:
    prefix = "tokenizer.chat_template"
    templates = {}
    for key, value in meta.items():
        if key == prefix or key.startswith(prefix + "."):
            if not isinstance(value, str):
                raise FormatError(f"{source}: {key} is not a string")
            templates["default" if key == prefix else key[len(prefix) + 1:]] = value
    if not templates:
        return None
    tokens = meta.get("tokenizer.ggml.tokens")
    special = {}
    for name, key in GGUF_SPECIAL_TOKEN_KEYS.items():
        token_id = meta.get(key)
        if isinstance(token_id, int) and tokens is not None and 0 <= token_id < len(tokens):
            special[name] = str(tokens[token_id])
    return ChatTemplates(templates, special, source)


def named_templates(value, source: str) -> dict[str, str]:
    """A template string, or transformers' list of {"name", "template"} pairs, as a dict."""
    if isinstance(value, str):
        return {"default": value}
    if isinstance(value, list) and all(isinstance(t, dict) and isinstance(t.get("name"), str)
                                       and isinstance(t.get("template"), str) for t in value):
        return {t["name"]: t["template"] for t in value}
    raise FormatError(f"{source}: chat_template must be a string or a list of "
                      f"{{\"name\": ..., \"template\": ...}} objects")


def special_token_text(value, source: str, name: str) -> str | None:
    """A special token as tokenizer_config.json writes it: a string, or an AddedToken object
    {"content": "<|im_end|>", ...}; None when absent."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    raise FormatError(f"{source}: {name} must be a string or an object with \"content\"")


def read_template_text(path: str) -> str:
    regular_file(path)
    with open(path, "rb") as f:
        raw = f.read(MAX_TEMPLATE_BYTES + 1)
    if len(raw) > MAX_TEMPLATE_BYTES:
        raise FormatError(f"{path}: larger than {MAX_TEMPLATE_BYTES >> 20} MiB")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise FormatError(f"{path}: not UTF-8 text") from None
