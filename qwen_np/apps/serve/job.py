"""Reading a request's parameters: the body's fields -> a Job (what it asks of the batcher).

Sampling settings a body leaves out come from the model's generation_config.json where it
sets them (formats/generation_config.py), else OpenAI's defaults (temperature 1, top_p 1,
no penalties). presence_penalty and frequency_penalty are OpenAI's (-2..2, over the tokens
generated; model/sampling.py). max_tokens defaults to 16 for completions; for chat, to what
the context leaves. `n` choices (at most MAX_CHOICES) are decoded
as separate rows of the batch, seeded apart (seed, seed + 1, ...). Log-probabilities:
completions' `logprobs` (an integer 0..20: that many alternatives) with `echo` (the prompt's
own, and max_tokens may be 0), chat's `logprobs: true` with `top_logprobs` (0..20). Beyond OpenAI's fields the server reads
`top_k`, `min_p`, `repetition_penalty` and `ignore_eos` (vLLM's names), `cache_prompt`
(llama-server's: false prefills the whole prompt, reusing no cached prefix) and
`prompt_lookup` (0..32 tokens drafted a step from the text so far; greedy output is the
same, only faster where the answer repeats the prompt). Unknown fields
are ignored;
fields asking for what the server does not do (best_of, logit_bias, tools) are a 400.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from qwen_np.apps.serve.openai_errors import ApiError
from qwen_np.errors import InputError
from qwen_np.model.sampling import Sampling, sampling_with_defaults
from qwen_np.runtime.prompt_lookup import MAX_PROMPT_LOOKUP

MAX_STOP_STRINGS = 4               # OpenAI's limit
MAX_CHOICES = 16                   # n
MAX_TOP_LOGPROBS = 20              # OpenAI's limit for top_logprobs
CHAT_ROLES = ("system", "user", "assistant")
SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty",
                   "presence_penalty", "frequency_penalty", "seed")


@dataclass(frozen=True)
class Job:
    """What one request asks of the batcher, read from its body."""
    ids: list[int]                   # the prompt's token ids
    max_tokens: int
    sampling: Sampling
    stop: tuple[str, ...]            # stop strings
    stop_ids: list[int] | None       # None: the model's own (EOS, <|im_end|>); []: ignore_eos
    stream: bool
    include_usage: bool              # stream_options.include_usage: a last chunk with usage
    cache_prompt: bool = True        # llama-server's cache_prompt: false reuses no prefix
    n: int = 1                       # choices
    logprobs: int | None = None      # alternatives per token to report; None: no logprobs
    echo: bool = False               # completions: the prompt's text (and logprobs) first
    chat: bool = False               # a chat answer (message parts: chat_output.py)
    split_reasoning: bool = False    # chat: <think> ... </think> to reasoning_content
    tool_names: tuple | None = None  # chat: tool calls parsed out of the answer (None: none)
    constraints: list | None = None  # one runtime/constraint.Constraint per choice
    prompt_lookup: int | None = None  # drafted tokens a step (None: the server's --prompt-lookup)


# fields whose only accepted values ask for nothing the server does not do
PLAIN_VALUES = {"best_of": (None, 1), "suffix": (None, ""), "logit_bias": (None, {}),
                "functions": (None, [])}
# ... and for completions, fields that only a chat request can use (chat_request.py)
CHAT_ONLY_VALUES = {"tools": (None, []), "tool_choice": (None, "none"),
                    "response_format": (None, {"type": "text"})}


def read_job(body: dict, ids: list[int], default_max_tokens: int, chat: bool = False,
             sampling_defaults: dict | None = None) -> Job:
    """The body's settings for a prompt already turned into ids; 400 for any out of range.
    `sampling_defaults`: the model's generation_config.json settings (Model.generation_defaults)."""
    for name, plain in {**PLAIN_VALUES, **({} if chat else CHAT_ONLY_VALUES)}.items():
        value = body.get(name)
        # (True == 1 and False == 0 in Python: a boolean matches only a boolean)
        if not any(value == p and isinstance(value, bool) == isinstance(p, bool) for p in plain):
            raise ApiError(400, f"{name} = {shown(value)} is not supported by this "
                                f"server (only {' or '.join(json.dumps(p) for p in plain)})",
                           param=name, code="unsupported_parameter")
    max_tokens = body.get("max_completion_tokens") if chat else None
    if max_tokens is None:
        max_tokens = body.get("max_tokens")
    if max_tokens is None:
        max_tokens = default_max_tokens
    echo = False if chat else flag(body, "echo")
    if chat and body.get("echo") is not None:
        raise ApiError(400, "echo is for /v1/completions only", param="echo",
                       code="unsupported_parameter")
    logprobs = chat_logprobs(body) if chat else completion_logprobs(body)
    least = 0 if echo and logprobs is not None else 1       # the prompt scored alone
    if not is_int(max_tokens) or max_tokens < least:
        raise ApiError(400, f"max_tokens is {shown(max_tokens)}; it must be an integer "
                            f">= {least}", param="max_tokens")
    n = body.get("n")
    n = 1 if n is None else n
    if not is_int(n) or not 1 <= n <= MAX_CHOICES:
        raise ApiError(400, f"n is {shown(n)}; it must be an integer from 1 to {MAX_CHOICES}",
                       param="n")
    stream = flag(body, "stream")
    options = body.get("stream_options")
    if options is not None and not (isinstance(options, dict) and stream):
        raise ApiError(400, "stream_options must be an object, and only with stream: true",
                       param="stream_options")
    include_usage = bool(options) and flag(options, "include_usage", "stream_options.")
    cache_prompt = body.get("cache_prompt") is None or flag(body, "cache_prompt")
    lookup = body.get("prompt_lookup")
    if lookup is not None and not (is_int(lookup) and 0 <= lookup <= MAX_PROMPT_LOOKUP):
        raise ApiError(400, f"prompt_lookup is {shown(lookup)}; it must be an integer from 0 "
                            f"(off) to {MAX_PROMPT_LOOKUP}", param="prompt_lookup")
    return Job(ids, max_tokens, sampling_of(body, sampling_defaults), stop_strings(body),
               [] if flag(body, "ignore_eos") else None, stream, include_usage, cache_prompt,
               n, logprobs, echo, chat, prompt_lookup=lookup)


