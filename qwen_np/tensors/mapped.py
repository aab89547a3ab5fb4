"""Files mapped into memory read-only, and giving mapped pages back.

Weights are read through a shared, read-only mapping: loading costs nothing, and the kernel
pages bytes in when an op touches them. Pages of a quantized tensor that has been converted
to the canonical form are not needed again; `drop_pages` tells the kernel so (MADV_DONTNEED),
and they leave the process's resident set instead of counting twice.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np

from qwen_np.tensors.quantized import QuantizedTensor


def map_file(path: str) -> np.ndarray:
    """The whole file as a read-only uint8 array backed by an mmap (empty files: a 0-array)."""
    if os.path.getsize(path) == 0:
        return np.zeros(0, np.uint8)
    with open(path, "rb") as f:
        m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    return np.frombuffer(m, dtype=np.uint8)


def mapping_of(view: np.ndarray):
    """The mmap object under an array from map_file (None for any other array)."""
    root = view
    while isinstance(getattr(root, "base", None), np.ndarray):
        root = root.base
    m = getattr(root, "base", None)
    m = m.obj if isinstance(m, memoryview) else m
    return m if isinstance(m, mmap.mmap) else None


def drop_pages(view: np.ndarray) -> None:
    """Release the whole pages that `view` (an array into a map_file array) occupies."""
    m = mapping_of(view)
    if m is None or not hasattr(m, "madvise"):
        return
    root = view
    while isinstance(getattr(root, "base", None), np.ndarray):
        root = root.base
    start = view.__array_interface__["data"][0] - root.__array_interface__["data"][0]
    first = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE          # whole pages inside the view only
    last = (start + view.nbytes) // mmap.PAGESIZE * mmap.PAGESIZE
    if last > first:
        m.madvise(mmap.MADV_DONTNEED, first, last - first)


@dataclass(frozen=True, repr=False)
class MappedRows:
    """A float table [rows, D] that only serves lookups (an untied embedding), left in its
    mapped file. A lookup copies the rows it needs, then gives the table's pages back
    (MADV_DONTNEED): touching one row maps a whole read-ahead window or large folio of the file
    (about 200 KiB per 8 KiB row, measured on a 151936 x 4096 float16 table), which would
    otherwise stay in the resident set: 0.4 GiB for a 2048-token prompt."""
    table: object                   # an array into a map_file array, or a BFloat16Array of one

    @property
    def shape(self):
        return self.table.shape

    @property
    def nbytes(self) -> int:
        return self.table.nbytes

    @property
    def dtype_name(self) -> str:
        return getattr(self.table, "dtype_name", None) or str(self.table.dtype)

    def rows(self, ids):
        """The rows `ids` (a copy in the table's own dtype)."""
        bits = getattr(self.table, "bits", self.table)
        picked = bits[np.asarray(ids)]
        drop_pages(bits)
        return picked if bits is self.table else type(self.table)(picked)

    def __repr__(self):
        return f"MappedRows(shape={self.shape}, {self.dtype_name}, nbytes={self.nbytes})"


@dataclass(frozen=True, repr=False)
class MappedQuantizedRows:
    """A quantized table left in its file form (memory-mapped) and converted to the canonical
    form a few rows at a time. An embedding lookup reads one row per token, so a table that
    only serves lookups (an untied embedding) need not be converted, or held, whole."""
    shape: tuple[int, int]                               # (rows, in)
    raw: np.ndarray                                      # uint8 [rows, bytes per row], mapped
    rows_to_canonical: Callable[[np.ndarray], QuantizedTensor]
    dtype_name: str

    @property
    def nbytes(self) -> int:
        return self.raw.nbytes

    def rows(self, ids) -> QuantizedTensor:
        """The canonical form of just these rows; the table's pages are given back after
        (MappedRows says why)."""
        picked = self.raw[np.asarray(ids)]
        drop_pages(self.raw)
        return self.rows_to_canonical(picked)

    def __repr__(self):
        return f"MappedQuantizedRows(shape={self.shape}, {self.dtype_name}, nbytes={self.nbytes})"


def lookup_only(table):
    """An untied embedding table as loaded: a mapped float array becomes MappedRows."""
    bits = getattr(table, "bits", table)
    if isinstance(bits, np.ndarray) and mapping_of(bits) is not None:
        return MappedRows(table)
    return table


def lookup_rows(table, ids):
    """(table, ids) for be.embed. A table left in its mapped file (MappedRows,
    MappedQuantizedRows) gives up only the rows asked for, and the ids become 0 .. T-1; the
    backends' embed never sees a mapped table. Any other table is passed as it is."""
    if isinstance(table, (MappedRows, MappedQuantizedRows)):
        return table.rows(ids), np.arange(len(ids), dtype=np.int64)
    return table, ids
