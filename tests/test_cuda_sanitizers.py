"""The CUDA kernels' CPU tests again under the sanitizers, each in a child process (the
sanitizer runtime is preloaded into a fresh Python): AddressSanitizer with
UndefinedBehaviorSanitizer, and ThreadSanitizer (the block's threads share memory through
__shared__ and barriers). And the tests' teeth: a kernel with a __syncthreads() removed, or
an index one past the end, must make them fail: the removed barrier through the wrong sums it
causes and, under ThreadSanitizer, as a data race on the shared array; the index through
AddressSanitizer."""

import os
import shutil
import subprocess
import sys

import pytest

if shutil.which("g++") is None:
    pytest.skip("no g++ to build the CPU emulation", allow_module_level=True)

HERE = os.path.dirname(os.path.abspath(__file__))


def run_cpu_tests(sanitize, mutation=None, select=None):
    env = dict(os.environ)
    if sanitize:
        runtime = {"address,undefined": "libasan.so", "thread": "libtsan.so"}[sanitize]
        env["LD_PRELOAD"] = subprocess.run(["g++", f"-print-file-name={runtime}"],
                                           capture_output=True, text=True,
                                           check=True).stdout.strip()
        env["QWEN_NP_CUDA_CPU_SANITIZE"] = sanitize
    env.update(ASAN_OPTIONS="detect_leaks=0:halt_on_error=1",
               UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1",
               TSAN_OPTIONS="halt_on_error=1:report_signal_unsafe=0")
    if mutation:
        env["QWEN_NP_CUDA_CPU_MUTATION"] = mutation
    return subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-s", "-p",
                           "no:cacheprovider", os.path.join(HERE, "test_cuda_kernels_cpu.py")]
                          + (["-k", select] if select else []),
                          capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.parametrize("sanitize", ["address,undefined", "thread"])
def test_the_cpu_tests_pass_under_the_sanitizers(sanitize):
    r = run_cpu_tests(sanitize)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "Sanitizer" not in r.stderr, r.stderr[-3000:]


def test_a_missing_syncthreads_fails_the_tests():
    r = run_cpu_tests(None, "missing-syncthreads")
    assert r.returncode != 0 and "test_rms_norm_rows" in r.stdout, r.stdout[-2000:]


def test_a_missing_syncthreads_is_a_data_race_for_threadsanitizer():
    r = run_cpu_tests("thread", "missing-syncthreads")
    assert r.returncode != 0
    assert "ThreadSanitizer: data race" in r.stderr and "block_sum" in r.stderr, r.stderr[-2000:]


def test_a_missing_syncthreads_in_the_prefill_tiles_is_a_data_race():
    """gemm refills its shared tiles while slower threads still read them."""
    r = run_cpu_tests("thread", "missing-syncthreads-gemm", "test_linear_quantized")
    assert r.returncode != 0
    assert "ThreadSanitizer: data race" in r.stderr and "gemm" in r.stderr, r.stderr[-2000:]


def test_an_index_past_the_row_is_caught():
    """gemv reads one column past the row's end: AddressSanitizer reports the read of x[n]
    (x holds n floats). (Without it the sums may come out right: x[n] is whatever the heap
    holds there, zero at times.)"""
    r = run_cpu_tests("address,undefined", "off-by-one", "test_linear_quantized")
    assert r.returncode != 0, r.stdout[-2000:]
    assert "AddressSanitizer" in r.stderr and "gemv" in r.stderr, r.stderr[-2000:]
