"""Reading .safetensors files with NumPy alone, memory-mapped.

File layout (little-endian):
    bytes 0..7        N: uint64, length of the JSON header
    bytes 8..8+N      JSON: {name: {"dtype": "F32", "shape": [..], "data_offsets": [b, e]}, ...,
                             "__metadata__": {...}}
    bytes 8+N..       the data; tensor `name` is bytes [8+N+b, 8+N+e), row-major

Every tensor comes back as a read-only view into one memory map of the file (tensors/mapped.py), so loading reads
only the header; pages of weights are read when an op touches them. BF16 comes back as a
`BFloat16Array` of the raw bits (NumPy has no bfloat16; the `safetensors` package cannot give
one to NumPy either).
"""

from __future__ import annotations

import json
import math
import os
import struct

import numpy as np

from qwen_np.tensors.dense import BFloat16Array
from qwen_np.errors import FormatError
from qwen_np.tensors.mapped import map_file
from qwen_np.formats.files import parse_json, regular_file
from qwen_np.errors import short_repr

NUMPY_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
    "U8": np.uint8, "U16": np.uint16, "U32": np.uint32, "BOOL": np.bool_,
    "BF16": np.uint16,  # raw bits, wrapped in BFloat16Array below
}


MAX_HEADER_BYTES = 100_000_000   # the safetensors library's own limit on the JSON header


def read_safetensors_header(path: str) -> tuple[dict, int, dict]:
    """The header's tensor entries, the offset at which the data section starts, and the
    header's __metadata__ ({} if none). Its length is checked against the file before it is
    read, and its JSON against the layout above."""
    regular_file(path)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise FormatError(f"{path}: truncated safetensors file ({size} bytes, no header)")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise FormatError(f"{path}: truncated safetensors file (header of {n} bytes, "
                              f"file of {size})")
        if n > MAX_HEADER_BYTES:
            raise FormatError(f"{path}: safetensors header of {n} bytes (the format allows "
                              f"{MAX_HEADER_BYTES})")
        header = parse_json(f.read(n), path, "safetensors header")
    if not isinstance(header, dict):
        raise FormatError(f"{path}: not a safetensors file (header is not a JSON object)")
    meta = header.pop("__metadata__", None)
    if meta is not None and not isinstance(meta, dict):
        raise FormatError(f"{path}: __metadata__ is not a JSON object")
    return header, 8 + n, meta or {}


def tensor_entries(header: dict, data_bytes: int, path: str) -> dict:
    """name -> (dtype code, shape, begin, end), every entry checked: a known dtype, a shape of
    non-negative integers whose bytes equal its offsets' span, and offsets that tile the data
    section exactly: sorted by offset, each tensor begins where the one before ends, the first
    at 0 and the last ending at the end of the file (as the safetensors library requires, so a
    header length that is off by a byte, or tensors that overlap, are refused)."""
    entries = {}
    for name, info in header.items():
        if not isinstance(info, dict):
            raise FormatError(f"{path}: tensor {name}: header entry is not a JSON object")
        dtype_code, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if not isinstance(dtype_code, str) or dtype_code not in NUMPY_DTYPES:
            raise FormatError(f"{path}: tensor {name}: unsupported dtype {short_repr(dtype_code)}")
        if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
            raise FormatError(f"{path}: tensor {name}: shape {short_repr(shape)} is not a list of "
                              f"non-negative integers")
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(map(_is_count, offsets)) \
                or offsets[0] > offsets[1]:
            raise FormatError(f"{path}: tensor {name}: data_offsets {short_repr(offsets)} are not "
                              f"[begin, end] with 0 <= begin <= end")
        begin, end = offsets
        expected = math.prod(shape) * np.dtype(NUMPY_DTYPES[dtype_code]).itemsize
        if end - begin != expected:
            raise FormatError(f"{path}: tensor {name}: {end - begin} bytes for shape {shape} "
                              f"{dtype_code} (expected {expected})")
        entries[name] = (dtype_code, tuple(shape), begin, end)
    position = 0
    for name, (_, _, begin, end) in sorted(entries.items(), key=lambda e: (e[1][2], e[1][3])):
        if end > data_bytes:
            raise FormatError(f"{path}: truncated: tensor {name} ends at byte {end} of the data "
                              f"section, which has only {data_bytes}")
        if begin != position:
            raise FormatError(f"{path}: tensor {name} begins at byte {begin} of the data "
                              f"section; the tensors before it end at {position} (tensors must "
                              f"follow each other without gaps or overlaps)")
        position = end
    if position != data_bytes:
        raise FormatError(f"{path}: the tensors end at byte {position} of the data section, "
                          f"which has {data_bytes} (header length or offsets are wrong)")
    return entries


def open_safetensors(path: str) -> dict[str, np.ndarray | BFloat16Array]:
    """All tensors of one file, as memory-mapped views (nothing is copied)."""
    header, data_start, _ = read_safetensors_header(path)
    entries = tensor_entries(header, os.path.getsize(path) - data_start, path)
    mm = map_file(path)
    tensors = {}
    for name, (dtype_code, shape, begin, end) in entries.items():
        raw = mm[data_start + begin: data_start + end]
        arr = raw.view(NUMPY_DTYPES[dtype_code]).reshape(shape)
        tensors[name] = BFloat16Array(arr) if dtype_code == "BF16" else arr
    return tensors


def _is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**63


SAFETENSORS_CODES = {np.dtype(v): k for k, v in NUMPY_DTYPES.items() if k != "BF16"}


def write_safetensors(path: str, tensors: dict, metadata: dict | None = None) -> None:
    """Write tensors (NumPy arrays, or BFloat16Array kept as BF16) in the layout above."""
    header, chunks, offset = {}, [], 0
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    for name, t in tensors.items():
        if isinstance(t, BFloat16Array):
            code, arr = "BF16", np.ascontiguousarray(t.bits)
        else:
            arr = np.ascontiguousarray(t)
            if arr.dtype not in SAFETENSORS_CODES:
                raise ValueError(f"tensor {name}: dtype {arr.dtype} cannot be written")
            code = SAFETENSORS_CODES[arr.dtype]
        raw = arr.tobytes()
        header[name] = {"dtype": code, "shape": list(arr.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # keep the data section 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for raw in chunks:
            f.write(raw)
