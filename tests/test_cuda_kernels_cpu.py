"""The CUDA kernels' logic on the CPU: backends/cuda/kernels.cu compiled by g++ with the
project's emulation header (real threads per block, barriers, warp shuffles), launched with the
geometry the GPU backend uses, and compared with the NumPy backend's ops on awkward shapes."""

import ctypes
import os
import shutil
import subprocess

import numpy as np
import pytest

from conftest import rel_err
from qwen_np.backends import cuda_kernels as ck
from qwen_np.backends import get_backend
from qwen_np.quant.packing import pack_codes
from qwen_np.quant.tensor import QuantizedTensor

if shutil.which("g++") is None:
    pytest.skip("no g++ to build the CPU emulation", allow_module_level=True)

F32 = ctypes.POINTER(ctypes.c_float)
U8 = ctypes.POINTER(ctypes.c_ubyte)


# Set by test_cuda_sanitizers.py when it runs this file again in a child process:
SANITIZE = os.environ.get("QWEN_NP_CUDA_CPU_SANITIZE")     # "address,undefined" or "thread"
MUTATION = os.environ.get("QWEN_NP_CUDA_CPU_MUTATION")     # a MUTATIONS key


# Deliberate bugs that the CPU tests (or the sanitizers under them) must catch.
MUTATIONS = {
    # warp 0 reads the other warps' partial sums before they are written
    "missing-syncthreads": ("    if (lane == 0) partial[warp] = v;\n    __syncthreads();\n",
                            "    if (lane == 0) partial[warp] = v;\n"),
    # the lanes stride one byte past the row
    "off-by-one": ("for (int j = lane; j < bytes; j += 32)", "for (int j = lane; j <= bytes; j += 32)"),
}


def build_cpu_library(out_dir, sanitize=None, mutation=None) -> str:
    """kernels.cu + emulate_cpu.h + cpu_entry.cpp -> a shared library (copies in out_dir, so
    that a mutation can edit kernels.cu there)."""
    for name in ("kernels.cu", "emulate_cpu.h", "cpu_entry.cpp"):
        shutil.copy(os.path.join(ck.CUDA_DIR, name), out_dir)
    if mutation is not None:
        path = os.path.join(out_dir, "kernels.cu")
        old, new = MUTATIONS[mutation]
        with open(path, encoding="utf-8") as f:
            text = f.read()
        assert old in text, mutation
        with open(path, "w", encoding="utf-8") as f:
            f.write(text.replace(old, new, 1))
    out = os.path.join(out_dir, "kernels_cpu.so")
    flags = [f"-fsanitize={sanitize}", "-fno-omit-frame-pointer"] if sanitize else []
    subprocess.run(["g++", "-std=c++20", "-O1", "-g", "-shared", "-fPIC", "-pthread", "-Wall",
                    "-Werror", *flags, os.path.join(out_dir, "cpu_entry.cpp"), "-o", out],
                   check=True)
    return out


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    out_dir = str(tmp_path_factory.mktemp("cuda-cpu"))
    return ctypes.CDLL(build_cpu_library(out_dir, SANITIZE, MUTATION))


def ptr(a, kind):
    return a.ctypes.data_as(kind)


@pytest.mark.parametrize("rows,n", [(1, 48), (7, 33), (3, 896), (2, 1)])
def test_rms_norm_rows(lib, rows, n):
    rng = np.random.default_rng(n)
    x = rng.standard_normal((rows, n)).astype(np.float32)
    w = rng.standard_normal(n).astype(np.float32)
    out = np.empty_like(x)
    grid, block = ck.rms_norm_launch(rows, n)
    lib.launch_rms_norm_rows(grid, block, ptr(x, F32), ptr(w, F32), ctypes.c_float(1e-6), n,
                             ptr(out, F32))
    assert rel_err(out, get_backend("numpy").rms_norm(x, w, 1e-6)) < 1e-6


@pytest.mark.parametrize("out_rows,n,group", [(1, 64, 32), (33, 200, 64), (70, 201, 64),
                                              (9, 96, 96), (5, 7, 4)])
def test_gemv_q4_rows(lib, out_rows, n, group):
    """Row counts that leave a block's last warps idle, odd widths (a half-used last byte),
    short last groups."""
    rng = np.random.default_rng(out_rows * n)
    q = rng.integers(0, 16, (out_rows, n)).astype(np.uint8)
    G = -(-n // group)
    scale = rng.uniform(0.01, 0.1, (out_rows, G)).astype(np.float32)
    offset = rng.uniform(-0.5, 0.5, (out_rows, G)).astype(np.float32)
    qt = QuantizedTensor((out_rows, n), 4, group, pack_codes(q, 4), scale, offset)
    x = rng.standard_normal((1, n)).astype(np.float32)
    y = np.full(out_rows, np.nan, np.float32)
    grid, block = ck.gemv_launch(out_rows)
    codes = np.ascontiguousarray(qt.codes)
    lib.launch_gemv_q4_rows(grid, block, ptr(codes, U8), ptr(scale, F32), ptr(offset, F32),
                            ptr(x, F32), n, group, out_rows, ptr(y, F32))
    assert rel_err(y, get_backend("numpy").linear(x, qt)[0]) < 1e-5


GATES = [-1000, -100, -89, -88.7, -88, -50, -1, -0.0, 0.0, 1, 50, 88, 89, 100, 1000]


@pytest.mark.parametrize("count", [len(GATES), 300])
def test_silu_mul(lib, count):
    """Gates whose exp overflows float32 (silu -> -0), and a count that is not a whole block."""
    rng = np.random.default_rng(count)
    gate = (rng.standard_normal(count) * 6).astype(np.float32)
    gate[:len(GATES)] = GATES
    up = rng.standard_normal(count).astype(np.float32)
    out = np.empty_like(gate)
    grid, block = ck.elementwise_launch(count)
    lib.launch_silu_mul(grid, block, ptr(gate, F32), ptr(up, F32), ctypes.c_longlong(count),
                        ptr(out, F32))
    want = get_backend("numpy").silu_mul(gate[None], up[None])[0]
    assert np.array_equal(np.signbit(out[:len(GATES)]), np.signbit(want[:len(GATES)]))
    assert rel_err(out, want) < 1e-6


@pytest.mark.parametrize("T,heads,d,n", [(1, 3, 16, 8), (5, 2, 12, 3), (7, 4, 10, 1)])
def test_rope_rows(lib, T, heads, d, n):
    """Full rotary (n = d/2) and partial (the original Qwen's rotary_pct < 1)."""
    from qwen_np.model import rope_inv_freq
    rng = np.random.default_rng(T * d)
    x = rng.standard_normal((T, heads, d)).astype(np.float32)
    positions = np.arange(40, 40 + T)
    inv = rope_inv_freq(2 * n, 1e4)
    angle = positions[:, None].astype(np.float64) * inv
    cos, sin = np.cos(angle).astype(np.float32), np.sin(angle).astype(np.float32)
    out = np.empty_like(x)
    grid, block = ck.elementwise_launch(x.size)
    lib.launch_rope_rows(grid, block, ptr(x, F32), ptr(cos, F32), ptr(sin, F32), heads, d, n,
                         ctypes.c_longlong(x.size), ptr(out, F32))
    assert rel_err(out, get_backend("numpy").rope(x, positions, inv)) < 1e-6
