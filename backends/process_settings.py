"""The environment variables qwen-np sets for speed, in one place.

Each is set only when the environment does not already name it (an explicit setting always
wins), and each is read by a library once, when it loads, so the moment of setting matters:

    OPENBLAS_THREAD_TIMEOUT=4
        OpenBLAS's idle worker threads busy-wait for 2^28 cycles (about 0.1 s) after each
        product before they sleep, and the Numba kernels run between two products find
        their cores taken (measured on 2 cores: a 128-token prefill 1.5x slower, RMSNorm
        and RoPE 4x). 2^4 cycles keeps the spin short. OpenBLAS reads it when NumPy first
        loads it: set on `import qwen_np`, it takes effect only if NumPy was not imported
        before (the CLI imports qwen_np first).
    GOMP_SPINCOUNT=10000
        Numba's OpenMP threads spin after each parallel kernel (300000 by default), which
        takes the cores from OpenBLAS's threads in the prefill's products (a 128-token
        prefill 2.6x slower). libgomp reads it when it loads, at the first parallel kernel:
        set when the Numba backend is imported.
    NUMBA_CPU_FEATURES=<host features>,-prefer-256-bit   (AVX-512 CPUs only)
        LLVM's tuning for recent CPUs vectorizes with 256-bit registers even where 512-bit
        ones exist; the row-tile kernels are one 16-lane register wide and run about 1.4x
        faster with them (measured on an AVX-512 Xeon). Numba reads it when it first
        compiles: set when the Numba backend is imported. On a CPU without AVX-512 nothing
        is set.
"""

from __future__ import annotations

import os


def apply_speed_settings(numba: bool = False) -> None:
    """Set the variables above that are not set yet: OpenBLAS's always, the two Numba ones
    when `numba` (the Numba backend calls this before its first kernel)."""
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
    if not numba:
        return
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")
    if "NUMBA_CPU_FEATURES" not in os.environ:
        try:
            import llvmlite.binding as llvm
            features = llvm.get_host_cpu_features().flatten()
        except Exception:  # no llvmlite (numba missing: get_backend reports it), unknown host
            return
        if "+avx512f" in features:
            os.environ["NUMBA_CPU_FEATURES"] = features + ",-prefer-256-bit"
