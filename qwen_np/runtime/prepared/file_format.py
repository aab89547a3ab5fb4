"""A prepared-model cache file: its layout, writing one, and rebuilding a model from one.

File layout (little-endian; every array starts at a multiple of 64 bytes):

    0             +--------------------------------------------------+
                  | header, 64 bytes                                 |
                  |   magic         8 bytes   "QNPPREP\\0"            |
                  |   format        uint32    CACHE_FORMAT           |
                  |   index crc32   uint32    zlib.crc32 of the index|
                  |   index offset  uint64                           |
                  |   index length  uint64    (then zeros up to 64)  |
    64            +--------------------------------------------------+
                  | payload: the arrays one after another, each      |
                  | followed by zeros up to a multiple of 64 bytes   |
    index offset  +--------------------------------------------------+
                  | index: UTF-8 JSON                                |
    end           +--------------------------------------------------+  = index offset + length

The index comes last because it is written when every array's offset is known:

    {"key": KEY,                     what the file was made from (sources.py)
     "config": {...},                QwenConfig's fields
     "tokenizer": {"source": "tokenizer.json", "json": ARRAY}   tokenizer.json text (UTF-8):
                                     a folder's file as it is, or the JSON of the one built
                                     from a GGUF's metadata ("source": "") or qwen.tiktoken
                  | "source"         not stored: built from the model's files on use
                  | null,            the model has no tokenizer
                                     (built on first use, as after a cold load: from the real
                                     GGUF's JSON in 0.25 s, from its metadata 0.37 s; a thread
                                     would not hide it, `tokenizers` holds the GIL to parse)
     "tensors": {name: TENSOR, ...}}

    ARRAY  = {"dtype": "<u2", "shape": [56, 28, 16], "offset": 4096, "writeable": true,
              "crc32": 3141592653}                 zlib.crc32 of the array's bytes
    TENSOR = {"kind": "array", "array": ARRAY}                       a NumPy array
           | {"kind": "QuantizedTensor" | "BFloat16Array" | a backend's prepared type,
              "fields": {field: ARRAY | null | number | {"tuple": [...]}}}   a dataclass
           | {"kind": "gguf lookup rows", "type": "Q5_0", "n_in": 896, "raw": ARRAY}
                 an untied GGUF embedding left in its block form (formats/gguf_qwen.py)
           | {"kind": "same", "name": other}                         one object, two names

Only these kinds, only the dataclasses named above, and only numeric dtypes are read back:
a cache file holds data and never code (no pickle).

Writing goes array by array, 16 MiB at a time, from the prepared objects, with no
concatenation; a table still mapped from the model's file gives its pages back as it is
copied.
"""

from __future__ import annotations

import json
import mmap
import os
import shutil
import struct
import tempfile
import zlib
from dataclasses import asdict, fields, is_dataclass

import numpy as np

from qwen_np.model.config import QwenConfig, YarnScaling
from qwen_np.tensors.dense import BFloat16Array
from qwen_np.tensors.mapped import MappedQuantizedRows, drop_pages
from qwen_np.tensors.quantized import QuantizedTensor
from qwen_np.formats.gguf_blocks import BLOCK_TYPES
from qwen_np.runtime.prepared.tokenizer_store import tokenizer_factory

CACHE_FORMAT = 1
MAGIC = b"QNPPREP\0"
HEADER = struct.Struct("<8sIIQQ")      # magic, format, index crc32, index offset, index length
HEADER_BYTES = 64
ALIGN = 64
MAX_INDEX_BYTES = 64 << 20
SPARE_BYTES = 64 << 20                 # left free on the disk after writing
WRITE_CHUNK = 16 << 20                 # bytes of an array written (and read from a mapping) at once
LOADER_TYPES = (QuantizedTensor, BFloat16Array)
GGUF_ROWS = "gguf lookup rows"


class StaleCache(Exception):
    """A cache file that is not to be used; the message says why."""


# -- writing ----------------------------------------------------------------------------------

class Unstorable(Exception):
    """A prepared tensor of a kind the cache cannot store."""


