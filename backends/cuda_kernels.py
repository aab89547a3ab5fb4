"""The CUDA kernels' sources, the NVRTC options they are compiled with, and each kernel's
launch geometry: one place that the GPU backend, the compile gate and the CPU-emulation tests
all read, so that what is tested is what runs.

    backends/cuda/kernels.cu       the kernels (extern "C": no name mangling)
    backends/cuda/emulate_cpu.h    lets g++ compile kernels.cu for the CPU (its comment says how)
    backends/cuda/cpu_entry.cpp    a C launcher per kernel for the CPU build
"""

from __future__ import annotations

import os

CUDA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cuda")
SOURCE = os.path.join(CUDA_DIR, "kernels.cu")
KERNELS = ("rms_norm_rows", "gemv_q4_rows", "silu_mul", "rope_rows")
NVRTC_OPTIONS = ("-std=c++17",)        # CuPy would add -std=c++11 unless one is given
ARCHITECTURES = ("sm_80", "sm_90")     # A100, H100/H200

WARPS_PER_BLOCK = 4                    # gemv: one warp per output row


def rms_norm_launch(rows: int, n: int) -> tuple[int, int]:
    """(grid, block): one block per row, a warp per 32 features up to 8 warps."""
    return rows, min(256, max(32, -(-n // 32) * 32))


def gemv_launch(out_rows: int) -> tuple[int, int]:
    """(grid, block): WARPS_PER_BLOCK output rows per block, one warp each."""
    return -(-out_rows // WARPS_PER_BLOCK), 32 * WARPS_PER_BLOCK


ELEMENTWISE_BLOCK = 256


def elementwise_launch(count: int) -> tuple[int, int]:
    """(grid, block): one thread per value (silu_mul, rope_rows)."""
    return -(-count // ELEMENTWISE_BLOCK), ELEMENTWISE_BLOCK
