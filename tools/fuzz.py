"""Mutation fuzzer over model files: small checkpoints, each mutated once with plain seeded
mutations, each loaded in a forked child the way a user would load it, each outcome classified.

    python tools/fuzz.py --seed 1 --count 3000 [--jobs 2] [--time-limit 20] [--memory-limit-gb 4]
                         [--out DIR] [--formats gguf,safetensors,index,config,...] [--cli-every 10]
    python tools/fuzz.py --replay DIR      # one saved input, in the foreground, full traceback

Seeds: the test fixtures (float single-file, bf16 sharded, GPTQ 4/8-bit, AWQ, a GPTQ folder
whose settings are in quantize_config.json as older AutoGPTQ wrote them), the float fixture
with a qwen.tiktoken (the original Qwen's tokenizer file, made from its tokenizer.json) in
place of its tokenizer.json, and tiny GGUF files (F32, F16, Q8_0, Q4_0; Qwen2 and Qwen3)
written at start-up by gguf-py. The published chat templates (tests/fixtures/chat_templates/)
are in each place a checkpoint keeps one: the Qwen2 GGUFs' tokenizer.chat_template is
Qwen2.5's, the Qwen3 GGUF's Qwen3's; one folder has a chat_template.jinja, one a
chat_template.json, two a tokenizer_config.json (a string; a named list). Input i of
--seed S is made by random.Random(f"S/i") alone, so the same seed and count give the same
inputs. Every file is written under one temporary
folder; next to each model (outside it) lies a file holding a random marker, which some
mutations point shard names and symlinks at.

Mutations, one per input: bytes of any file (bit flips, interesting bytes and 4/8-byte
integers, truncation, chunks inserted or deleted); JSON (any value replaced, keys deleted or
added, known keys given wrong types, nesting 1,000-100,000 deep, shard names pointing out of
the folder, tokenizer ids past the vocabulary); safetensors header entries and header length;
GGUF integer fields (found by walking the header) and metadata entries; qwen.tiktoken lines
(deleted, repeated, swapped, blank; ranks near, negative, huge or not numbers; tokens with bad
base64, empty, or new; extra fields; CR/CRLF endings; a line of 10^6 characters; an empty
file; ranks past the vocabulary); chat templates, wherever they are kept (Jinja fragments
spliced in: unclosed blocks, private attributes, raise_exception, big loops and repetitions,
unknown filters, include/import/extends of the planted file; tags deleted, repeated or
swapped; nesting 5-100,000 deep; truncation; bytes; the whole template replaced); file kinds
(FIFO, folder, empty file, symlinks out of the folder or to /dev/zero), the model path itself
too.

What a child does: m = qwen_np.load(path); qwen_np.load_tokenizer(path) and m.tokenizer
encode the same ids (ids [1, 2, 3] when the folder has no tokenizer file);
m.chat_prompt_ids([system, user], tools=[one tool], enable_thinking=False) (no tools for a
model without a template); m.generate(ids[:8], max_new_tokens=2); decode. With
--cli-every N, every Nth input also runs `qwen-np run -m PATH -p hi -n 2` in its own child.

Outcomes:
    clean      a QwenNpError on one line that names the input (the path, or a file inside it);
               for the CLI, exit status 1 and one stderr line `qwen-np: error: ...` naming it
    load       everything worked
    traceback  any other exception, or a QwenNpError on several lines or without the path
    hang       still running after --time-limit (where it was: faulthandler's dump)
    memory     MemoryError or ENOMEM under the --memory-limit-gb address-space limit, or
               killed for memory
    crash      died by a signal, or exited without reporting
    leak       the output (message, traceback, text, stdout, stderr) holds the marker
Every input that is not clean or load is saved under --out with replay.json and replay.sh.
The exit status is 0 only when there are none.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import resource
import shutil
import signal
import sys
import tempfile
import time

# run as a script, tools/ is sys.path[0] already; loaded by its path (tests/test_fuzz.py), it
# is not, and the fuzzing package beside this file must be importable all the same
HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

# the parts of the fuzzer; load_and_generate, copy_input, make_input and TIKTOKEN_SEED are not
# used here but are imported all the same: tests/test_fuzz.py reaches them as fuzz.<name>
from fuzzing.child import TARGETS, Task, execute, load_and_generate  # noqa: E402, F401
from fuzzing.classify import FAILURES, classify, where_of  # noqa: E402
from fuzzing.locations import REPO  # noqa: E402
from fuzzing.one_input import copy_input, make_input  # noqa: E402, F401
from fuzzing.run import Report, describe, input_tasks, run_tasks  # noqa: E402
from fuzzing.seeds import FORMATS, TIKTOKEN_SEED, build_seeds  # noqa: E402, F401


# --- the parent's set-up, replay, main ------------------------------------------------------

SINGLE_THREAD_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                     "NUMBA_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def import_libraries() -> None:
    """Once in the parent, so that each forked child starts with them loaded. One BLAS thread
    per child (there are --jobs children); must run before NumPy is first imported."""
    for k, v in SINGLE_THREAD_ENV.items():
        os.environ.setdefault(k, v)
    sys.path.insert(0, REPO)
    import jinja2.ext  # noqa: F401 - chat templates (imported where first used)
    import jinja2.sandbox  # noqa: F401
    import numpy  # noqa: F401
    import tokenizers  # noqa: F401
    import qwen_np.apps.cli  # noqa: F401
    from qwen_np.backends import get_backend
    get_backend("numpy")


class Tee:
    """A text stream that writes through and keeps a copy."""

    def __init__(self, stream):
        self.stream, self.parts = stream, []

    def write(self, text):
        self.parts.append(text)
        return self.stream.write(text)

    def flush(self):
        self.stream.flush()

    def kept(self) -> str:
        return "".join(self.parts)


class TimeLimit(BaseException):
    """replay's alarm: neither an OSError (as TimeoutError is) nor an Exception, which the
    library turns into errors of its own (an OSError into "cannot read"), hiding the hang."""


def replay(folder: str) -> int:
    """One saved input in the foreground, with the same limits; prints the full traceback."""
    with open(os.path.join(folder, "replay.json")) as f:
        info = json.load(f)
    import_libraries()
    path = os.path.join(os.path.abspath(folder), info["model"])
    print(f"replaying {info['mode']} on {path}\n  {info['description']}", file=sys.stderr)
    memory_limit = int(info["memory_limit_gb"] * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
    faulthandler.enable()

    fired = []

    def on_alarm(signum, frame):
        fired.append(signum)
        raise TimeLimit(f"still running after {info['time_limit']} s")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(max(1, int(info["time_limit"])))
    # shown as it comes, and kept: the CLI's outcome depends on its stderr
    sys.stdout, sys.stderr = Tee(sys.stdout), Tee(sys.stderr)
    report = execute(TARGETS[info["mode"]], path)
    signal.alarm(0)
    stdout, stderr = sys.stdout.kept(), sys.stderr.kept()
    sys.stdout, sys.stderr = sys.stdout.stream, sys.stderr.stream
    if report["error"]:
        print(report["error"]["traceback"], file=sys.stderr)
    else:
        print(f"result: {report['result']}", file=sys.stderr)
    task = Task(0, info["mode"], path, folder, None)
    r = classify(task, report, 0, bool(fired), stdout, stderr, info["marker"])
    if r.outcome == "hang":     # where it was: the traceback, not a faulthandler dump
        r.where = where_of((report["error"] or {}).get("frames", []))
    print(f"outcome: {r.outcome}" + (f": {describe(r)}" if r.outcome != "load" else ""))
    return 1 if r.outcome in FAILURES else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Mutation fuzzer over model files (see the docstring).")
    p.add_argument("--seed", type=int, default=0, help="run seed: the same seed, the same inputs")
    p.add_argument("--count", type=int, default=1000, help="number of inputs")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="children at once")
    p.add_argument("--time-limit", type=float, default=20.0, help="seconds per input")
    p.add_argument("--memory-limit-gb", type=float, default=4.0,
                   help="address-space limit per child (RLIMIT_AS)")
    p.add_argument("--out", default=None, help="where non-clean inputs are saved "
                                               "(default: a new temporary folder)")
    p.add_argument("--formats", default=",".join(FORMATS),
                   help=f"comma-separated subset of {','.join(FORMATS)}")
    p.add_argument("--cli-every", type=int, default=0,
                   help="also run every Nth input through `qwen-np run` (0: never)")
    p.add_argument("--replay", metavar="DIR", help="run one saved input in the foreground")
    args = p.parse_args(argv)
    if args.replay:
        return replay(args.replay)
    formats = [f for f in args.formats.split(",") if f]
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        p.error(f"unknown formats {unknown}; choose from {','.join(FORMATS)}")

    root = os.path.realpath(tempfile.mkdtemp(prefix="qwen-np-fuzz-"))
    try:
        t0 = time.monotonic()
        # the GGUF seeds are gguf's, and chat_template's too (their tokenizer.chat_template)
        seeds = build_seeds(root, with_gguf=bool({"gguf", "chat_template"} & set(formats)))
        import_libraries()
        print(f"[fuzz] {len(seeds)} seeds in {root} ({time.monotonic() - t0:.1f} s)",
              file=sys.stderr)
        marker = "qwen-np-fuzz-marker-" + os.urandom(12).hex()
        if args.out:
            os.makedirs(args.out, exist_ok=True)
        report = Report(args.count, os.path.abspath(args.out) if args.out else None, marker,
                        args.time_limit, args.memory_limit_gb)
        work = os.path.join(root, "work")
        os.makedirs(work)
        tasks = input_tasks(seeds, formats, args.seed, args.count, work, marker, args.cli_every)
        run_tasks(tasks, args.jobs, args.time_limit, int(args.memory_limit_gb * 2**30), marker,
                  report.add)
        return report.summary(args.seed, args.jobs)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
