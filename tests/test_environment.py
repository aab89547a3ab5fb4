"""The process settings qwen_np makes for speed: OpenBLAS's short idle spin (set on import)
and Numba's 512-bit vectors on AVX-512 CPUs (set when the numba backend loads). Each only
when not already set; checked in fresh processes, whose environment they change."""

import importlib.util
import os
import subprocess
import sys

import pytest


def env_after(code: str, **env) -> str:
    clean = {k: v for k, v in os.environ.items()
             if k not in ("OPENBLAS_THREAD_TIMEOUT", "NUMBA_CPU_FEATURES")}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**clean, **env}, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_import_sets_a_short_openblas_spin_unless_set():
    code = "import os, qwen_np; print(os.environ.get('OPENBLAS_THREAD_TIMEOUT'))"
    assert env_after(code) == "4"
    assert env_after(code, OPENBLAS_THREAD_TIMEOUT="9") == "9"


@pytest.mark.skipif(importlib.util.find_spec("numba") is None, reason="numba is not installed")
def test_numba_backend_prefers_512_bit_vectors_on_avx512_unless_set():
    import llvmlite.binding as llvm
    host = llvm.get_host_cpu_features().flatten()
    code = ("import os; from qwen_np.backends import get_backend; get_backend('numba'); "
            "print(os.environ.get('NUMBA_CPU_FEATURES'))")
    expected = host + ",-prefer-256-bit" if "+avx512f" in host else "None"
    assert env_after(code) == expected
    assert env_after(code, NUMBA_CPU_FEATURES="+avx2") == "+avx2"
