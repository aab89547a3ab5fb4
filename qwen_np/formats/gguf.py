"""Reading GGUF files (llama.cpp's format): header, metadata, tensor infos, mapped data.

File layout (little-endian; ggml's docs/gguf.md):
    uint32  magic "GGUF" (0x46554747)      uint32  version (2 or 3)
    uint64  tensor_count                   uint64  metadata_kv_count
    metadata_kv_count x { string key, uint32 value_type, value }
        value types 0..12: u8 i8 u16 i16 u32 i32 f32 bool string array u64 i64 f64
        string = uint64 length + UTF-8 bytes; array = uint32 type + uint64 count + values
    tensor_count x { string name, uint32 n_dims, uint64 ne[n_dims], uint32 type, uint64 offset }
        ne[0] varies fastest: a PyTorch [out, in] weight is stored as ne = [in, out]
    padding to `general.alignment` (default 32), then the data section; each tensor's
    offset is relative to its start.

Here the container is parsed; the block math of each tensor type is in qwen_np/formats/gguf_blocks.py.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np

from qwen_np.errors import FormatError, UnsupportedModel
from qwen_np.formats.gguf_blocks import BLOCK_TYPES
from qwen_np.tensors.mapped import map_file
from qwen_np.formats.files import regular_file
from qwen_np.errors import short_repr

GGUF_MAGIC = 0x46554747
SUPPORTED_VERSIONS = (2, 3)
# type id -> (name, elements per block, bytes per block) for the float types
FLOAT_TYPES = {0: ("F32", 1, 4), 1: ("F16", 1, 2), 30: ("BF16", 1, 2)}
# every ggml type id, so that an unsupported one can be named
GGML_TYPE_NAMES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0",
                   9: "Q8_1", 10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K",
                   15: "Q8_K", 16: "IQ2_XXS", 17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S",
                   20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S", 23: "IQ4_XS", 24: "I8", 25: "I16",
                   26: "I32", 27: "I64", 28: "F64", 29: "IQ1_M", 30: "BF16", 34: "TQ1_0",
                   35: "TQ2_0", 39: "MXFP4"}
SCALAR_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
                  10: "<Q", 11: "<q", 12: "<d"}
ARRAY_DTYPES = {0: np.uint8, 1: np.int8, 2: np.uint16, 3: np.int16, 4: np.uint32, 5: np.int32,
                6: np.float32, 7: np.bool_, 10: np.uint64, 11: np.int64, 12: np.float64}


@dataclass
class GGUFTensor:
    name: str
    type_id: int
    ne: tuple[int, ...]      # as in the file: ne[0] fastest
    data: np.ndarray         # uint8 view of its bytes in the mapped file

    @property
    def type_name(self) -> str:
        return GGML_TYPE_NAMES.get(self.type_id, f"type {self.type_id}")

    @property
    def shape(self) -> tuple[int, ...]:
        """NumPy / PyTorch order: ne reversed ([out, in] for a matrix)."""
        return tuple(reversed(self.ne))


# Limits of the format (ggml's gguf.cpp refuses files past them, and so does this reader)
MAX_KEY_BYTES = 65535            # a metadata key (the spec: at most 2^16 - 1 bytes)
MAX_NAME_BYTES = 63              # a tensor name (GGML_MAX_NAME is 64, with the NUL)
MAX_DIMS = 4                     # GGML_MAX_DIMS
# Limits of this reader, far above any real file, so that a corrupted length cannot make it
# copy gigabytes or build a list of millions of items before it notices
MAX_STRING_BYTES = 16 << 20      # a metadata string (a chat template is some kilobytes)
MAX_ARRAY_ITEMS = 1 << 24        # a metadata array (Qwen's vocabulary: 151,936 tokens)


class _Cursor:
    """Reads little-endian values from the mapped bytes. Every length and count is checked
    against the bytes left in the file before anything is read or allocated."""

    def __init__(self, buf: np.ndarray, path: str):
        self.mv, self.pos, self.path = memoryview(buf), 0, path

    def left(self) -> int:
        return len(self.mv) - self.pos

    def need(self, n: int) -> None:
        if n > self.left():
            raise FormatError(f"{self.path}: truncated GGUF header (needs byte {self.pos + n}, "
                              f"file has {len(self.mv)})")

    def scalar(self, fmt: str):
        size = struct.calcsize(fmt)
        self.need(size)
        (v,) = struct.unpack_from(fmt, self.mv, self.pos)
        self.pos += size
        return v

    def count(self, what: str, item_bytes: int, limit: int) -> int:
        """A uint64 count of items of at least item_bytes each, checked against the bytes
        left and against `limit`."""
        n = self.scalar("<Q")
        if n > limit or n * item_bytes > self.left():
            raise FormatError(f"{self.path}: {what} of {n} at byte {self.pos - 8} cannot be "
                              f"right (file has {self.left()} bytes left)")
        return n

    def string(self, what: str = "string", limit: int = MAX_STRING_BYTES) -> str:
        n = self.count(f"{what} length", 1, limit)
        out = str(self.mv[self.pos:self.pos + n], "utf-8", "replace")
        self.pos += n
        return out

    def strings(self, count: int) -> list[str]:
        """`count` strings in a row (the vocabulary and merges: some 300,000 of them), read in
        one tight loop."""
        mv, pos, end = self.mv, self.pos, len(self.mv)
        length = struct.Struct("<Q").unpack_from
        out = []
        for _ in range(count):
            if pos + 8 > end:
                break
            (n,) = length(mv, pos)
            pos += 8
            if pos + n > end:
                break
            out.append(str(mv[pos:pos + n], "utf-8", "replace"))
            pos += n
        self.pos = pos
        if len(out) < count:
            self.need(end - pos + 1)   # raises the truncated-header error
        return out

    def value(self, vtype: int, key: str):
        """One metadata value. Arrays hold scalars or strings; an array of arrays is refused,
        as ggml's reader refuses it (so nothing here recurses)."""
        if vtype in SCALAR_FORMATS:
            return self.scalar(SCALAR_FORMATS[vtype])
        if vtype == 8:
            return self.string(f"metadata {key}: string")
        if vtype == 9:
            etype = self.scalar("<I")
            if etype in ARRAY_DTYPES:
                dt = np.dtype(ARRAY_DTYPES[etype]).newbyteorder("<")
                n = self.count(f"metadata {key}: array", dt.itemsize, MAX_ARRAY_ITEMS)
                out = np.frombuffer(self.mv, dtype=dt, count=n, offset=self.pos)
                self.pos += n * dt.itemsize
                return out      # a read-only view of the mapped file: nothing copied
            if etype == 8:
                return self.strings(self.count(f"metadata {key}: array", 8, MAX_ARRAY_ITEMS))
            raise FormatError(f"{self.path}: metadata {key}: array of value type {etype} is "
                              f"not supported (arrays hold numbers, booleans or strings)")
        raise FormatError(f"{self.path}: metadata {key}: unknown value type {vtype}")


