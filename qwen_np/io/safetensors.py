"""Reading .safetensors files with NumPy alone, memory-mapped.

File layout (little-endian):
    bytes 0..7        N: uint64, length of the JSON header
    bytes 8..8+N      JSON: {name: {"dtype": "F32", "shape": [..], "data_offsets": [b, e]}, ...,
                             "__metadata__": {...}}
    bytes 8+N..       the data; tensor `name` is bytes [8+N+b, 8+N+e), row-major

Every tensor comes back as a read-only view into one memory map of the file (io/mapped.py), so loading reads
only the header; pages of weights are read when an op touches them. BF16 comes back as a
`BFloat16Array` of the raw bits (NumPy has no bfloat16; the `safetensors` package cannot give
one to NumPy either).
"""

from __future__ import annotations

import json
import os
import struct

import numpy as np

from ..dense import BFloat16Array
from ..errors import FormatError
from .mapped import map_file

NUMPY_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
    "U8": np.uint8, "U16": np.uint16, "U32": np.uint32, "BOOL": np.bool_,
    "BF16": np.uint16,  # raw bits, wrapped in BFloat16Array below
}


def read_safetensors_header(path: str) -> tuple[dict, int]:
    """The header dictionary and the offset at which the data section starts."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise FormatError(f"{path}: truncated safetensors file ({size} bytes, no header)")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise FormatError(f"{path}: truncated safetensors file (header of {n} bytes, "
                              f"file of {size})")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise FormatError(f"{path}: not a safetensors file (header is not JSON)") from None
    if not isinstance(header, dict):
        raise FormatError(f"{path}: not a safetensors file (header is not a JSON object)")
    header.pop("__metadata__", None)
    return header, 8 + n


def open_safetensors(path: str) -> dict[str, np.ndarray | BFloat16Array]:
    """All tensors of one file, as memory-mapped views (nothing is copied)."""
    header, data_start = read_safetensors_header(path)
    data_bytes = os.path.getsize(path) - data_start
    mm = map_file(path)
    tensors = {}
    for name, info in header.items():
        dtype_code = info.get("dtype")
        if dtype_code not in NUMPY_DTYPES:
            raise FormatError(f"{path}: tensor {name}: unsupported dtype {dtype_code!r}")
        dtype = np.dtype(NUMPY_DTYPES[dtype_code])
        shape = tuple(int(s) for s in info["shape"])
        begin, end = (int(o) for o in info["data_offsets"])
        expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if end - begin != expected:
            raise FormatError(f"{path}: tensor {name}: {end - begin} bytes for shape {list(shape)} "
                              f"{dtype_code} (expected {expected})")
        if end > data_bytes:
            raise FormatError(f"{path}: truncated: tensor {name} ends at byte {end} of the data "
                              f"section, which has only {data_bytes}")
        raw = mm[data_start + begin: data_start + end]
        arr = raw.view(dtype).reshape(shape)
        tensors[name] = BFloat16Array(arr) if dtype_code == "BF16" else arr
    return tensors


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
