"""The canonical quantized tensor: what every quantized format on disk converts into, and the
only quantized form a kernel has to understand.

A float matrix W [out, in] (an nn.Linear weight, or an embedding table [V, D]) is held as
    codes   uint8 [out, packed_length(in)]  integer codes packed along the input dimension
                                             (4-bit: two per byte, low nibble first; 8-bit: bytes;
                                             5- and 6-bit: their low 4 bits, as 4-bit codes)
    high    uint8 [out, ...] or None         5- and 6-bit codes: the 1 or 2 high bits of each
                                             code (tensors/packing.py draws both planes)
    scale   [out, G] float16 or float32      one per group of `group_size` consecutive codes
    offset  [out, G] float16 or float32      (the last group may be shorter)
    perm    [in] or None                     code column c holds input column perm[c]

and means
    W[o, perm[c]] = scale[o, c // group_size] * codes[o, c] + offset[o, c // group_size]

`perm` exists for GPTQ's act-order (desc_act) checkpoints, whose groups are scattered over the
input; the converter sorts the columns so that groups are contiguous, and `linear` gathers x
by `perm` before the product. scale/offset are stored in float16 when that is exact, else
float32, so that the form costs little more than the file.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qwen_np.tensors.packing import high_plane_length, packed_length, unpack_codes, unpack_high_bits


@dataclass(frozen=True, repr=False)
class QuantizedTensor:
    shape: tuple[int, int]          # (out, in) of the float matrix it stands for
    bits: int                       # 4, 5, 6 or 8
    group_size: int                 # codes per (scale, offset); == in for per-channel
    codes: np.ndarray               # uint8 [out, packed_length(in)]
    scale: np.ndarray               # [out, G]
    offset: np.ndarray              # [out, G]
    perm: np.ndarray | None = None  # [in] or None (identity)
    high: np.ndarray | None = None  # [out, high_plane_length(in)] for 5 and 6 bits

    def __post_init__(self):
        out, n_in = self.shape
        groups = -(-n_in // self.group_size)
        if self.codes.shape != (out, packed_length(n_in, self.bits)) or self.codes.dtype != np.uint8:
            raise ValueError(f"codes {self.codes.dtype}{list(self.codes.shape)} do not hold "
                             f"{self.bits}-bit codes for shape {list(self.shape)}")
        high_len = high_plane_length(n_in, self.bits)
        if (self.high is None) != (high_len == 0) or \
                (self.high is not None and self.high.shape != (out, high_len)):
            raise ValueError(f"{self.bits}-bit codes need a high-bit plane of [{out}, {high_len}]")
        if self.scale.shape != (out, groups) or self.offset.shape != (out, groups):
            raise ValueError(f"scale/offset must be [{out}, {groups}]")

    def __repr__(self):
        return (f"QuantizedTensor(shape={self.shape}, bits={self.bits}, group_size={self.group_size}, "
                f"scale={self.scale.dtype}, offset={self.offset.dtype}, "
                f"perm={'yes' if self.perm is not None else 'no'}, nbytes={self.nbytes})")

    @property
    def n_groups(self) -> int:
        return self.scale.shape[1]

    @property
    def nbytes(self) -> int:
        extra = sum(a.nbytes for a in (self.perm, self.high) if a is not None)
        return self.codes.nbytes + self.scale.nbytes + self.offset.nbytes + extra

    @property
    def dtype_name(self) -> str:
        return f"q{self.bits}g{self.group_size}"


def dequantize_rows(qt: QuantizedTensor, rows, dtype=np.float32, reorder: bool = True) -> np.ndarray:
    """Rows of W (a slice or an index array) as floats [n_rows, in].

    With reorder=False the columns stay in code order (perm applied to x instead, by linear).
    """
    n_in = qt.shape[1]
    # row-major whatever order the codes are stored in (an 8-bit matrix read from a file is a
    # transposed view; from the prepared cache, row-major): the float matrix's layout decides
    # the order in which BLAS sums x @ W.T, and so its last bits
    q = unpack_all_codes(qt, rows).astype(dtype, order="C")                 # [r, in]
    group = np.arange(n_in) // qt.group_size                                # [in]
    scale = qt.scale[rows].astype(dtype)[:, group]                          # [r, in]
    offset = qt.offset[rows].astype(dtype)[:, group]
    w = scale * q + offset
    if reorder and qt.perm is not None:
        unsorted = np.empty_like(w)
        unsorted[:, qt.perm] = w
        return unsorted
    return w


def unpack_all_codes(qt: QuantizedTensor, rows) -> np.ndarray:
    """The integer codes of the given rows, uint8 [r, in], in code (storage) order."""
    n_in = qt.shape[1]
    if qt.high is None:
        return unpack_codes(qt.codes[rows], qt.bits, n_in)
    low = unpack_codes(qt.codes[rows], 4, n_in)
    return low | (unpack_high_bits(qt.high[rows], qt.bits - 4, n_in) << 4)


def dequantize(qt: QuantizedTensor, dtype=np.float32) -> np.ndarray:
    """The whole float matrix [out, in] (the reference; never needed by the model itself)."""
    return dequantize_rows(qt, slice(None), dtype)


def smallest_exact_float(x32: np.ndarray) -> np.ndarray:
    """x in float16 if every value survives the round trip, else float32 (x32 unchanged)."""
    with np.errstate(over="ignore"):    # values beyond float16 overflow: then float32 stays
        x16 = x32.astype(np.float16)
    return x16 if np.array_equal(x16.astype(np.float32), x32) else x32


def row_block(qt: QuantizedTensor, start: int, stop: int) -> QuantizedTensor:
    """Rows start..stop-1 of W as a QuantizedTensor of their own (views of the codes, scales
    and offsets: each row carries its own, so a block of rows is complete)."""
    rows = slice(start, stop)
    return QuantizedTensor(shape=(stop - start, qt.shape[1]), bits=qt.bits,
                           group_size=qt.group_size, codes=qt.codes[rows], scale=qt.scale[rows],
                           offset=qt.offset[rows], perm=qt.perm,
                           high=None if qt.high is None else qt.high[rows])
