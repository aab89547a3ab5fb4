"""The run: tasks run `jobs` at a time in forked children, the tasks of a run's inputs, and
the Report (progress, saved non-clean inputs with replay.json and replay.sh, the summary)."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter, defaultdict

from fuzzing.child import TARGETS, Result, Task, read_output, start_child
from fuzzing.classify import FAILURES, OUTCOMES, classify
from fuzzing.locations import FUZZ_SCRIPT
from fuzzing.one_input import copy_input, make_input


def run_tasks(tasks, jobs: int, time_limit: float, memory_limit: int, marker: str,
              on_result) -> None:
    """Run tasks (an iterator) `jobs` at a time, each in a forked child; on_result(Result)."""
    tasks = iter(tasks)
    running = {}     # read fd -> [task, pid, deadline, bytes]
    exhausted = False
    while running or not exhausted:
        while not exhausted and len(running) < jobs:
            task = next(tasks, None)
            if task is None:
                exhausted = True
                break
            pid, fd = start_child(task, time_limit, memory_limit)
            running[fd] = [task, pid, time.monotonic() + time_limit, bytearray()]
        if not running:
            break
        ready, _, _ = select.select(list(running), [], [], 0.05)
        finished = []
        for fd in ready:
            chunk = os.read(fd, 1 << 16)
            if chunk:
                running[fd][3] += chunk
            else:
                finished.append((fd, False))
        now = time.monotonic()
        finished += [(fd, True) for fd, job in running.items()
                     if now > job[2] and (fd, False) not in finished]
        for fd, timed_out in finished:
            task, pid, _, data = running.pop(fd)
            os.close(fd)
            if timed_out:
                os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            try:
                report = json.loads(bytes(data)) if data and not timed_out else None
            except ValueError:
                report = None
            stdout, stderr = read_output(task)
            on_result(classify(task, report, status, timed_out, stdout, stderr, marker))


def input_tasks(seeds, formats, run_seed, count, work, marker, cli_every):
    """The API task of each input, and every cli_every-th input's CLI task (its own copy)."""
    for i in range(count):
        modes = ["api"] + (["cli"] if cli_every and i % cli_every == 0 else [])
        for mode in modes:
            dest = os.path.join(work, f"{i:06d}-{mode}")
            inp = make_input(seeds, formats, run_seed, i, dest, marker)
            yield Task(i, mode, inp.model, dest, TARGETS[mode], inp)


class Report:
    """Counts, the one-line list of failures, saved inputs; the final summary."""

    def __init__(self, count: int, out: str | None, marker: str, time_limit, memory_gb):
        self.count, self.out, self.marker = count, out, marker
        self.time_limit, self.memory_gb = time_limit, memory_gb
        self.results: list[Result] = []
        self.start = time.monotonic()
        self.last_progress = 0.0

    def add(self, r: Result) -> None:
        if r.outcome in FAILURES:
            r.saved = self.save(r)
        if r.task.input is not None:
            shutil.rmtree(r.task.dir, ignore_errors=True)
        self.results.append(r)
        now = time.monotonic()
        if now - self.last_progress > 2:
            self.last_progress = now
            done = sum(1 for x in self.results if x.task.mode == "api")
            counts = Counter(x.outcome for x in self.results)
            print(f"[fuzz] {done}/{self.count} inputs, {done / (now - self.start):.1f}/s  " +
                  " ".join(f"{o} {counts[o]}" for o in OUTCOMES if counts[o]), file=sys.stderr)

    def save(self, r: Result) -> str:
        if self.out is None:
            self.out = tempfile.mkdtemp(prefix="qwen-np-fuzz-out-")
        inp = r.task.input
        dst = os.path.join(self.out, f"{r.task.index:06d}-{r.task.mode}-{r.outcome}")
        if inp is None or os.path.exists(dst):
            return ""
        copy_input(r.task.dir, dst)
        with open(os.path.join(dst, "replay.json"), "w") as f:
            json.dump({"mode": r.task.mode, "model": os.path.basename(inp.model),
                       "marker": self.marker, "description": inp.description,
                       "format": inp.fmt, "mutator": inp.mutator, "outcome": r.outcome,
                       "kind": r.kind, "where": r.where, "message": r.message, "why": r.why,
                       "frames": r.frames,
                       "time_limit": self.time_limit, "memory_limit_gb": self.memory_gb},
                      f, indent=2)
        with open(os.path.join(dst, "replay.sh"), "w") as f:
            f.write(f"#!/bin/sh\nexec {sys.executable} {FUZZ_SCRIPT} --replay {dst}\n")
        os.chmod(os.path.join(dst, "replay.sh"), 0o755)
        return dst

    def summary(self, run_seed: int, jobs: int) -> int:
        """Print the summary to stdout; the exit status."""
        elapsed = time.monotonic() - self.start
        api = [r for r in self.results if r.task.mode == "api"]
        cli = [r for r in self.results if r.task.mode == "cli"]
        print(f"seed {run_seed}: {len(api)} inputs (+{len(cli)} CLI runs) in {elapsed:.1f} s, "
              f"{len(api) / max(elapsed, 1e-9):.1f} inputs/s on {jobs} jobs")
        for label, rs in (("outcomes", api), ("CLI outcomes", cli)):
            if rs:
                counts = Counter(r.outcome for r in rs)
                print(f"{label}: " + ", ".join(f"{o} {counts[o]}" for o in OUTCOMES))
        print("per format and mutator:")
        table = defaultdict(Counter)
        for r in api:
            table[(r.task.input.fmt, r.task.input.mutator)][r.outcome] += 1
        for (fmt, mut), counts in sorted(table.items()):
            print(f"  {fmt:18} {mut:14} " +
                  " ".join(f"{o} {counts[o]}" for o in OUTCOMES if counts[o]))
        failures = [r for r in self.results if r.outcome in FAILURES]
        if failures:
            print(f"non-clean inputs ({len(failures)}):")
        for r in failures:
            print(f"  #{r.task.index} {r.task.mode} {r.outcome} {r.task.input.fmt}/"
                  f"{r.task.input.mutator} [{r.task.input.description[:120]}]: {describe(r)}")
        groups = defaultdict(list)
        for r in failures:
            groups[(r.task.mode, r.outcome, r.kind, r.where, r.why)].append(r)
        if groups:
            print(f"distinct failures ({len(groups)}):")
        for (mode, outcome, kind, where, why), rs in sorted(groups.items(), key=lambda g: -len(g[1])):
            print(f"  {len(rs):4}x {mode} {outcome}: {kind} at {where or '?'}"
                  f"{' (' + why + ')' if why else ''}: {rs[0].message[:160]}")
            print(f"        replay: python tools/fuzz.py --replay {rs[0].saved}")
        if failures:
            print(f"saved non-clean inputs under {self.out}; replay one with "
                  f"python tools/fuzz.py --replay DIR")
        print(f"total: {len(api)} inputs")
        return 1 if failures else 0


def describe(r: Result) -> str:
    text = f"{r.kind} at {r.where or '?'}"
    if r.why:
        text += f" ({r.why})"
    if r.message:
        text += f": {r.message[:160]}"
    return f"{text} -> {r.saved}" if r.saved else text
