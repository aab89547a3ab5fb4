"""Row tiles: the Numba backend's layout of a quantized matrix (its kernels: tile_kernels.py).

A matrix-vector product over the canonical form (one row after another) must add up each
row's products into one number: a horizontal sum of a vector register per block of codes,
which costs about as much as the products themselves. Laid out as tiles of 16 rows, with
the 16 rows' copies of each code byte side by side, one vector register holds the same
code column of 16 rows: every lane is a row, and the 16 outputs are added up lane by lane,
with no horizontal sum at all.

    canonical codes [out, m]                row tiles codes [T, m, 16], T = out / 16
    (m bytes per row)                       (rounded up; pad rows are zero)

    row 0:  b[0, 0]   b[0, 1]  ...          tile t, byte column j: 16 bytes,
    row 1:  b[1, 0]   b[1, 1]  ...    ->      codes[t, j, :] = b[16t, j], b[16t + 1, j], ...,
    ...                                                        b[16t + 15, j]
    row 15: b[15, 0]  ...

The code bytes themselves are the canonical ones, untouched: for 4-, 5- and 6-bit codes
byte j holds code 2j in its low nibble and code 2j + 1 in its high nibble; 8-bit codes are
a byte each. Every per-row array tiles the same way:
- the 5-bit high plane as bytes, [T, m/4, 16]: byte i of row 16t + r sits at [t, i, r], and
  its bit k is bit 4 of code 8i + k (the canonical plane's byte);
- the 6-bit high plane as bytes, [T, m/2, 16]: byte i holds bits 4-5 of codes 4i..4i+3,
  two bits each from bit 0 up;
- scale and offset, [T, G, 16].
The bytes are the canonical form's, so the tiles take the same memory (plus at most 15 zero
rows), and `prepare` re-lays them in place.

Which matrices tile: 8-bit codes of any shape; 4/5-bit codes whose rows are whole 32-code
blocks and whose groups are whole blocks (GGUF Q4_0/Q4_1/Q5_0/Q5_1/Q4_K/Q5_K, GPTQ and AWQ
with groups of 32, 64, 128, or per channel); 6-bit codes whose rows and groups are a multiple
of 4 codes (Q6_K). Any number of rows tiles (the last tile is padded). The last group of a
row may be shorter than the others, when the group size does not divide the row (in 96,
groups of 64: 64 codes, then 32) or exceeds it (in 96, groups of 128: one group of 96); every
kernel stops at the row's end. Other shapes (4/5-bit rows or groups of part of a 32-code
block, 6-bit rows or groups not a multiple of 4 codes) stay canonical, and the backend
multiplies them with the NumPy reference's product.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from qwen_np.tensors.quantized import QuantizedTensor

from qwen_np.backends.numba.floats import kernel_floats

LANES = 16
# The tiles' layout, for the prepared-model cache: bumped whenever a tile's arrays change
# (2: the 5-bit high plane as bytes, not 32-bit words)
ROW_TILES_VERSION = 2


@dataclass
class RowTiles:
    """A quantized matrix [out, in] as tiles of 16 rows (see the module docstring)."""
    shape: tuple[int, int]          # (out, in) of the float matrix it stands for
    bits: int                       # 4, 5, 6 or 8
    group_size: int
    codes: np.ndarray               # uint8 [T, m, 16]
    high: np.ndarray                # uint8 [T, in/8, 16] (5 bits), [T, in/4, 16] (6 bits),
                                    # [1, 1, 16] zeros (4 and 8 bits)
    scale: np.ndarray               # [T, G, 16], float16 as uint16 bits, or float32
    offset: np.ndarray              # [T, G, 16]
    perm: np.ndarray | None = None  # [in] or None, as in the canonical form

    @property
    def n_groups(self) -> int:
        return self.scale.shape[1]

    @property
    def nbytes(self) -> int:
        high = self.high.nbytes if self.bits in (5, 6) else 0
        extra = self.perm.nbytes if self.perm is not None else 0
        return self.codes.nbytes + high + self.scale.nbytes + self.offset.nbytes + extra

    @property
    def dtype_name(self) -> str:
        return f"q{self.bits}g{self.group_size}"

    def __repr__(self):
        return (f"RowTiles(shape={self.shape}, bits={self.bits}, group_size={self.group_size}, "
                f"nbytes={self.nbytes})")


def tiles_take(w: QuantizedTensor) -> bool:
    """Whether a canonical matrix has a row-tile kernel: 8-bit codes always; 4/5-bit codes
    when rows are whole 32-code blocks and a group is whole blocks; 6-bit codes when rows
    and groups are whole bytes of the high plane (4 codes). The last group may be partial."""
    if w.bits == 8:
        return True
    if w.bits == 6:
        return w.shape[1] % 4 == 0 and w.group_size % 4 == 0
    return w.bits in (4, 5) and w.shape[1] % 32 == 0 and w.group_size % 32 == 0


def to_row_tiles(w: QuantizedTensor, in_place: bool = False) -> RowTiles:
    """The canonical matrix's arrays re-laid as 16-row tiles (the bytes are not changed).
    With in_place, arrays that can be are re-laid in their own memory (no copy, so loading
    needs no extra memory), and `w` must not be used afterwards."""
    out_f, n_in = w.shape
    T = -(-out_f // LANES)

    def tiled(a):
        if in_place and out_f % LANES == 0 and a.flags.writeable and a.flags.c_contiguous:
            return tile_rows_in_place(a)
        return tile_rows(a, T)

    if w.bits in (5, 6):
        high = tiled(w.high)
    else:
        high = np.zeros((1, 1, LANES), np.uint8)
    return RowTiles(w.shape, w.bits, w.group_size, tiled(w.codes), high,
                    tiled(kernel_floats(w.scale)), tiled(kernel_floats(w.offset)), w.perm)


def tile_rows(a: np.ndarray, T: int) -> np.ndarray:
    """[rows, m] -> a new [T, m, 16] with out[t, j, r] = a[16t + r, j]; rows past the end
    are 0."""
    out = np.zeros((T, a.shape[1], LANES), a.dtype)
    _tile_rows(np.ascontiguousarray(a), out)
    return out


def tile_rows_in_place(a: np.ndarray) -> np.ndarray:
    """[16 T, m] -> [T, m, 16] in a's own memory (a 16-row tile is the same bytes in both
    layouts, so each is re-laid through a small copy of itself); a is overwritten."""
    out = a.reshape(-1).reshape(a.shape[0] // LANES, a.shape[1], LANES)
    _tile_rows_in_place(a, out)
    return out


@njit(cache=True, nogil=True, parallel=True)
def _tile_rows(a, out):
    rows, m = a.shape
    for t in prange(out.shape[0]):
        n_rows = min(LANES, rows - t * LANES)
        for j in range(m):
            for r in range(n_rows):
                out[t, j, r] = a[t * LANES + r, j]


@njit(cache=True, nogil=True, parallel=True)
def _tile_rows_in_place(a, out):
    m = a.shape[1]
    for t in prange(out.shape[0]):
        rows = a[t * LANES:(t + 1) * LANES].copy()      # [16, m]: the tile, set aside
        for j in range(m):
            for r in range(LANES):
                out[t, j, r] = rows[r, j]
