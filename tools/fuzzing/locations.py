"""Where things lie: the repository, its test fixtures, tools/fuzz.py (what replay.sh runs),
and which source files are the fuzzer's own (not where a failure is reported)."""

import os

FUZZING = os.path.dirname(os.path.abspath(__file__))
TOOLS = os.path.dirname(FUZZING)
REPO = os.path.dirname(TOOLS)
FIXTURES = os.path.join(REPO, "tests", "fixtures")
FUZZ_SCRIPT = os.path.join(TOOLS, "fuzz.py")


def is_fuzzer_file(filename: str) -> bool:
    """tools/fuzz.py or a module of tools/fuzzing/: the harness, not the code under test."""
    path = os.path.abspath(filename)
    return path == FUZZ_SCRIPT or path.startswith(FUZZING + os.sep)
