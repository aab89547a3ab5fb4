"""Chat template mutations: the Jinja text wherever a seed keeps it (chat_template.jinja,
the chat_template string of tokenizer_config.json or chat_template.json, a GGUF's
tokenizer.chat_template) mutated as Jinja: fragments spliced in (unclosed blocks, attributes
the sandbox forbids, raise_exception, big loops and repetitions, unknown filters and tests,
include/import/extends of files, the planted sentinel among them), tags deleted, repeated or
swapped, the text nested deep in blocks or expressions, truncated, its bytes mutated, or the
whole of it replaced. The renderer has no loader, so no fragment may read a file: one that
did would print the sentinel's marker, a leak."""

from __future__ import annotations

import json
import re
import struct

from fuzzing.mutate_bytes import mutate_bytes
from fuzzing.mutate_gguf import gguf_string, gguf_with_header, walk_gguf
from fuzzing.mutate_json import dump_json

GGUF_TEMPLATE_KEY = "tokenizer.chat_template"

# SENTINEL is replaced by the planted file's absolute path, SENTINEL_REL by its path
# relative to the model folder
FRAGMENTS = [
    # blocks opened and never closed, closed and never opened, half a tag
    "{% for x in messages %}", "{% if true %}", "{% endfor %}", "{% endif %}", "{% else %}",
    "{% macro m() %}", "{% set %}", "{% raw %}", "{%", "{{", "}}", "%}", "{#", "{% filter upper %}",
    "{% call m() %}", "{% do 1 %}", "{% trans %}x{% endtrans %}", "{% generation %}x",
    "{% generation %}{{ 1 }}{% endgeneration %}", "{% break %}", "{% continue %}",
    "{% for x in messages %}{% break %}{% endfor %}{{ loop }}",
    # what the immutable sandbox refuses: private attributes, methods that change things
    "{{ x.__class__ }}", "{{ messages.__class__.__mro__ }}", "{{ ''.__class__.__subclasses__() }}",
    "{{ namespace.__init__.__globals__ }}", "{{ raise_exception.__globals__['os'] }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{{ self._TemplateReference__context }}",
    "{{ messages.append(1) }}", "{{ messages[0].update({'a': 1}) }}", "{{ messages.pop() }}",
    "{{ '{0.__class__}'.format(messages) }}", "{{ '%s' % messages }}", "{{ ''.format.__self__ }}",
    "{% set ns = namespace(_x=1) %}", "{% set ns = namespace() %}{% set ns._y = 1 %}",
    "{{ messages | map(attribute='__class__') | list }}", "{{ lipsum.__globals__ }}",
    "{{ strftime_now.__globals__ }}", "{{ dict.__call__ }}", "{{ tools.__len__() }}",
    # raise_exception, as templates call it to refuse a conversation
    "{{ raise_exception('fuzz') }}", "{{ raise_exception() }}", "{{ raise_exception(messages) }}",
    # big loops, ranges, repetitions, numbers
    "{% for i in range(100000) %}{{ i }}{% endfor %}", "{{ range(10**30) | list }}",
    "{{ range(100000) | list | length }}", "{{ range(-1) }}", "{{ range(0, 10, 0) }}",
    "{{ 'a' * 10**9 }}", "{{ 'a' * 1000000 }}", "{{ [messages] * 10**8 }}", "{{ 10 ** 10 ** 10 }}",
    "{{ 2 ** -1074 }}", "{{ 1 / 0 }}", "{{ 1 // 0 }}", "{{ 1 % 0 }}", "{{ 1e308 * 10 }}",
    "{{ ('9' * 5000) | int }}", "{{ ('1' * 400) | float }}",
    "{{ 10 ** 64 | filesizeformat }}",
    "{{ '<|im_start|>' * 1000 }}", "{% for m in messages * 1000 %}{{ m.content }}{% endfor %}",
    "{{ 'x' | center(1000) }}", "{{ range(10) | batch(3) | list }}",
    # filters and tests: unknown ones, known ones given what they cannot take
    "{{ x | no_such_filter }}", "{{ x is no_such_test }}", "{{ no_such_function() }}",
    "{{ messages | tojson(indent=-5) }}", "{{ messages | tojson(sort_keys=true) }}",
    "{{ tools | tojson(separators=1) }}", "{{ messages | tojson(x=1) }}",
    "{{ 'x' | truncate(-1) }}",
    "{{ 'x' | wordwrap(0) }}", "{{ 'x' | int(base=99) }}", "{{ [1, 'a'] | sort }}",
    "{{ messages | selectattr('role', 'nosuchtest') | list }}", "{{ messages | groupby('x') }}",
    "{{ '%d' | format('x') }}", "{{ messages | sum }}", "{{ messages | max }}",
    "{{ strftime_now(1) }}", "{{ strftime_now('%Q%') }}", "{{ dict(a=1, **messages) }}",
    "{{ messages | attr('role') }}", "{{ 1 | first }}", "{{ none | length }}",
    "{{ x | round(-10**9) }}",
    "{{ {1: 2, 'a': 3} | dictsort }}", "{{ messages | unique(attribute='x') | list }}",
    # files: there is no loader, so none of these may read one
    "{% include 'x' %}", "{% include 'SENTINEL' %}", "{% include 'SENTINEL_REL' %}",
    "{% include messages %}", "{% include ['/etc/passwd', 'SENTINEL'] ignore missing %}",
    "{% import 'SENTINEL' as m %}", "{% from 'SENTINEL_REL' import x %}",
    "{% extends 'SENTINEL' %}",
    "{% extends messages %}",
    # recursion
    "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
    "{% for x in [1] recursive %}{{ loop([1]) }}{% endfor %}",
    # messages, tools and variables used wrongly
    "{{ messages[10**20] }}", "{{ messages[-1].content[::-1] }}",
    "{{ messages[0]['content'][10**9:] }}",
    "{{ tools[0].function.parameters.properties.x.y.z }}", "{{ tools[5].x }}",
    "{{ bos_token + eos_token }}", "{% set enable_thinking = none %}", "{% set messages = 1 %}",
    "{% set tools = 'x' %}", "{% set loop = 1 %}", "{{ messages[0].content.split() }}",
    "{{ lipsum(2) }}", "{{ cycler(1, 2).next() }}", "{{ joiner()() }}",
    # text that is not Jinja: special tokens, NUL, bidi controls, a byte-order mark
    "<|im_end|>", "<|endoftext|>" * 100, "\x00", "\u202e", "\ufeff", "\r\n", "{{ '\\x00' }}",
]

