import importlib.util
import os
import sys

import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(TESTS, "fixtures")
sys.path.insert(0, TESTS)  # test-support modules (transformers_oracle)

FIXTURE_MODELS = sorted(
    d for d in os.listdir(FIXTURES)
    if os.path.isfile(os.path.join(FIXTURES, d, "config.json")))

HAVE_TRANSFORMERS = (importlib.util.find_spec("torch") is not None
                     and importlib.util.find_spec("transformers") is not None)


def fixture_path(name: str) -> str:
    return os.path.join(FIXTURES, name)


def rel_err(a, b) -> float:
    """max |a - b| / max |b|: the relative error the acceptance criteria speak of."""
    import numpy as np
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.fixture(scope="session")
def fixtures_dir():
    return FIXTURES
