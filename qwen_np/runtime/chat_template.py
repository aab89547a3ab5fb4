"""Rendering a model's chat template (Jinja) the way transformers' apply_chat_template does.

A chat template turns messages into the prompt text. Qwen2.5's, for one user turn:

    {{ messages }} = [{"role": "user", "content": "Hi"}]
        ->  <|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful
            assistant.<|im_end|>\\n<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n

The text is then encoded whole (special-token strings in it become their single ids). For the
prompt to be byte-identical to transformers', the environment must be the one transformers
builds (transformers/utils/chat_template_utils.py, `_cached_compile_jinja_template` and
`render_jinja_template`; read, not copied):

- jinja2's ImmutableSandboxedEnvironment (a template is untrusted code: it cannot reach
  attributes starting with "_", call unsafe methods, or change lists and dicts in place), with
  trim_blocks, lstrip_blocks, the loop-controls extension ({% break %}, {% continue %}) and a
  {% generation %} tag that only renders its body (transformers uses it to mark the
  assistant's tokens);
- `tojson` is json.dumps(x, ensure_ascii=False, indent=None, separators=None,
  sort_keys=False) with those arguments open to the template: jinja2's own tojson escapes
  < > & ' as \\u003c ..., which is other bytes;
- globals raise_exception(message) (a TemplateError), strftime_now(format) (the local time),
  `dict` (a plain dict maker) and `namespace` (refusing names that start with "_");
- the variables: messages, tools, documents, add_generation_prompt, the tokenizer's special
  tokens (bos_token, eos_token, ...) and any extra keyword (enable_thinking, ...), extra
  keywords winning over special tokens;
- each message's keys whose value is None are dropped first (an OpenAI client sends
  "tool_calls": null), and a message's reasoning, under any of reasoning_content, thinking or
  reasoning, is given under reasoning_content and thinking both.

Beyond transformers: the output is capped (MAX_PROMPT_CHARS), and so are the time a render
takes (MAX_RENDER_SECONDS) and strings a template builds by repetition or by a filter's width, so a malicious template cannot exhaust memory, and so is the template's
own length (MAX_TEMPLATE_CHARS), so that compiling it cannot take minutes.
"""

from __future__ import annotations

import json
import operator
import sys
import time
from contextlib import contextmanager
from datetime import datetime

from qwen_np.errors import InputError

MAX_PROMPT_CHARS = 2 << 20            # beyond any context (a token is 3-4 characters); refused past it
# jinja2 and Python compile a template at about 10 us a character (measured), so a template of
# 1 MiB takes 10 s; published ones are a few kB. Whatever file or metadata it came from.
MAX_TEMPLATE_CHARS = 256 << 10
MAX_REPEATED_CHARS = 1 << 20          # "x" * n and [..] * n in a template
MAX_RENDER_SECONDS = 2.0              # published templates render in milliseconds


class ChatTemplateError(InputError):
    """A chat template that does not compile, raises, or breaks the sandbox's rules."""


def compile_chat_template(text: str, where: str):
    """The jinja2 Template of `text`, in transformers' environment; ChatTemplateError naming
    `where` (the file) if it does not parse."""
    import jinja2
    if len(text) > MAX_TEMPLATE_CHARS:
        raise ChatTemplateError(f"{where}: chat template of {len(text)} characters; at most "
                                f"{MAX_TEMPLATE_CHARS} are compiled")
    try:
        return template_environment().from_string(text)
    except jinja2.TemplateError as e:
        raise ChatTemplateError(f"{where}: chat template does not compile "
                                f"({one_line(e)})") from None
    # blocks or expressions nested past what jinja2's recursive parser, or Python's compiler
    # of the code jinja2 writes, can take (20 nested loops, 100 indentation levels; its
    # parser's stack overflow is a MemoryError)
    except (RecursionError, SyntaxError, MemoryError) as e:
        raise ChatTemplateError(f"{where}: chat template does not compile: nested too deep "
                                f"({type(e).__name__}: {one_line(e)})") from None


def render_chat_template(template, messages: list[dict], where: str, *, tools=None,
                         documents=None, add_generation_prompt: bool = False,
                         special_tokens: dict | None = None, **kwargs) -> str:
    """The prompt text: `template` (from compile_chat_template) rendered over the messages,
    as apply_chat_template(messages, tools=..., documents=..., tokenize=False, **kwargs)
    renders it. A template that raises is a ChatTemplateError naming `where`."""
    import jinja2
    variables = {**(special_tokens or {}), **plain_data(kwargs)}
    variables.update(messages=[with_reasoning_aliases(m) for m in plain_messages(messages)],
                     tools=plain_data(tools), documents=plain_data(documents),
                     add_generation_prompt=add_generation_prompt)
    pieces, length = [], 0
    try:
        with time_limit(MAX_RENDER_SECONDS, where):
            for piece in template.generate(**variables):
                length += len(piece)
                if length > MAX_PROMPT_CHARS:
                    raise ChatTemplateError(f"{where}: the chat template wrote more than "
                                            f"{MAX_PROMPT_CHARS} characters")
                pieces.append(piece)
    except ChatTemplateError:
        raise
    except jinja2.TemplateError as e:     # raise_exception(...) included
        raise ChatTemplateError(f"{where}: chat template error: {one_line(e)}") from None
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, ZeroDivisionError,
            OverflowError, RecursionError, MemoryError,
            AssertionError) as e:     # jinja2's truncate filter asserts on its arguments
        raise ChatTemplateError(f"{where}: chat template failed on these messages "
                                f"({type(e).__name__}: {one_line(e)})") from None
    return "".join(pieces)