def completion_logprobs(body: dict) -> int | None:
    """Completions' `logprobs`: null, or how many alternatives per token (0..20)."""
    value = body.get("logprobs")
    if value is None:
        return None
    if not is_int(value) or not 0 <= value <= MAX_TOP_LOGPROBS:
        raise ApiError(400, f"logprobs is {shown(value)}; it must be an integer from 0 to "
                            f"{MAX_TOP_LOGPROBS} (alternatives per token)", param="logprobs")
    return value


def chat_logprobs(body: dict) -> int | None:
    """Chat's `logprobs: true` and `top_logprobs` (0..20, only with logprobs)."""
    on = flag(body, "logprobs")
    top = body.get("top_logprobs")
    if top is None:
        return 0 if on else None
    if not is_int(top) or not 0 <= top <= MAX_TOP_LOGPROBS:
        raise ApiError(400, f"top_logprobs is {shown(top)}; it must be an integer from 0 to "
                            f"{MAX_TOP_LOGPROBS}", param="top_logprobs")
    if not on:
        raise ApiError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
    return top


def sampling_of(body: dict, defaults: dict | None = None) -> Sampling:
    """The body's sampling settings as one Sampling value; a setting the body leaves out is the
    model's `defaults` (generation_config.json's), else OpenAI's (temperature 1, top_p 1, no
    penalties). top_k 0 or -1 keeps all tokens."""
    given = {name: body.get(name) for name in SAMPLING_FIELDS}
    if given["top_k"] == -1 and is_int(given["top_k"]):
        given["top_k"] = 0                                   # vLLM's "all tokens"
    # whole numbers only (keep_top_k cannot take 2.0; numpy's generator, a seed below 0)
    for name in ("top_k", "seed"):
        value = given[name]
        if value is not None and not (is_int(value) and value >= 0):
            raise ApiError(400, f"{name} is {shown(value)}; it must be an integer >= 0",
                           param=name)
    try:
        return sampling_with_defaults({"temperature": 1.0, **(defaults or {})}, **given)
    except InputError as e:                                  # "<name> is <value>; ..."
        raise ApiError(400, str(e), param=next(
            (n for n in given if str(e).startswith(n + " ")), None)) from None


def stop_strings(body: dict) -> tuple[str, ...]:
    """`stop`: a string, or a list of up to 4 non-empty strings."""
    stop = body.get("stop")
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not (isinstance(stops, list) and len(stops) <= MAX_STOP_STRINGS
            and all(isinstance(s, str) and s for s in stops)):
        raise ApiError(400, f"stop must be a non-empty string or a list of up to "
                            f"{MAX_STOP_STRINGS} of them", param="stop")
    return tuple(stops)


def flag(body: dict, name: str, inside: str = "") -> bool:
    value = body.get(name)
    if value is not None and not isinstance(value, bool):
        raise ApiError(400, f"{inside}{name} must be true or false", param=inside + name)
    return bool(value)


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def shown(value) -> str:
    """A value from the body as JSON, cut short for an error message."""
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def completion_prompt_ids(body: dict, tokenizer, vocab_size: int) -> list[int]:
    """`prompt`: a string or a list of token ids (or a list holding one of those)."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str):
        ids = tokenizer.encode(prompt)
    elif isinstance(prompt, list) and all(is_int(i) for i in prompt):
        ids = prompt
        bad = [i for i in ids if not 0 <= i < vocab_size]
        if bad:
            raise ApiError(400, f"token id {bad[0]} is outside the vocabulary "
                                f"(0..{vocab_size - 1})", param="prompt")
    elif isinstance(prompt, list) and all(isinstance(p, (str, list)) for p in prompt):
        raise ApiError(400, f"{len(prompt)} prompts in one request; this server takes one",
                       param="prompt")
    else:
        raise ApiError(400, "prompt must be a string or a list of token ids", param="prompt")
    if not ids:
        raise ApiError(400, "the prompt is empty", param="prompt")
    return ids


def chat_messages(body: dict) -> list[dict]:
    """`messages` as [{"role", "content": str}]: roles system (or developer), user and
    assistant; content a string or a list of text parts (joined by newlines)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list", param="messages")
    plain = []
    for i, m in enumerate(messages):
        role = m.get("role") if isinstance(m, dict) else None
        role = "system" if role == "developer" else role
        if role not in CHAT_ROLES:
            raise ApiError(400, f"messages[{i}]: role {shown(role)} is not one of "
                                f"{', '.join(CHAT_ROLES)}", param=f"messages[{i}].role")
        content = m.get("content")
        if isinstance(content, list) and all(
                isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                for p in content):
            content = "\n".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise ApiError(400, f"messages[{i}]: content must be a string or a list of "
                                f"{{\"type\": \"text\"}} parts", param=f"messages[{i}].content")
        plain.append({"role": role, "content": content})
    return plain
