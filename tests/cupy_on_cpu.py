"""The part of CuPy that backends/cuda/backend.py uses, on the CPU, so that the GPU backend runs
here end to end: arrays are NumPy arrays, and RawModule compiles the code it is given (the
backend's kernels.cu) with g++ and the project's emulation header (backends/cuda/emulate_cpu.h),
so its kernels run on CPU threads with the grids and blocks the backend chooses.

A kernel call is checked harder than a GPU would check it, to catch here what would be silent
garbage there: each argument must have the type the kernel declares (NumPy scalars of the
right width: CuPy guesses the width of a Python int or float; arrays of the pointee's dtype),
arrays must be C-contiguous (CuPy passes a strided view's pointer as if it were contiguous),
and grids and blocks must be within CUDA's limits.

Environment (set by tests/test_cuda_sanitizers.py for a child process):
    QWEN_NP_CUDA_CPU_SANITIZE   "address,undefined" or "thread": build with those sanitizers
    QWEN_NP_CUDA_CPU_MUTATION   a key of MUTATIONS: build a kernels.cu with that bug in it
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile

import numpy as np

from qwen_np.backends.cuda import launch as ck

SANITIZE = os.environ.get("QWEN_NP_CUDA_CPU_SANITIZE")
MUTATION = os.environ.get("QWEN_NP_CUDA_CPU_MUTATION")

# Deliberate bugs that the CPU tests (or the sanitizers under them) must catch.
MUTATIONS = {
    # warp 0 reads the other warps' partial sums before they are written
    "missing-syncthreads": ("    if (lane == 0) partial[warp] = v;\n    __syncthreads();\n",
                            "    if (lane == 0) partial[warp] = v;\n"),
    # gemm: the tile of weights is read while its next chunk is being written
    "missing-syncthreads-gemm": ("        __syncthreads();                     // the tiles are refilled next\n", ""),
    # gemv's code-by-code path reads one column past the row's end (and x[n])
    "off-by-one": ("            for (int c = c0; c < end; ++c) {",
                   "            for (int c = c0; c <= end; ++c) {"),
}

SCALAR_TYPES = {"f": np.float32, "d": np.float64, "i": np.int32, "I": np.uint32, "q": np.int64}
CTYPES = {"f": ctypes.c_float, "d": ctypes.c_double, "i": ctypes.c_int32, "I": ctypes.c_uint32,
          "q": ctypes.c_int64}
POINTEE_TYPES = {"Pf": np.float32, "Pd": np.float64, "Pi": np.int32, "PI": np.uint32,
                 "PB": np.uint8, "PH": np.uint16, "Pv": None}
_BUILDS: dict[str, ctypes.CDLL] = {}


class ndarray(np.ndarray):
    """A "device" array: a NumPy array of its own memory (never a view of a host array or a
    mapped file, as a GPU array never is). Kernels take only these."""


def asarray(a, dtype=None) -> ndarray:
    if isinstance(a, ndarray) and (dtype is None or a.dtype == dtype):
        return a
    if isinstance(a, ndarray):
        return a.astype(dtype)
    return np.array(a, dtype=dtype, copy=True).view(ndarray)   # a copy "to the device"


def ascontiguousarray(a, dtype=None) -> ndarray:
    a = asarray(a, dtype)
    return a if a.flags.c_contiguous else np.ascontiguousarray(a).view(ndarray)


def empty(shape, dtype=np.float32) -> ndarray:
    return np.empty(shape, dtype).view(ndarray)


def zeros(shape, dtype=np.float32) -> ndarray:
    return np.zeros(shape, dtype).view(ndarray)


def empty_like(a) -> ndarray:
    return np.empty_like(a).view(ndarray)


def asnumpy(a) -> np.ndarray:
    return np.array(a, subok=False)                             # a copy "to the host"


def build(code: str) -> ctypes.CDLL:
    """code (a kernels.cu) + emulate_cpu.h + cpu_entry.cpp -> a loaded shared library, built
    once per process for each (code, sanitizer, mutation)."""
    if MUTATION:
        old, new = MUTATIONS[MUTATION]
        assert old in code, MUTATION
        code = code.replace(old, new, 1)
    flags = ["-O1", "-g", f"-fsanitize={SANITIZE}", "-fno-omit-frame-pointer"] if SANITIZE \
        else ["-O2"]
    key = hashlib.sha256((code + repr(flags)).encode()).hexdigest()
    if key not in _BUILDS:
        out_dir = tempfile.mkdtemp(prefix="qwen-np-cuda-cpu-")
        for name in ("emulate_cpu.h", "cpu_entry.cpp"):
            shutil.copy(os.path.join(ck.CUDA_DIR, name), out_dir)
        with open(os.path.join(out_dir, "kernels.cu"), "w", encoding="utf-8") as f:
            f.write(code)
        lib = os.path.join(out_dir, "kernels_cpu.so")
        subprocess.run(["g++", "-std=c++20", "-shared", "-fPIC", "-pthread", "-Wall", "-Werror",
                        "-Wno-unknown-pragmas", *flags, os.path.join(out_dir, "cpu_entry.cpp"),
                        "-o", lib], check=True)
        dll = ctypes.CDLL(lib)
        for fn, res in (("kernel_name", ctypes.c_char_p), ("kernel_signature", ctypes.c_char_p),
                        ("kernel_last_error", ctypes.c_char_p)):
            getattr(dll, fn).restype = res
        _BUILDS[key] = dll
    return _BUILDS[key]


def library_kernels(lib) -> dict[str, str]:
    """{name expression: signature} of every kernel in a build."""
    return {lib.kernel_name(i).decode(): lib.kernel_signature(i).decode()
            for i in range(lib.kernel_count())}


class RawModule:
    def __init__(self, code: str, options=(), name_expressions=()):
        self.lib = build(code)
        self.signatures = library_kernels(self.lib)
        self.name_expressions = tuple(name_expressions)

    def get_function(self, name: str):
        if name not in self.name_expressions and "<" in name:
            raise ValueError(f"{name} was not in the module's name_expressions")
        if name not in self.signatures:
            raise AttributeError(f"no kernel {name} in the module")
        return Kernel(self.lib, name, self.signatures[name].split(","))


def dims(d) -> tuple[int, int, int]:
    d = tuple(d) if isinstance(d, (tuple, list)) else (d,)
    if not all(isinstance(v, (int, np.integer)) and v >= 1 for v in d) or len(d) > 3:
        raise ValueError(f"grid and block sizes must be 1 to 3 positive ints, not {d}")
    return tuple(int(v) for v in d) + (1,) * (3 - len(d))


class Kernel:
    def __init__(self, lib, name: str, signature: list[str]):
        self.lib, self.name, self.signature = lib, name, signature

    def __call__(self, grid, block, args, shared_mem: int = 0):
        grid, block = dims(grid), dims(block)
        if block[0] * block[1] * block[2] > 1024 or grid[1] > 65535 or grid[2] > 65535 \
                or grid[0] >= 2 ** 31:
            raise ValueError(f"{self.name}: grid {grid} or block {block} beyond CUDA's limits")
        if len(args) != len(self.signature):
            raise TypeError(f"{self.name} takes {len(self.signature)} arguments, "
                            f"{len(args)} given")
        keep = []
        for i, (a, code) in enumerate(zip(args, self.signature)):
            if code.startswith("P"):
                if not isinstance(a, ndarray):
                    raise TypeError(f"{self.name} argument {i}: a device array is needed, not "
                                    f"{type(a).__module__}.{type(a).__name__}")
                if not a.flags.c_contiguous:
                    raise TypeError(f"{self.name} argument {i}: a strided view (CuPy would pass "
                                    f"its pointer as if it were contiguous)")
                want = POINTEE_TYPES[code]
                if want is not None and a.dtype != want:
                    raise TypeError(f"{self.name} argument {i}: {np.dtype(want).name} array "
                                    f"expected, not {a.dtype}")
                keep.append(ctypes.c_void_p(a.ctypes.data))
            else:
                want = SCALAR_TYPES[code]
                if type(a) is not want:
                    raise TypeError(f"{self.name} argument {i}: {np.dtype(want).name} expected, "
                                    f"not {type(a).__name__} (pass NumPy scalars of the "
                                    f"kernel's type)")
                keep.append(CTYPES[code](a))
        pointers = (ctypes.c_void_p * len(keep))(*[ctypes.addressof(k) for k in keep])
        rc = self.lib.launch_kernel(self.name.encode(), *[ctypes.c_uint(v) for v in grid + block],
                                    pointers, len(keep))
        if rc:
            raise RuntimeError(f"{self.name}: {self.lib.kernel_last_error().decode()}")


def emulated_cupy_backend():
    """backends/cuda/backend.py's CupyBackend over this module (its kernels built once)."""
    import sys
    from qwen_np.backends.cuda.backend import CupyBackend
    return CupyBackend(xp=sys.modules[__name__])
