"""Running one input in a forked child: what the child does with the model (the API or the
CLI), its limits, its report to the parent through a pipe, its stdout and stderr files."""

from __future__ import annotations

import errno
import faulthandler
import json
import os
import resource
import signal
import sys
import traceback
from dataclasses import dataclass, field

from fuzzing.one_input import Input


PROMPT = "def f(x): return x"
CLI_ARGS = ["-p", "hi", "-n", "2"]
CHAT = [{"role": "system", "content": "s"}, {"role": "user", "content": PROMPT}]
TOOLS = [{"type": "function", "function": {
    "name": "get_time", "description": "The time now in a time zone.",
    "parameters": {"type": "object", "properties": {"tz": {"type": "string"}},
                   "required": ["tz"]}}}]


def load_and_generate(path: str) -> dict:
    """What a user does with a model: load, encode, render a chat prompt, generate, decode.
    load_tokenizer (the tokenizer alone) runs after load, which builds its tokenizer only
    when it is first used, so that a mutated tokenizer file reaches load_tokenizer first;
    its ids must be the model tokenizer's. The chat prompt is the model's chat template
    rendered with a system and a user turn, a tool and enable_thinking=False, as the server
    renders a request; a model without a template gets ChatML in code, which cannot be
    given tools, so it gets none. The prompt's first tokens, decoded, are in the report: a
    template that read a file (the planted one) would show its marker there, a leak."""
    import qwen_np
    m = qwen_np.load(path, backend="numpy")
    has_tokenizer = not os.path.isdir(path) or any(
        os.path.lexists(os.path.join(path, name)) for name in ("tokenizer.json", "qwen.tiktoken"))
    ids, chat = [1, 2, 3], []
    if has_tokenizer:
        alone = qwen_np.load_tokenizer(path).encode(PROMPT)
        ids = m.tokenizer.encode(PROMPT)
        if alone != ids:
            raise AssertionError(f"load_tokenizer encodes {alone}, load(...).tokenizer {ids}")
        tools = TOOLS if m.chat_format.templates is not None else None
        chat = m.chat_prompt_ids(CHAT, tools=tools, enable_thinking=False)
    new = m.generate(ids[:8], max_new_tokens=2)
    text = m.tokenizer.decode(new) if has_tokenizer else ""
    chat_text = m.tokenizer.decode(chat[:1 << 16]) if chat else ""
    return {"new": [int(i) for i in new], "text": text, "chat_prompt_tokens": len(chat),
            "chat_prompt": chat_text}


def run_cli(path: str) -> dict:
    """`qwen-np run -m PATH -p hi -n 2`, its exit status (stderr is the child's stderr file)."""
    from qwen_np.apps.cli import main
    try:
        rc = main(["run", "-m", path, *CLI_ARGS])
    except SystemExit as e:    # argparse exits; the status is what a shell would see
        rc = e.code if isinstance(e.code, int) else 1
    sys.stdout.flush()
    sys.stderr.flush()
    return {"rc": rc}


TARGETS = {"api": load_and_generate, "cli": run_cli}


def is_qwen_np_error(e: BaseException) -> bool:
    return any(c.__name__ == "QwenNpError" and c.__module__.startswith("qwen_np")
               for c in type(e).__mro__)


def execute(target, path: str) -> dict:
    """Run target(path); the report the parent classifies (plain JSON-able values)."""
    try:
        return {"result": target(path), "error": None}
    except BaseException as e:  # noqa: B036 - SystemExit and KeyboardInterrupt are outcomes too
        frames = traceback.extract_tb(e.__traceback__)
        return {"result": None, "error": {
            "type": type(e).__qualname__ if type(e).__module__ == "builtins"
            else f"{type(e).__module__}.{type(e).__qualname__}",
            "message": safe_str(e),
            "qwen_np": is_qwen_np_error(e),
            "memory": isinstance(e, MemoryError) or
            (isinstance(e, OSError) and e.errno == errno.ENOMEM),
            "frames": [(f.filename, f.lineno, f.name) for f in frames[-12:]],
            "traceback": "".join(traceback.format_exception(type(e), e, e.__traceback__)),
        }}


def safe_str(e: BaseException) -> str:
    try:
        return str(e)
    except BaseException as inner:  # noqa: B036
        return f"<str() raised {type(inner).__name__}>"


def limit_child(memory_limit: int, time_limit: float, err_fd: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    # where a crash or a hang happened, written to the stderr file for the parent to read
    faulthandler.enable(file=err_fd)
    faulthandler.dump_traceback_later(max(time_limit * 0.9, time_limit - 2), file=err_fd)


@dataclass
class Task:
    index: int
    mode: str               # "api" or "cli", or a name for a planted target
    path: str               # the model path handed to the target
    dir: str                # where stdout.txt and stderr.txt go
    target: object          # path -> dict, run in the child
    input: Input | None = None


@dataclass
class Result:
    task: Task
    outcome: str
    kind: str = ""          # exception type, signal, ...
    where: str = ""         # file:line (function)
    message: str = ""
    why: str = ""           # what made a QwenNpError or an exit not clean
    frames: list = field(default_factory=list)   # the innermost few, as file:line (function)
    saved: str = ""


def start_child(task: Task, time_limit: float, memory_limit: int):
    """fork; the child runs task.target and writes its JSON report to a pipe. (pid, read fd)"""
    r, w = os.pipe()
    flush_all()
    pid = os.fork()
    if pid:
        os.close(w)
        return pid, r
    try:
        os.close(r)
        null = os.open(os.devnull, os.O_RDONLY)
        out = os.open(os.path.join(task.dir, "stdout.txt"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        err = os.open(os.path.join(task.dir, "stderr.txt"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(err, 2)
        # new writers on the new fds: the old sys.stdout need not write to fd 1 (under
        # pytest's capture it does not)
        sys.stdout = open(1, "w", encoding="utf-8", errors="backslashreplace", closefd=False)
        sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False)
        limit_child(memory_limit, time_limit, 2)
        report = execute(task.target, task.path)
        flush_all()
        data = json.dumps(report, default=repr).encode()
        while data:
            data = data[os.write(w, data[:65536]):]
    finally:
        os._exit(0)


def flush_all() -> None:
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass


def read_output(task: Task) -> tuple[str, str]:
    out = []
    for name in ("stdout.txt", "stderr.txt"):
        try:
            with open(os.path.join(task.dir, name), "rb") as f:
                out.append(f.read(1 << 20).decode("utf-8", "replace"))
        except OSError:
            out.append("")
    return out[0], out[1]