# Refused at once by runtime/chat_template.py's bounds (a filter's width or count, lipsum's
# size, the output's length): drawn like the rest.
FRAGMENTS += [
    "{{ lipsum(10**6) }}", "{{ lipsum(1, max=10**9) }}",
    "{{ 'x' | center(10**9) }}", "{{ 'x\nx' | indent(10**9) }}",
    "{{ range(10) | slice(10**9) | list }}",
    "{% for i in range(100000) %}{{ 'xy z' * 20 }}{% endfor %}",   # past the output's cap
]

# Stopped by the render's time limit (MAX_RENDER_SECONDS, 2 s): bounded, but not drawn, so
# that the fixed-seed run keeps its time; tests/test_chat_template.py runs each once.
SLOW_FRAGMENTS = [
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "{% for a in 'x' * 1000000 %}{% for b in 'x' * 1000000 %}{% endfor %}{% endfor %}",
    "{% set ns = namespace(a='') %}{% for i in range(100000) %}{% set ns.a = ns.a ~ 'x' * 100 %}"
    "{% endfor %}",
]

# (opening, closing) pairs nested `depth` deep around the text or one expression
NESTINGS = [("{% if true %}", "{% endif %}"), ("{% for _ in [1] %}", "{% endfor %}"),
            ("{% macro m() %}", "{% endmacro %}"), ("{% filter upper %}", "{% endfilter %}")]
EXPRESSION_NESTINGS = [("(", ")"), ("[", "]"), ("{'a': ", "}"), ("-", ""), ("not ", ""),
                       ("1 + ", ""), ("x.", ""), ("f(", ")")]
DEPTHS = [5, 19, 21, 100, 1000, 10_000, 100_000]

TAG = re.compile(rb"\{%.*?%\}|\{\{.*?\}\}|\{#.*?#\}", re.S)

OTHER_TEMPLATES = ["", " ", "{{ messages }}", "{{ tools }}", "{% for m in messages %}{{ m }}",
                   "{#" + "x" * (1 << 20) + "#}", "{{ x }}" * 100_000]


# the mutators (one_input.MUTATORS names them) and the operation each is
TEMPLATE_MUTATORS = {"template_splice": "splice", "template_tags": "tags",
                     "template_nest": "nest", "template_cut": "truncate",
                     "template_bytes": "bytes", "template_whole": "whole"}


