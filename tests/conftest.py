import atexit
import importlib.util
import os
import shutil
import sys
import tempfile

import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(TESTS, "fixtures")
sys.path.insert(0, TESTS)  # test-support modules (transformers_oracle)

FIXTURE_MODELS = sorted(
    d for d in os.listdir(FIXTURES)
    if os.path.isfile(os.path.join(FIXTURES, d, "config.json")))

# The prepared-model cache (qwen_np/runtime/prepared/) stays on, as it is for users, in a
# folder of this session's own (set before anything loads a model, and inherited by the CLI
# subprocesses): the suite never writes into the home folder, and a model it loads twice is a
# cache hit the second time, so every test that loads a model again also checks the cache.
PREPARED_CACHE_DIR = tempfile.mkdtemp(prefix="qwen-np-prepared-")
os.environ["QWEN_NP_CACHE_DIR"] = PREPARED_CACHE_DIR
atexit.register(shutil.rmtree, PREPARED_CACHE_DIR, ignore_errors=True)

HAVE_TRANSFORMERS = (importlib.util.find_spec("torch") is not None
                     and importlib.util.find_spec("transformers") is not None)


def fixture_path(name: str) -> str:
    return os.path.join(FIXTURES, name)


def run_all(batcher, requests, timeout=120):
    """Start a batch.Batcher, wait until every request has finished, close it."""
    import time
    batcher.start()
    deadline = time.time() + timeout
    try:
        while any(r.finish is None for r in requests) and time.time() < deadline:
            time.sleep(0.005)
    finally:
        batcher.close()
    assert all(r.finish is not None for r in requests)


class Collect:
    """An emit callback that keeps what it is given."""

    def __init__(self):
        self.tokens, self.finish = [], []

    def __call__(self, token, finish):
        if token is not None:
            self.tokens.append(token)
        else:
            self.finish.append(finish)


def rel_err(a, b) -> float:
    """max |a - b| / max |b|: the relative error the acceptance criteria speak of."""
    import numpy as np
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.fixture(scope="session")
def fixtures_dir():
    return FIXTURES