@contextmanager
def time_limit(seconds: float, where: str):
    """Stop a template that runs past `seconds` (loops nested over range(100000), say): a
    trace function, in this thread only, checks the clock at each line the template's own
    code runs (jinja2 compiles a template to Python in frames named "<template>"; the
    functions it calls are not traced, so a normal render costs little more), and raises
    ChatTemplateError there once the time is up."""
    deadline = time.monotonic() + seconds

    def on_line(frame, event, arg):
        if time.monotonic() > deadline:
            raise ChatTemplateError(f"{where}: the chat template ran longer than {seconds} s")
        return on_line

    def on_call(frame, event, arg):
        return on_line if frame.f_code.co_filename == "<template>" else None
    previous = sys.gettrace()
    sys.settrace(on_call)
    try:
        yield
    finally:
        sys.settrace(previous)


def template_environment():
    """transformers' environment (see the module docstring), built for each compile."""
    import jinja2
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class BoundedSandbox(ImmutableSandboxedEnvironment):
        """The immutable sandbox, with `*` refused where it would build a huge string or list."""
        intercepted_binops = frozenset(["*", "**"])

        def call_binop(self, context, operator_name, left, right):
            if operator_name == "**":
                if isinstance(right, int) and abs(right) > 64:
                    raise jinja2.exceptions.SecurityError("exponent too large in a chat template")
                return operator.pow(left, right)
            sized = [x for x in (left, right) if isinstance(x, (str, list, tuple))]
            count = right if sized and sized[0] is left else left
            if sized and isinstance(count, int) and len(sized[0]) * count > MAX_REPEATED_CHARS:
                raise jinja2.exceptions.SecurityError("a repetition too long in a chat template")
            return operator.mul(left, right)

    class GenerationTag(Extension):
        """{% generation %}...{% endgeneration %}: its body, as it is."""
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body) \
                .set_lineno(lineno)

        def _body(self, caller):
            return caller()

    class Namespace(jinja2.utils.Namespace):
        """jinja2's namespace(), refusing attribute names that start with "_"."""
        def __init__(*args, **kwargs):
            self, attrs = args[0], dict(*args[1:], **kwargs)
            for name in attrs:
                refuse_private_name(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            refuse_private_name(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

    env = BoundedSandbox(trim_blocks=True, lstrip_blocks=True,
                         extensions=[GenerationTag, loopcontrols])
    env.filters["tojson"] = template_tojson
    for name in SIZED_FILTERS:          # a width or count that would build a huge string
        env.filters[name] = bounded(env.filters[name], name)
    env.globals["lipsum"] = bounded(env.globals["lipsum"], "lipsum", limit=1000)
    env.globals.update(raise_exception=template_raise_exception, strftime_now=strftime_now,
                       dict=plain_dict, namespace=Namespace)
    return env


SIZED_FILTERS = ("center", "indent", "wordwrap", "truncate", "batch", "slice", "format")


def bounded(function, name: str, limit: int = MAX_REPEATED_CHARS):
    """`function` refusing an integer argument above `limit` ('x' | center(10**9) would
    build a gigabyte in one call, lipsum(10**6) take minutes, where the time limit, which
    sees only the template's own lines, cannot stop them)."""
    def call(*args, **kwargs):
        import jinja2
        for value in list(args[1:] if name != "lipsum" else args) + list(kwargs.values()):
            if isinstance(value, int) and not isinstance(value, bool) and abs(value) > limit:
                raise jinja2.exceptions.SecurityError(f"{name}({value}) is too large in a "
                                                      f"chat template")
        return function(*args, **kwargs)
    for attribute in ("jinja_pass_arg",):          # pass_context / pass_environment marks
        if hasattr(function, attribute):
            setattr(call, attribute, getattr(function, attribute))
    return call


def template_tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def template_raise_exception(message):
    import jinja2
    raise jinja2.exceptions.TemplateError(message)


def strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


def plain_dict(*args, **kwargs) -> dict:
    return dict(*args, **kwargs)


def refuse_private_name(name) -> None:
    import jinja2
    if isinstance(name, str) and name.startswith("_"):
        raise jinja2.exceptions.SecurityError(
            f"a chat template cannot set {name!r} on a namespace (names may not start with _)")


def plain_messages(messages: list[dict]) -> list[dict]:
    """The messages as plain JSON data, each without its keys whose value is None."""
    return [{k: v for k, v in plain_data(m).items() if v is not None} for m in messages]


REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


def with_reasoning_aliases(message: dict) -> dict:
    """A message's reasoning (the first of REASONING_FIELDS it has) under reasoning_content
    and thinking both: Qwen3's template reads reasoning_content, gpt-oss's reads thinking."""
    reasoning = next((message[k] for k in REASONING_FIELDS if message.get(k) is not None), None)
    if reasoning is None:
        return message
    return {"thinking": reasoning, **message, "reasoning_content": reasoning}


def plain_data(value):
    """`value` rebuilt from JSON's types only (str, int, float, bool, None, list, dict;
    tuples kept), so that a template sees no object with methods of its own."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, dict):
        return {plain_data(k): plain_data(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain_data(v) for v in value]
    if isinstance(value, tuple):
        return tuple(plain_data(v) for v in value)
    return f"<{type(value).__name__}>"


def one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= 200 else text[:197] + "..."
