"""The CUDA kernels' sources, the NVRTC options and template instantiations they are compiled
with, and each kernel's launch geometry: one place that the GPU backend, the compile gate and
the CPU-emulation tests all read, so that what is tested is what runs.

    backends/cuda/kernels.cu       the kernels (their weight layouts drawn at its top)
    backends/cuda/emulate_cpu.h    lets g++ compile kernels.cu for the CPU (its comment says how)
    backends/cuda/cpu_entry.cpp    every kernel of KERNELS behind one C launcher, for the CPU build
"""

from __future__ import annotations

import os

CUDA_DIR = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(CUDA_DIR, "kernels.cu")
NVRTC_OPTIONS = ("-std=c++17",)        # CuPy would add -std=c++11 unless one is given
ARCHITECTURES = ("sm_80", "sm_90")     # A100, H100/H200

# Weight formats (kernels.cu draws each layout): codes of 4, 5, 6, 8 bits with float32 (0) or
# float16 (1) scales and offsets; float16 (16), bfloat16 (17) and float32 (32) rows.
CODE_BITS = (4, 5, 6, 8)
FLOAT_FORMATS = {"float16": 16, "bfloat16": 17, "float32": 32}
FORMATS = tuple((b, sh) for b in CODE_BITS for sh in (0, 1)) + \
    tuple((f, 0) for f in FLOAT_FORMATS.values())


def templated(kernel: str, fmt: int, half_scales: int) -> str:
    """The name expression of a per-format kernel (what CuPy's get_function is asked for)."""
    return f"{kernel}<{fmt}, {half_scales}>"


KV_STORAGE = {"float32": 0, "float16": 1}      # attention_split<KV>: the KV cache's storage

KERNELS = tuple(templated(k, f, sh) for k in ("gemv", "gemm", "embed_rows") for f, sh in FORMATS) \
    + tuple(f"attention_split<{kv}>" for kv in KV_STORAGE.values()) \
    + ("attention_combine", "rms_norm_rows", "silu_mul", "rope_rows", "gather_columns", "argmax",
       "read_bandwidth")

# -- launch geometry -------------------------------------------------------------------------
WARPS_PER_BLOCK = 4                    # gemv: one warp per output row
GEMM_ROWS, GEMM_TOKENS = 64, 32        # gemm: a block's tile (kernels.cu)
ELEMENTWISE_BLOCK = 256
ATTENTION_BLOCK = 128                  # attention_split: 4 warps (kernels.cu)
MAX_HEAD_DIM = 256                     # kernels.cu MAX_HEAD_DIM
ARGMAX_BLOCK = 1024


def rms_norm_launch(rows: int, n: int) -> tuple[int, int]:
    """(grid, block): one block per row, a warp per 32 features up to 8 warps."""
    return rows, min(256, max(32, -(-n // 32) * 32))


def gemv_launch(out_rows: int) -> tuple[int, int]:
    """(grid, block): WARPS_PER_BLOCK output rows per block, one warp each."""
    return -(-out_rows // WARPS_PER_BLOCK), 32 * WARPS_PER_BLOCK


def gemm_launch(out_rows: int, T: int) -> tuple[tuple[int, int], int]:
    """(grid, block): a block per 64 rows x 32 tokens, 256 threads."""
    return (-(-out_rows // GEMM_ROWS), -(-T // GEMM_TOKENS)), 256


def embed_launch(T: int, n_pad: int) -> tuple[int, int]:
    """(grid, block): a block per looked-up row, a thread per 32-column chunk (up to 256)."""
    return T, min(256, max(32, -(-(n_pad // 32) // 32) * 32))


def elementwise_launch(count: int) -> tuple[int, int]:
    """(grid, block): one thread per value (silu_mul, rope_rows, gather_columns)."""
    return -(-count // ELEMENTWISE_BLOCK), ELEMENTWISE_BLOCK


def attention_splits(T: int, H: int, S: int, target_blocks: int = 264) -> tuple[int, int]:
    """(splits, split_len): the keys 0..S-1 cut into parts of split_len (a multiple of 64) so
    that T x H x splits blocks keep a GPU busy (about twice the H200's 132 SMs), and never
    more parts than needed."""
    want = max(1, -(-target_blocks // (T * H)))
    split_len = max(64, -(-(-(-S // want)) // 64) * 64)
    return -(-S // split_len), split_len
