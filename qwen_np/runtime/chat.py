"""Chat prompts as token ids, the way each Qwen generation builds them.

Qwen2, Qwen2.5 and Qwen3 checkpoints ship a chat template (Jinja; formats/chat_templates.py
finds it, runtime/chat_template.py renders it as transformers does). The prompt is the
template's text, encoded whole: `conversation_ids` is apply_chat_template(messages,
tools=..., add_generation_prompt=True, tokenize=True, **kwargs). A checkpoint without a
template gets ChatML written in code (tokenizer.format_chatml), with a notice once.

The original Qwen ships no template; its prompt is qwen_generation_utils.py's make_context,
which builds the same ChatML text but not its tokenization: it encodes each piece on its own
and joins the ids,

    [im_start] + enc("system") + enc("\\n") + enc(system) + [im_end]
    + enc("\\n") + [im_start] + enc("user") + enc("\\n") + enc(query) + [im_end]
    + enc("\\n") + [im_start] + enc("assistant") + enc("\\n")

with special-token strings inside the role and message encoded as ordinary text. Its default
system prompt is "You are a helpful assistant.".
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from qwen_np.errors import FormatError, InputError
from qwen_np.formats.chat_templates import ChatTemplates
from qwen_np.runtime.chat_template import compile_chat_template, render_chat_template
from qwen_np.runtime.tokenizer import DEFAULT_SYSTEM_BY_MODEL_TYPE, Tokenizer, format_chatml


@dataclass
class ChatFormat:
    """How one model's chat prompt is built: its templates (None: make_context for the
    original Qwen, else ChatML in code) and their compiled forms, made on first use."""
    model_type: str
    templates: ChatTemplates | None
    compiled: dict = field(default_factory=dict)

    @property
    def thinks(self) -> bool:
        """Whether the template writes a <think> block (Qwen3's): the answer then begins with
        the model's reasoning."""
        return self.templates is not None and any("<think>" in t for t in
                                                  self.templates.templates.values())

    def template_for(self, tools) -> tuple[object, str]:
        """(the compiled template, the file it came from): "tool_use" when there are tools and
        one exists, else "default" (transformers' get_chat_template)."""
        named = self.templates.templates
        name = "tool_use" if tools and "tool_use" in named else "default"
        if name not in named:
            raise FormatError(f"{self.templates.where}: no default chat template among "
                              f"{sorted(named)}")
        if name not in self.compiled:
            self.compiled[name] = compile_chat_template(named[name], self.templates.where)
        return self.compiled[name], self.templates.where


def chat_format(model_type: str, templates: ChatTemplates | None, source: str,
                notice=lambda text: print(f"qwen-np: {text}", file=sys.stderr)) -> ChatFormat:
    """The model's ChatFormat; says once (through `notice`) when a Qwen2/Qwen3 checkpoint
    has no template and ChatML is written in code instead."""
    if templates is None and model_type != "qwen":
        notice(f"{source} has no chat template; using ChatML")
    return ChatFormat(model_type, None if model_type == "qwen" and templates is None
                      else templates)


def conversation_ids(tok: Tokenizer, fmt: ChatFormat, messages: list[dict], tools=None,
                     documents=None, add_generation_prompt: bool = True,
                     **template_kwargs) -> list[int]:
    """The prompt ids for `messages` (OpenAI's shape: role, content, tool_calls, ...): the
    template's text encoded whole, as transformers' apply_chat_template(..., tokenize=True)
    gives it. Without a template: make_context (original Qwen) or ChatML."""
    return tok.encode(conversation_text(fmt, messages, tools, documents,
                                        add_generation_prompt, **template_kwargs)) \
        if fmt.templates is not None else fallback_ids(tok, fmt, messages, tools,
                                                       add_generation_prompt)


def conversation_text(fmt: ChatFormat, messages: list[dict], tools=None, documents=None,
                      add_generation_prompt: bool = True, **template_kwargs) -> str:
    """The template's text for `messages` (a model with a template only)."""
    template, where = fmt.template_for(tools)
    return render_chat_template(template, messages, where, tools=tools, documents=documents,
                                add_generation_prompt=add_generation_prompt,
                                special_tokens=fmt.templates.special_tokens, **template_kwargs)


def fallback_ids(tok: Tokenizer, fmt: ChatFormat, messages: list[dict], tools,
                 add_generation_prompt: bool) -> list[int]:
    """A checkpoint without a template: plain turns (system, user, assistant) only."""
    if tools:
        raise InputError(f"{tok.source}: this model has no chat template, so it has no way "
                         f"to be given tools")
    for i, m in enumerate(messages):
        if m.get("role") not in ("system", "user", "assistant") or \
                not isinstance(m.get("content"), str):
            raise InputError(f"{tok.source}: messages[{i}]: this model has no chat template; "
                             f"only system, user and assistant turns with text content can be "
                             f"written")
    plain = [{"role": m["role"], "content": m["content"]} for m in messages]
    default_system = DEFAULT_SYSTEM_BY_MODEL_TYPE.get(fmt.model_type)
    if not add_generation_prompt:
        if fmt.model_type == "qwen":
            raise InputError(f"{tok.source}: the original Qwen's prompt always ends in the "
                             f"assistant's header")
        return tok.encode(format_chatml(plain, default_system, add_generation_prompt=False))
    return messages_prompt_ids(tok, fmt.model_type, plain, default_system)


def chat_prompt_ids(tok: Tokenizer, model_type: str, query: str, system: str | None,
                    history=()) -> list[int]:
    """The prompt for `query` after earlier (query, answer) pairs in `history`, with the
    system prompt (for the original Qwen: make_context's ids; the system block is always
    there, empty if `system` is None or empty)."""
    if model_type != "qwen":
        messages = [m for q, a in history for m in ({"role": "user", "content": q},
                                                    {"role": "assistant", "content": a})]
        return tok.encode(format_chatml(messages + [{"role": "user", "content": query}], system))
    start, end = chat_token_ids(tok)
    nl = tok.encode("\n")
    ids = [start] + role_and_content(tok, "system", system or "") + [end]
    for q, a in history:
        ids += (nl + [start] + role_and_content(tok, "user", q) + [end]
                + nl + [start] + role_and_content(tok, "assistant", a) + [end])
    return ids + next_turn_ids(tok, model_type, query)


def messages_prompt_ids(tok: Tokenizer, model_type: str, messages: list[dict],
                        default_system: str | None) -> list[int]:
    """The prompt for the assistant's next turn after `messages` ([{"role": "system" | "user"
    | "assistant", "content": str}], as an OpenAI chat request sends them), with
    `default_system` as the system turn when the first message is not one. Each turn is
    written as chat_prompt_ids writes it, in the order given: for a system prompt and
    alternating user/assistant turns ending with a user turn, the same ids."""
    if model_type != "qwen":
        return tok.encode(format_chatml(messages, default_system))
    if not messages or messages[0]["role"] != "system":
        messages = [{"role": "system", "content": default_system or ""}] + list(messages)
    start, end = chat_token_ids(tok)
    nl = tok.encode("\n")
    ids = []
    for i, m in enumerate(messages):
        ids += ([] if i == 0 else nl) + [start] + role_and_content(tok, m["role"],
                                                                   m["content"]) + [end]
    return ids + nl + [start] + tok.encode("assistant") + nl


def next_turn_ids(tok: Tokenizer, model_type: str, query: str) -> list[int]:
    """The ids that follow an answer's <|im_end|>: a new user turn and the assistant's header
    (a chat that keeps its KV cache feeds only these)."""
    if model_type != "qwen":
        return tok.encode("\n" + format_chatml([{"role": "user", "content": query}], None))
    start, end = chat_token_ids(tok)
    nl = tok.encode("\n")
    return (nl + [start] + role_and_content(tok, "user", query) + [end]
            + nl + [start] + tok.encode("assistant") + nl)


def role_and_content(tok: Tokenizer, role: str, content: str) -> list[int]:
    """make_context's _tokenize_str: role, newline and content, each encoded on its own."""
    return tok.encode_plain(role) + tok.encode("\n") + tok.encode_plain(content)


def chat_token_ids(tok: Tokenizer) -> tuple[int, int]:
    start, end = tok.token_id("<|im_start|>"), tok.token_id("<|im_end|>")
    if start is None or end is None:
        raise FormatError(f"{tok.source}: no <|im_start|>/<|im_end|> tokens; chat needs ChatML")
    return start, end