class Layout:
    """Assigns each array its offset in the payload (each array object once)."""

    def __init__(self):
        self.arrays: list[tuple[int, np.ndarray]] = []
        self.records: dict[int, dict] = {}
        self.end = HEADER_BYTES

    def put(self, a: np.ndarray) -> dict:
        if id(a) in self.records:
            return self.records[id(a)]
        if a.dtype.kind not in "biuf" or a.dtype.fields is not None:
            raise Unstorable(f"an array of dtype {a.dtype}")
        rec = {"dtype": a.dtype.str, "shape": list(a.shape), "offset": self.end,
               "writeable": bool(a.flags.writeable)}
        self.arrays.append((self.end, a))
        self.records[id(a)] = rec
        self.end += -(-a.nbytes // ALIGN) * ALIGN
        return rec


def describe_tensor(t, layout: Layout, types: dict) -> dict:
    if isinstance(t, np.ndarray):
        return {"kind": "array", "array": layout.put(t)}
    if isinstance(t, MappedQuantizedRows):
        if t.dtype_name not in {v[0] for v in BLOCK_TYPES.values()}:
            raise Unstorable(f"a lookup table of {t.dtype_name}")
        return {"kind": GGUF_ROWS, "type": t.dtype_name, "n_in": int(t.shape[1]),
                "raw": layout.put(t.raw)}
    if is_dataclass(t) and types.get(type(t).__name__) is type(t):
        return {"kind": type(t).__name__,
                "fields": {f.name: describe_value(getattr(t, f.name), layout) for f in fields(t)}}
    raise Unstorable(f"a {type(t).__name__}")


def describe_value(v, layout: Layout):
    if isinstance(v, np.ndarray):
        return layout.put(v)
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, (tuple, list)):
        return {"tuple": [describe_value(x, layout) for x in v]}
    raise Unstorable(f"a field of type {type(v).__name__}")