def read_gguf(path: str) -> tuple[dict, dict[str, GGUFTensor]]:
    """(metadata, tensors by GGUF name), every tensor a view into the mapped file.

    Checked as ggml's own reader checks a file: no repeated key or tensor name, 1 to 4
    dimensions, an alignment that is a power of two, and tensors that follow each other in
    the data section (each at the previous one's end, rounded up to the alignment), within
    the file."""
    buf = map_file(regular_file(path))
    cur = _Cursor(buf, path)
    if len(buf) < 4 or cur.scalar("<I") != GGUF_MAGIC:
        raise FormatError(f"{path}: not a GGUF file (wrong magic)")
    version = cur.scalar("<I")
    if version not in SUPPORTED_VERSIONS:
        raise FormatError(f"{path}: unsupported GGUF version {version} (supported: 2, 3)")
    # the smallest metadata entry: key length, one key byte, value type, one value byte
    n_tensors = cur.scalar("<Q")
    n_kv = cur.count("metadata count", 8 + 1 + 4 + 1, MAX_ARRAY_ITEMS)
    meta = {}
    for _ in range(n_kv):
        key = cur.string("metadata key", MAX_KEY_BYTES)
        if key in meta:
            raise FormatError(f"{path}: metadata key {key} appears twice")
        meta[key] = cur.value(cur.scalar("<I"), key)
    # the smallest tensor info: name length, n_dims, one dimension, type, offset
    if n_tensors * (8 + 4 + 8 + 4 + 8) > cur.left():
        raise FormatError(f"{path}: tensor count {n_tensors} cannot be right (file has "
                          f"{cur.left()} bytes left)")
    infos = {}
    for _ in range(n_tensors):
        name = cur.string("tensor name", MAX_NAME_BYTES)
        if name in infos:
            raise FormatError(f"{path}: tensor {name} appears twice")
        n_dims = cur.scalar("<I")
        if not 1 <= n_dims <= MAX_DIMS:
            raise FormatError(f"{path}: tensor {name} has {n_dims} dimensions (1 to {MAX_DIMS})")
        ne = tuple(cur.scalar("<Q") for _ in range(n_dims))
        infos[name] = (ne, cur.scalar("<I"), cur.scalar("<Q"))
    align = alignment(meta, path)
    data_start = -(-cur.pos // align) * align
    tensors, expected_offset = {}, 0
    for name, (ne, type_id, offset) in infos.items():
        if type_id in FLOAT_TYPES:
            _, block, size = FLOAT_TYPES[type_id]
        elif type_id in BLOCK_TYPES:
            _, block, size = BLOCK_TYPES[type_id][:3]
        else:
            raise UnsupportedModel(f"{path}: tensor {name} has type "
                                   f"{GGML_TYPE_NAMES.get(type_id, type_id)}, which qwen-np does "
                                   f"not read (supported: F32, F16, BF16, "
                                   f"{', '.join(v[0] for v in BLOCK_TYPES.values())})")
        if ne[0] % block:
            raise FormatError(f"{path}: tensor {name}: row of {ne[0]} is not a whole number of "
                              f"{block}-element blocks")
        nbytes = math.prod(ne) // block * size          # Python integers: no overflow
        if offset != expected_offset:
            raise FormatError(f"{path}: tensor {name} has data offset {offset}; the tensors "
                              f"before it end at {expected_offset}")
        begin = data_start + offset
        if begin + nbytes > len(buf):
            raise FormatError(f"{path}: truncated: tensor {name} needs bytes {begin}..{begin + nbytes}"
                              f" but the file has {len(buf)}")
        tensors[name] = GGUFTensor(name, type_id, ne, buf[begin:begin + nbytes])
        expected_offset = -(-(offset + nbytes) // align) * align
    return meta, tensors


def alignment(meta: dict, path: str) -> int:
    """general.alignment: a uint32 power of two (32 when absent)."""
    align = meta.get("general.alignment", 32)
    if not isinstance(align, int) or isinstance(align, bool) or align <= 0 \
            or align & (align - 1):
        raise FormatError(f"{path}: general.alignment {short_repr(align)} is not a power of two")
    return align
