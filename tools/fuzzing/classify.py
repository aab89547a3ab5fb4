"""Classification: a child's report, exit status, stdout and stderr turned into one of the
outcomes, with where it happened (the innermost frame outside the fuzzer)."""

from __future__ import annotations

import json
import os
import re
import signal

from fuzzing.child import Result, Task
from fuzzing.locations import REPO, is_fuzzer_file


OUTCOMES = ("clean", "load", "traceback", "hang", "memory", "crash", "leak")
FAILURES = ("traceback", "hang", "memory", "crash", "leak")


def where_of(frames) -> str:
    """The innermost frame in this project's code (else the innermost frame), as file:line."""
    if not frames:
        return ""
    own = [f for f in frames if os.path.abspath(f[0]).startswith(REPO + os.sep)
           and not is_fuzzer_file(f[0])]
    return show_frame((own or frames)[-1])


def show_frame(frame) -> str:
    filename, line, name = frame
    rel = os.path.relpath(filename, REPO) if filename.startswith(REPO) else os.path.basename(filename)
    return f"{rel}:{line} ({name})"


def frames_from_dump(text: str) -> list:
    """faulthandler's dump (innermost first) of the main thread, as (file, line, function)."""
    blocks = re.split(r"\n(?=(?:Current thread|Thread) 0x)", text)
    main = [b for b in blocks if "dump_traceback_later" not in b and "File " in b]
    frames = re.findall(r'File "([^"]+)", line (\d+) in (\S+)', main[-1] if main else "")
    return [(f, int(n), fn) for f, n, fn in reversed(frames)]


def classify(task: Task, report: dict | None, status: int, timed_out: bool, stdout: str,
             stderr: str, marker: str) -> Result:
    if marker and (marker in stdout or marker in stderr or marker in json.dumps(report or {})):
        text = stdout + stderr + json.dumps(report or {})
        line = next((ln for ln in text.splitlines() if marker in ln), "")
        error = (report or {}).get("error") or {}
        return Result(task, "leak", "marker in output", where_of(error.get("frames", [])),
                      line.strip()[:200])
    if timed_out:
        return Result(task, "hang", "time limit", where_of(frames_from_dump(stderr)))
    if report is None:
        frames = frames_from_dump(stderr)
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            try:
                name = signal.Signals(sig).name
            except ValueError:
                name = f"signal {sig}"
            if sig == signal.SIGKILL or "memory allocation of" in stderr:
                return Result(task, "memory", f"killed by {name}", where_of(frames),
                              last_line(stderr))
            return Result(task, "crash", f"killed by {name}", where_of(frames), last_line(stderr))
        code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else status
        return Result(task, "crash", f"exit status {code} without a report", where_of(frames),
                      last_line(stderr))
    error = report["error"]
    if error is None:
        result = report["result"] or {}
        if "rc" in result:
            return classify_cli_exit(task, result["rc"], stderr)
        return Result(task, "load")
    result = classify_error(task, error)
    result.frames = [show_frame(f) for f in error["frames"][-5:]]
    return result


def classify_error(task: Task, error: dict) -> Result:
    where = where_of(error["frames"])
    message = error["message"]
    if error["memory"]:
        return Result(task, "memory", error["type"], where, first_line(message))
    if error["qwen_np"]:
        lines = message.splitlines()
        if len(lines) > 1:
            return Result(task, "traceback", error["type"], where, first_line(message),
                          f"message of {len(lines)} lines")
        if task.path not in message:
            return Result(task, "traceback", error["type"], where, message[:300],
                          "message does not name the input")
        return Result(task, "clean", error["type"], where, message[:300])
    return Result(task, "traceback", error["type"], where, first_line(message))


def classify_cli_exit(task: Task, rc, stderr: str) -> Result:
    lines = stderr.strip().splitlines()
    if rc == 0:
        return Result(task, "load")
    if rc == 1 and len(lines) == 1 and lines[0].startswith("qwen-np: error: "):
        if task.path in lines[0]:
            return Result(task, "clean", "exit 1", "", lines[0][:300])
        return Result(task, "traceback", "exit 1", "", lines[0][:300],
                      "message does not name the input")
    # what else reached stderr: the first warning names where it came from
    warning = re.search(r"^(/\S+):(\d+): (\w+Warning)", stderr, re.M)
    where = where_of([(warning[1], int(warning[2]), warning[3])]) if warning else ""
    return Result(task, "traceback", f"exit {rc}", where, last_line(stderr),
                  f"stderr of {len(lines)} lines")


def first_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[0][:300]


def last_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[-1][:300]