def write_cache_file(file: str, key: dict, config: QwenConfig, tensors: dict, tokenizer,
                     types: dict) -> None:
    layout = Layout()
    described, first_name = {}, {}
    for name, t in tensors.items():
        if id(t) in first_name:
            described[name] = {"kind": "same", "name": first_name[id(t)]}
            continue
        first_name[id(t)] = name
        try:
            described[name] = describe_tensor(t, layout, types)
        except Unstorable as e:
            raise Unstorable(f"tensor {name} is {e}, which the cache does not store") from None
    tok = tokenizer
    if isinstance(tokenizer, tuple):      # (tokenizer.json text, its file in the folder or "")
        tok = {"source": tokenizer[1], "json": layout.put(np.frombuffer(tokenizer[0], np.uint8))}
    index = {"key": key, "config": asdict(config), "tokenizer": tok,
             "tensors": described}
    needed = layout.end + len(json.dumps(index)) + 4096
    folder = os.path.dirname(file)
    os.makedirs(folder, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if free < needed + SPARE_BYTES:
        raise OSError(0, f"{needed / 2**20:.0f} MiB needed, {free / 2**20:.0f} MiB free", folder)

    def write(f):
        f.write(bytes(HEADER_BYTES))               # the header, written last
        for _, a in layout.arrays:                   # in offset order, one at a time
            data = np.ascontiguousarray(a).reshape(-1).view(np.uint8)
            crc = 0
            for start in range(0, data.size, WRITE_CHUNK):
                part = data[start:start + WRITE_CHUNK]
                crc = zlib.crc32(part, crc)
                f.write(part)
                drop_pages(part)   # a table still mapped from the model's file (an untied
                                   # embedding): its pages go back as they are copied
            layout.records[id(a)]["crc32"] = crc
            f.write(bytes(-a.nbytes % ALIGN))
        raw_index = json.dumps(index, separators=(",", ":")).encode("utf-8")
        f.write(raw_index)
        f.seek(0)
        f.write(HEADER.pack(MAGIC, CACHE_FORMAT, zlib.crc32(raw_index), layout.end,
                            len(raw_index)))

    replace_file(file, write)


def replace_file(path: str, write) -> None:
    """write(f) to a temporary file beside `path`, then rename it into place: a reader sees
    the old file or the whole new one, never a part of it."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


# -- reading ----------------------------------------------------------------------------------

def read_index(f) -> tuple[int, int, dict]:
    """(index crc32, index offset, index) of an open cache file whose header, length and
    index crc32 check out; StaleCache says which did not."""
    head = f.read(HEADER_BYTES)
    if len(head) < HEADER_BYTES or head[:len(MAGIC)] != MAGIC:
        raise StaleCache("not a prepared-model cache file")
    _, fmt, index_crc, index_offset, index_length = HEADER.unpack_from(head)
    if fmt != CACHE_FORMAT:
        raise StaleCache(f"cache format {fmt}, this qwen-np reads {CACHE_FORMAT}")
    size = os.fstat(f.fileno()).st_size
    if size != index_offset + index_length or index_offset < HEADER_BYTES:
        raise StaleCache(f"{size} bytes long, its header says {index_offset + index_length}")
    if index_length > MAX_INDEX_BYTES:
        raise StaleCache(f"an index of {index_length} bytes")
    f.seek(index_offset)
    raw_index = f.read(index_length)
    if zlib.crc32(raw_index) != index_crc:
        raise StaleCache("its index is damaged (crc32 mismatch)")
    return index_crc, index_offset, json.loads(raw_index)


def rebuild(index: dict, m: mmap.mmap, index_offset: int, types: dict, model_path: str):
    """(config, tensors, tokenizer factory, {(offset, bytes): crc32} of the arrays left
    mapped, [(offset, crc32, array, writeable)] of the arrays to read, how many of those
    the tokenizer needs, first in the list) from a cache file's index: the arrays are
    allocated, not yet read."""
    mapped, first_read, to_read = {}, [], []

    def array(rec, map_it: bool = False, first: bool = False) -> np.ndarray:
        dtype = np.dtype(rec["dtype"])
        if dtype.kind not in "biuf" or dtype.fields is not None:
            raise ValueError(f"dtype {rec['dtype']!r}")
        shape = tuple(int(s) for s in rec["shape"])
        count, offset = int(np.prod(shape, dtype=np.int64)), int(rec["offset"])
        if offset % ALIGN or offset < HEADER_BYTES or count < 0 or \
                offset + count * dtype.itemsize > index_offset:
            raise ValueError(f"an array at {offset} outside the payload")
        if map_it or not rec["writeable"]:   # as a cold load has it: mapped from its file
            a = np.frombuffer(m, dtype, count, offset).reshape(shape)
            mapped[offset, count * dtype.itemsize] = int(rec["crc32"])
        else:
            a = np.empty(shape, dtype)
            (first_read if first else to_read).append(
                (offset, int(rec["crc32"]), a, bool(rec["writeable"])))
        return a

    tensors = {}
    for name, d in index["tensors"].items():
        tensors[name] = tensors[d["name"]] if d["kind"] == "same" else \
            rebuild_tensor(d, array, types)
    return config_from_dict(index["config"]), tensors, \
        tokenizer_factory(index["tokenizer"], array, model_path), mapped, first_read + to_read, \
        len(first_read)


def rebuild_tensor(d: dict, array, types: dict):
    kind = d["kind"]
    if kind == "array":
        return array(d["array"])
    if kind == GGUF_ROWS:
        from qwen_np.formats.gguf_qwen import block_lookup_table
        type_id = {v[0]: k for k, v in BLOCK_TYPES.items()}[d["type"]]
        return block_lookup_table(array(d["raw"], map_it=True), type_id, int(d["n_in"]))
    cls = types[kind]
    names = {f.name for f in fields(cls)}
    if set(d["fields"]) != names:
        raise ValueError(f"{kind} has fields {sorted(names)}, the file {sorted(d['fields'])}")
    return cls(**{k: rebuild_value(v, array) for k, v in d["fields"].items()})


def rebuild_value(v, array):
    if isinstance(v, dict):
        return tuple(rebuild_value(x, array) for x in v["tuple"]) if "tuple" in v else array(v)
    return v


def config_from_dict(d: dict) -> QwenConfig:
    names = {f.name for f in fields(QwenConfig)}
    if set(d) != names:
        raise ValueError("the config's fields differ from QwenConfig's")
    d = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
    if d["yarn"] is not None:       # asdict wrote the nested dataclass as a dict
        d["yarn"] = YarnScaling(**d["yarn"])
    return QwenConfig(**d)
