"""The soak (tools/soak_serve.py), short: 400 mixed requests from 8 concurrent clients
(greedy, sampled, cancelled, bad) against a real server. Every answer well-formed and no 500,
every greedy answer its single-stream text, and no growth of descriptors, memory or slots
between the warm-up fifth and the end. BENCHMARKS.md records the 1,000-request run on the real
GGUF."""

import importlib.util
import os
import sys

import pytest

from conftest import TESTS
from serving import FIX, server_process

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

SOAK = os.path.join(os.path.dirname(TESTS), "tools", "soak_serve.py")


def load_soak():
    spec = importlib.util.spec_from_file_location("soak_serve", SOAK)
    module = importlib.util.module_from_spec(spec)
    sys.modules["soak_serve"] = module
    spec.loader.exec_module(module)
    return module


def test_a_short_soak_leaves_nothing_behind_and_answers_everything_right():
    soak = load_soak()
    expected = soak.expected_texts(FIX, "numpy", tokens=12)
    with server_process("--backend", "numpy", "--max-batch", "4", "--context", "256",
                        key=None) as s:
        report = soak.soak(s.url, s.proc.pid, expected, requests=400, clients=8, tokens=12,
                           context=256)
    assert report["errors"] == [] and report["grew"] == []
    assert all(report["kinds"][k] > 5 for k in ("greedy", "sampled", "cancelled", "bad"))