def mutate_template_text(rng, op: str, data: bytes, ctx, others=()) -> tuple[bytes, str]:
    """One mutation of a template's text (as bytes: byte mutations may leave it not UTF-8).
    `others`: whole templates it may be replaced by (another model's)."""
    if op == "splice":
        fragment = rng.choice(FRAGMENTS).replace("SENTINEL_REL", ctx.sentinel_rel) \
            .replace("SENTINEL", ctx.sentinel).encode("utf-8")
        # the start or the end (rendered whatever the messages), after a tag (rendered when
        # its branch is taken), or anywhere (inside a tag, a string, a comment)
        ends = [m.end() for m in TAG.finditer(data)] or [0]
        p = rng.choice([0, len(data), rng.choice(ends), rng.choice(ends), rng.choice(ends),
                        rng.randrange(len(data) + 1)])
        return data[:p] + fragment + data[p:], f"{fragment[:60]!r} spliced in at {p}"
    if op == "tags":
        tags = list(TAG.finditer(data))
        if not tags:
            return mutate_bytes(rng, data)
        a, b = rng.choice(tags), rng.choice(tags)
        how = rng.choice(["deleted", "repeated", "swapped"])
        if how == "deleted":
            return data[:a.start()] + data[a.end():], f"tag {a[0][:60]!r} at {a.start()} deleted"
        if how == "repeated":
            return data[:a.end()] + a[0] + data[a.end():], \
                f"tag {a[0][:60]!r} at {a.start()} repeated"
        a, b = sorted((a, b), key=lambda m: m.start())
        if a.start() == b.start():
            return data, "a tag swapped with itself"
        return data[:a.start()] + b[0] + data[a.end():b.start()] + a[0] + data[b.end():], \
            f"tags at {a.start()} and {b.start()} swapped"
    if op == "nest":
        depth = rng.choice(DEPTHS)
        if rng.random() < 0.5:
            opening, closing = rng.choice(NESTINGS)
            return opening.encode() * depth + data + closing.encode() * depth, \
                f"nested {depth} deep in {opening}"
        opening, closing = rng.choice(EXPRESSION_NESTINGS)
        expr = "{{ " + opening * depth + "1" + closing * depth + " }}"
        return data + expr.encode(), f"expression nested {depth} deep in {opening!r} appended"
    if op == "truncate":
        n = rng.randrange(len(data) + 1)
        return data[:n], f"truncated to {n} of {len(data)} bytes"
    if op == "bytes":
        return mutate_bytes(rng, data)
    new = rng.choice([*OTHER_TEMPLATES, *others])
    return new.encode(), f"replaced by {new[:40]!r} ({len(new)} characters)"


def mutate_chat_template(rng, mutator: str, file_path: str, target: str, ctx,
                         others=()) -> str:
    """The template at `target` mutated in place: "" a GGUF's metadata, "FILE#KEY" a JSON
    file's string (or one of its named templates), else a file of Jinja; the description."""
    op = TEMPLATE_MUTATORS[mutator]
    if target == "":
        return mutate_gguf_template(rng, op, file_path, ctx, others)
    name, _, key = target.partition("#")
    if not key:
        with open(file_path, "rb") as f:
            data, desc = mutate_template_text(rng, op, f.read(), ctx, others)
        with open(file_path, "wb") as f:
            f.write(data)
        return desc
    with open(file_path, encoding="utf-8") as f:
        whole = json.load(f)
    value = whole[key]
    if isinstance(value, list):            # [{"name": ..., "template": ...}, ...]
        entry = rng.choice(value)
        if rng.random() < 0.2:
            old, entry["name"] = entry["name"], rng.choice(["default", "tool_use", "", "x"])
            desc = f"template {old!r} renamed {entry['name']!r}"
        else:
            entry["template"], desc = mutated_text(rng, op, entry["template"], ctx, others)
            desc = f"template {entry['name']!r}: {desc}"
    else:
        whole[key], desc = mutated_text(rng, op, value, ctx, others)
    with open(file_path, "w", encoding="utf-8") as f:
        f.write(dump_json(whole))
    return f"{key}: {desc}"


def mutated_text(rng, op: str, text: str, ctx, others) -> tuple[str, str]:
    """For a JSON string: bytes that are not UTF-8 become U+FFFD (JSON text is Unicode)."""
    data, desc = mutate_template_text(rng, op, text.encode("utf-8"), ctx, others)
    return data.decode("utf-8", "replace"), desc


def mutate_gguf_template(rng, op: str, path: str, ctx, others) -> str:
    """tokenizer.chat_template's string replaced by a mutated one (its bytes as they are,
    UTF-8 or not), or a mutated copy added as the named template "tool_use", which the child
    renders (it passes tools)."""
    with open(path, "rb") as f:
        data = f.read()
    layout = walk_gguf(data)
    start, end = next((s, e) for s, e, k in layout.kvs if k == GGUF_TEMPLATE_KEY)
    head = data[:layout.header_end]
    key_and_type = len(gguf_string(GGUF_TEMPLATE_KEY)) + 4
    old = head[start + key_and_type + 8:end]
    new, desc = mutate_template_text(rng, op, old, ctx, others)
    value = struct.pack("<I", 8) + struct.pack("<Q", len(new)) + new
    if rng.random() < 0.2:
        kv = gguf_string(GGUF_TEMPLATE_KEY + ".tool_use") + value
        data = gguf_with_header(data, layout, head[:end] + kv + head[end:], kv_delta=1)
        desc = f"{GGUF_TEMPLATE_KEY}.tool_use added: {desc}"
    else:
        data = gguf_with_header(data, layout, head[:start + key_and_type - 4] + value + head[end:])
    with open(path, "wb") as f:
        f.write(data)
    return desc
