"""The prepared-model cache: a model as a backend prepared it, kept on disk, so that a second
start maps one file instead of converting every tensor again.

A cold `load` of the real GGUF (Qwen2.5-Coder-0.5B Q4_K_M) converts every block tensor to the
canonical form (about 1.7 s), re-lays it as the Numba backend's row tiles (0.2 s) and builds
the tokenizer from the metadata (0.4 s). The result of all three is written here once, one
file per model, backend and dtype; a later `load` maps that file and is done.

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

    {"key": KEY,                     what the file was made from (below)
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
                 an untied GGUF embedding left in its block form (io/gguf_qwen.py)
           | {"kind": "same", "name": other}                         one object, two names

Only these kinds, only the dataclasses named above, and only numeric dtypes are read back:
a cache file holds data and never code (no pickle).

The key, and what is checked on open ("never trusted without checking"):

    KEY = {"format": CACHE_FORMAT, "qwen-np": version, "code": stamp of qwen-np's own sources,
           "backend": "numba", "dtype": "float32", "layout": the backend's prepared layout,
           "sources": {file name: sha256, or null where the file is absent}}

A file's name comes from the model's real path, the backend and the dtype; its key says what
it was made from. On open: the magic and format, the file's length against the header, the
index's crc32, the key against this process's, then each array's place inside the payload
and the crc32 of every array the model reads (the real GGUF's 548 MB in about 0.07 s: two
threads read through buffers, so the pages are not mapped for it; the zero padding between
arrays is never read, and not checked).
Any mismatch, or anything malformed, prints one line on stderr saying why, and the model is
loaded from its own files and the file written again. The sources are, for a GGUF, the file;
for a Hugging Face folder, every file the loader may read (config.json,
generation_config.json, quantize_config.json, the safetensors file or index and shards,
tokenizer.json or qwen.tiktoken), absent ones included, so that a file appearing counts too.
The code stamp digests the (name, size, mtime) of the package's .py files, so that an edited
checkout never reads what older code wrote (the version alone would not change).

Hashing the real GGUF (491 MB) takes 0.26 s, too much for every start, so `sources.json` in
the cache folder maps each source's real path to its (size, mtime_ns, ctime_ns, inode,
device) when it was hashed, and the sha256; when all five are unchanged the stored sha256 is
used without reading the file. Like make, this trusts the file system's metadata. A file
rewritten in place with its size and mtime restored is still noticed (restoring an mtime
sets the ctime to now); a change that keeps all five is not (a clock set back before the
change, a file system that keeps no ctime, bytes changed beneath the file system). A file
changed less than 2 s before it was hashed is hashed again next time (git's "racily clean"
rule), and one that changes while the model loads is not cached.

Where and when: in $QWEN_NP_CACHE_DIR, else in prepared/ under the folder fetch.py downloads
the model into ($QWEN_NP_CACHE, else ~/.cache/qwen-np). `load` uses it by default for the
backends that declare their prepared form (numpy and numba; backends/__init__.py
prepared_form), not for cupy (its prepare uploads to the GPU); `prepared_cache=False` or
QWEN_NP_PREPARED_CACHE=0 turns it off. Only models with quantized tensors are written: a
float model is mapped from its own files already, and a copy would double its disk use. A
file is about the size of the model's tensors in memory (the real 491 MB GGUF's: 548 MB,
for either backend; its untied embedding is kept in its 93 MB of Q5_0 blocks). It is
written after a cold load succeeds, to a temporary file in the same folder, then renamed into
place (two processes loading at once each write a whole file; the last rename wins). A
failure to write (a read-only folder, a full disk: free space is checked first) prints one
line and the load goes on.

Memory: on a hit the arrays are read into the process's own memory, as a cold load's
converted tensors are: NumPy asks the kernel for huge pages for large arrays, and the
kernels stream through those faster than through a mapping of the file's 4 KB pages
(decoding the real GGUF on the numba backend, 2 threads: 44-50 tok/s with every array
mapped from this file, 58-60 with them read; the LM head alone 20.6-22.6 against 33 G
weights/s). Threads (up to 4, as the cores allow) read each array straight into its place
and take its crc32 there. The arrays a cold load leaves mapped from the model's own file
(read-only there: an untied float embedding or LM head, float vectors of a GGUF) and an
untied quantized embedding table stay mapped (read-only), as they are in a cold load, so
that an embedding's pages are given back after each lookup (io/mapped.py) and never count
in the resident set at once. The file itself is never written. Writing goes array by array, 16 MiB at a time,
from the prepared objects, with no concatenation; a table still mapped from the model's
file gives its pages back as it is copied.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import shutil
import stat
import struct
import sys
import tempfile
import threading
import time
import zlib
from dataclasses import asdict, dataclass, fields, is_dataclass

import numpy as np

from qwen_np.model.config import QwenConfig, YarnScaling
from qwen_np.tensors.dense import BFloat16Array
from qwen_np.errors import QwenNpError
from qwen_np.tensors.mapped import drop_pages
from qwen_np.tensors.quantized import QuantizedTensor
from qwen_np.tensors.mapped import MappedQuantizedRows
from qwen_np.formats.gguf_blocks import BLOCK_TYPES
from qwen_np.runtime.tokenizer import Tokenizer

CACHE_FORMAT = 1
MAGIC = b"QNPPREP\0"
HEADER = struct.Struct("<8sIIQQ")      # magic, format, index crc32, index offset, index length
HEADER_BYTES = 64
ALIGN = 64
MAX_INDEX_BYTES = 64 << 20
SPARE_BYTES = 64 << 20                 # left free on the disk after writing
WRITE_CHUNK = 16 << 20                 # bytes of an array written (and read from a mapping) at once
RACY_NS = 2_000_000_000                # a file changed this recently is hashed again next time
STAT_INDEX = "sources.json"
SUFFIX = ".qnp"
# the files of a Hugging Face folder that the loader may read (io/hf_dir.py, config.py,
# io/hf_quantized.py); the shards an index names are added to these
FOLDER_FILES = ("config.json", "generation_config.json", "quantize_config.json",
                "model.safetensors", "model.safetensors.index.json", "tokenizer.json",
                "qwen.tiktoken")
LOADER_TYPES = (QuantizedTensor, BFloat16Array)
GGUF_ROWS = "gguf lookup rows"


class StaleCache(Exception):
    """A cache file that is not to be used; the message says why."""


def cache_dir() -> str:
    """$QWEN_NP_CACHE_DIR, else prepared/ in fetch.py's folder ($QWEN_NP_CACHE, else
    ~/.cache/qwen-np)."""
    from qwen_np.runtime.cache_folder import cache_dir as files_dir
    return os.environ.get("QWEN_NP_CACHE_DIR") or os.path.join(files_dir(), "prepared")


def cache_wanted(setting: bool | None) -> bool:
    """`load`'s prepared_cache argument: True or False, or None for the default: on, unless
    QWEN_NP_PREPARED_CACHE is 0 (or false, no, off)."""
    if setting is not None:
        return bool(setting)
    value = os.environ.get("QWEN_NP_PREPARED_CACHE", "1").strip().lower()
    return value not in ("0", "false", "no", "off")


def warn(message: str) -> None:
    print(f"qwen-np: {message}", file=sys.stderr)


@dataclass
class CacheEntry:
    """The cache file of one model loaded with one backend and dtype, and what a valid one
    must have been made from."""
    model_path: str
    file: str
    fixed_key: dict                  # format, version, code stamp, backend, dtype, layout
    sources: dict                    # file name -> real path, or None (absent)
    stamps: dict                     # file name -> its stat stamp when the load began
    types: dict                      # dataclass name -> the dataclass, for the tensors
    hashes: dict | None = None       # file name -> sha256 (or None), once computed

    def key(self) -> dict:
        """What a valid file must have been made from: the sources hashed once (or their
        hashes taken from the stat index), and checked to be unchanged since the load began
        whenever it is asked for again."""
        if self.hashes is None:
            known = StatIndex()
            self.hashes = {name: None if real is None else known.sha256(real, self.stamps[name])
                           for name, real in self.sources.items()}
            known.save()
        for name, real in self.sources.items():
            if real is not None and stat_stamp(real) != self.stamps[name]:
                raise SourceChanged(f"{real} changed while the model was loading")
        return {**self.fixed_key, "sources": self.hashes}

    def read(self):
        """(config, tensors, tokenizer factory or None) from a valid cache file, else None
        (no file: silently; a file not to be used: one line on stderr saying why)."""
        if not os.path.isfile(self.file):
            return None
        try:
            key = self.key()
        except (OSError, SourceChanged):
            return None          # the load from the model's own files says what is wrong
        try:
            return open_checked(self.file, key, self.model_path, self.types)
        except StaleCache as e:
            warn(f"prepared cache {self.file}: {e}; rebuilding it")
        except (OSError, ValueError, TypeError, LookupError, AttributeError, ArithmeticError,
                RecursionError) as e:      # a malformed index: never trusted, never fatal
            warn(f"prepared cache {self.file}: unreadable ({type(e).__name__}: "
                 f"{str(e).splitlines()[0] if str(e) else ''}); rebuilding it")
        return None

    def write(self, config: QwenConfig, tensors: dict, make_tokenizer):
        """Write the cache file of a model that just loaded (`tensors` as prepared); returns
        the tokenizer factory to use from now on (the tokenizer built here is not built
        twice). Nothing is written for a model without quantized tensors; a failure prints
        one line and is otherwise ignored."""
        if all(isinstance(t, (np.ndarray, BFloat16Array)) for t in tensors.values()):
            return make_tokenizer
        try:
            tokenizer, make_tokenizer = stored_tokenizer(self.model_path, make_tokenizer)
            key = self.key()     # after the tokenizer's file is read: it is checked unchanged
            write_cache_file(self.file, key, config, tensors, tokenizer, self.types)
        except (SourceChanged, Unstorable) as e:
            warn(f"prepared cache not written: {e}")
        except OSError as e:
            warn(f"prepared cache not written: {e.filename or self.file}: "
                 f"{e.strerror or e}")
        return make_tokenizer


def cache_entry(path: str, be, setting: bool | None) -> CacheEntry | None:
    """The cache entry for loading `path` with backend `be`, or None: the cache is off, the
    backend declares no prepared form, or the model's files cannot be listed (the load
    itself then says what is wrong)."""
    from qwen_np.backends import prepared_form
    if not cache_wanted(setting):
        return None
    form = prepared_form(be)
    if form is None:
        return None
    layout, backend_types = form
    try:
        sources = source_files(path)
        stamps = {name: None if real is None else stat_stamp(real)
                  for name, real in sources.items()}
    except (OSError, QwenNpError):
        return None
    if None in (v for k, v in stamps.items() if sources[k] is not None):
        return None              # a source that is not a regular file (a FIFO, a folder)
    from qwen_np.version import __version__
    backend, dtype = getattr(be, "name", type(be).__name__), str(np.dtype(be.dtype))
    fixed_key = {"format": CACHE_FORMAT, "qwen-np": __version__, "code": code_stamp(),
                 "backend": backend, "dtype": dtype, "layout": layout}
    real = os.path.realpath(path)
    name = "".join(c if c.isalnum() or c in "._-" else "_" for c in os.path.basename(real))[:80]
    digest = hashlib.sha256(f"{real}\0{backend}\0{dtype}".encode()).hexdigest()
    file = os.path.join(cache_dir(), f"{name}.{backend}-{dtype}.{digest[:16]}{SUFFIX}")
    types = {t.__name__: t for t in (*LOADER_TYPES, *backend_types)}
    return CacheEntry(path, file, fixed_key, sources, stamps, types)


def stored_tokenizer(model_path: str, make_tokenizer):
    """(what the cache stores of the tokenizer, the factory to keep using):
    - a folder's tokenizer.json: its text as it is, the tokenizer not built (a cold load
      builds it only when it is first used; and `tokenizers` serializes what it has built
      through a table as long as its largest id, which a malformed file can make 2^31 long);
    - a GGUF's or a qwen.tiktoken tokenizer: built (as it would be on first use) and
      serialized, since building it is what the cache saves; its ids are dense from 0;
    - "source" where the text is too long or building it fails (it is then built, and
      refused with the same error, on use); None where the model has none."""
    from qwen_np.formats.hf_dir import tokenizer_file
    from qwen_np.formats.files import MAX_JSON_BYTES
    if make_tokenizer is None:
        return None, None
    if os.path.isdir(model_path) and tokenizer_file(model_path).endswith("tokenizer.json"):
        with open(tokenizer_file(model_path), "rb") as f:
            text = f.read(MAX_JSON_BYTES + 1)
        return ("source" if len(text) > MAX_JSON_BYTES else (text, "tokenizer.json"),
                make_tokenizer)
    try:
        tok = make_tokenizer()
    except QwenNpError:
        return "source", make_tokenizer
    name = "" if tok.source == model_path else os.path.basename(tok.source)
    return (tok.to_json().encode("utf-8"), name), lambda: tok


# -- the model's source files and their hashes ------------------------------------------------

class SourceChanged(Exception):
    """A source file changed between the start of the load and its hashing."""


def source_files(path: str) -> dict:
    """file name -> real path (None where absent) of every file loading `path` may read."""
    if not os.path.isdir(path):
        return {os.path.basename(path): os.path.realpath(path)}
    from qwen_np.formats.hf_dir import INDEX_FILE, read_weight_map
    from qwen_np.formats.files import file_in_folder
    names = {name: os.path.join(path, name) for name in FOLDER_FILES}
    if os.path.lexists(names[INDEX_FILE]):
        for shard in sorted(set(read_weight_map(names[INDEX_FILE]).values())):
            names[shard] = file_in_folder(path, shard, names[INDEX_FILE])
    return {name: os.path.realpath(p) if os.path.lexists(p) else None for name, p in names.items()}


def stat_stamp(real: str) -> list | None:
    """[size, mtime_ns, ctime_ns, inode, device] of a regular file; None for anything else."""
    st = os.stat(real)
    if not stat.S_ISREG(st.st_mode):
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


class StatIndex:
    """`sources.json`: real path -> [size, mtime_ns, ctime_ns, inode, device, sha256] of
    each source file hashed so far. An unreadable one is empty (every source is hashed)."""

    def __init__(self):
        self.path = os.path.join(cache_dir(), STAT_INDEX)
        self.changed = False
        try:
            with open(self.path, "rb") as f:
                d = json.loads(f.read(MAX_INDEX_BYTES))
            files = d["files"] if d["format"] == CACHE_FORMAT else {}
            self.files = {k: v for k, v in files.items()
                          if isinstance(v, list) and len(v) == 6 and isinstance(v[5], str)}
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            self.files = {}

    def sha256(self, real: str, stamp: list) -> str:
        """The sha256 of a source file: the recorded one when its stat stamp is the one
        recorded, else read and hashed (and recorded, unless it changed too recently to be
        sure of). `stamp` is its stamp when the load began: a file that differs from it now
        raises SourceChanged."""
        from qwen_np.runtime.cache_folder import sha256_of
        if stat_stamp(real) != stamp:
            raise SourceChanged(f"{real} changed while the model was loading")
        entry = self.files.get(real)
        if entry is not None and entry[:5] == stamp:
            return entry[5]
        digest = sha256_of(real)
        if stat_stamp(real) != stamp:
            raise SourceChanged(f"{real} changed while the model was loading")
        if time.time_ns() - max(stamp[1], stamp[2]) > RACY_NS:
            self.files[real] = [*stamp, digest]
            self.changed = True
        return digest

    def save(self) -> None:
        """Write it back if `sha256` added to it, without the files that are gone. A failure
        is not reported here: the cache file's write, to the same folder, reports it."""
        if not self.changed:
            return
        text = json.dumps({"format": CACHE_FORMAT, "files": {
            k: v for k, v in self.files.items() if os.path.exists(k)}}, indent=0)
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            replace_file(self.path, lambda f: f.write(text.encode()))
        except OSError:
            pass


def code_stamp() -> str:
    """A digest of the (name, size, mtime_ns) of qwen-np's .py files, its backends' included."""
    from qwen_np import backends
    h = hashlib.sha256()
    for folder in (os.path.dirname(os.path.dirname(__file__)), os.path.dirname(backends.__file__)):
        for root, dirs, files in os.walk(folder):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            for name in sorted(f for f in files if f.endswith(".py")):
                st = os.stat(os.path.join(root, name))
                rel = os.path.relpath(os.path.join(root, name), folder)
                h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def key_difference(stored, current: dict) -> str | None:
    """Why a file made with key `stored` is not for this load (None: it is), comparing the
    parts `current` has."""
    if not isinstance(stored, dict):
        return "it has no key"
    if stored.get("sources") != current["sources"]:
        old = stored.get("sources") if isinstance(stored.get("sources"), dict) else {}
        for name, digest in current["sources"].items():
            if old.get(name) != digest:
                return (f"the model's file {name} " +
                        ("changed" if digest and old.get(name) else
                         "appeared" if digest else "is gone"))
        return "the model's files differ"
    for part, what in (("qwen-np", "qwen-np version"), ("code", "qwen-np's source files"),
                       ("backend", "backend"), ("dtype", "dtype"),
                       ("layout", "backend's prepared layout")):
        if part in current and stored.get(part) != current[part]:
            return f"made by another {what} ({stored.get(part)!r}, now {current[part]!r})"
    if {k: stored.get(k) for k in current} != current:
        return "its key differs"
    return None


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


def open_checked(file: str, key: dict, model_path: str, types: dict):
    """(config, tensors, tokenizer factory) from a cache file that passes every check, its
    arrays read into memory, as writable as after a cold load (Numba compiles a kernel per
    argument type, and a read-only array is another type), or, where a cold load maps them
    from the model's file, mapped read-only; StaleCache says which check failed. The tokenizer is built while
    the large arrays are read (reading lets go of the GIL; building it does not)."""
    with open(file, "rb") as f:
        _, index_offset, index = read_index(f)
        why = key_difference(index.get("key"), key)
        if why:
            raise StaleCache(why)
        m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        config, tensors, make_tokenizer, mapped, to_read, n_first = rebuild(
            index, m, index_offset, types, model_path)
        damaged = read_arrays(file, to_read[:n_first])       # the tokenizer's text
        if damaged is None:
            reading = ArrayReader(file, to_read[n_first:])
            make_tokenizer = built_meanwhile(make_tokenizer)
            damaged = reading.join()
        if damaged is None:
            damaged = damaged_array(file, mapped)
    if damaged is not None:
        raise StaleCache(f"its data is damaged (crc32 mismatch in the array at byte {damaged})")
    return config, tensors, make_tokenizer


def built_meanwhile(make_tokenizer):
    """The tokenizer built now, as a factory; where building it fails, the factory itself,
    which fails the same way when the tokenizer is first used (as after a cold load)."""
    if make_tokenizer is None:
        return None
    try:
        tokenizer = make_tokenizer()
    except Exception:   # noqa: BLE001 (raised again, as a cold load raises it, on first use)
        return make_tokenizer
    return lambda: tokenizer


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


def read_arrays(file: str, arrays: list) -> int | None:
    """Read each (offset, crc32, array, writeable) of the file into its array (see
    ArrayReader) and wait; the offset of the first damaged one, or None."""
    return ArrayReader(file, arrays).join()


class ArrayReader:
    """Reads each (offset, crc32, array, writeable) of a file into its array, in threads (up
    to 4, as the cores allow; reading and zlib.crc32 let go of the GIL), started at once.
    join() waits, makes read-only the arrays that were so, and returns the offset of the
    first array whose bytes do not have its crc32 (or were cut short), None if all do."""

    def __init__(self, file: str, arrays: list):
        self.file, self.arrays, self.bad = file, arrays, []
        n = max(1, min(4, os.cpu_count() or 1, len(arrays)))
        shares, totals = [[] for _ in range(n)], [0] * n
        for offset, crc, a, _ in sorted(arrays, key=lambda x: -x[2].nbytes):
            i = totals.index(min(totals))
            shares[i].append((offset, crc, a))
            totals[i] += a.nbytes
        self.threads = [threading.Thread(target=self.read, args=(share,)) for share in shares
                        if share]
        for t in self.threads:
            t.start()

    def read(self, share):
        try:
            with open(self.file, "rb", buffering=0) as f:
                for offset, crc, a in share:
                    view = memoryview(a.reshape(-1).view(np.uint8)) if a.size else b""
                    f.seek(offset)
                    got = 0
                    while got < len(view):
                        k = f.readinto(view[got:])
                        if not k:
                            break
                        got += k
                    if got != len(view) or zlib.crc32(view) != crc:
                        self.bad.append(offset)
        except OSError:
            self.bad.append(share[0][0])

    def join(self) -> int | None:
        for t in self.threads:
            t.join()
        for _, _, a, writeable in self.arrays:
            a.flags.writeable = writeable
        return min(self.bad) if self.bad else None


def damaged_array(file: str, arrays: dict, chunk: int = 8 << 20) -> int | None:
    """The offset of the first array (of {(offset, bytes): crc32}) whose bytes in the file do
    not have its crc32; None if all do. Threads (up to 4, as the cores allow) each take a
    share of the bytes and read it through a buffer of their own: the pages are not mapped,
    so they do not count in the resident set, and reading and zlib.crc32 let go of the GIL."""
    n = max(1, min(4, os.cpu_count() or 1, len(arrays)))
    shares, totals = [[] for _ in range(n)], [0] * n
    for (offset, size), crc in sorted(arrays.items(), key=lambda a: -a[0][1]):
        i = totals.index(min(totals))
        shares[i].append((offset, size, crc))
        totals[i] += size
    bad = []

    def check(share):
        buf = memoryview(bytearray(chunk))
        try:
            with open(file, "rb", buffering=0) as f:
                for offset, size, crc in share:
                    got, pos, end = 0, offset, offset + size
                    f.seek(offset)
                    while pos < end:
                        k = f.readinto(buf[:min(chunk, end - pos)])
                        if not k:
                            break
                        got, pos = zlib.crc32(buf[:k], got), pos + k
                    if pos != end or got != crc:
                        bad.append(offset)
        except OSError:
            bad.append(share[0][0])

    threads = [threading.Thread(target=check, args=(share,)) for share in shares[1:]]
    for t in threads:
        t.start()
    check(shares[0])
    for t in threads:
        t.join()
    return min(bad) if bad else None


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


def tokenizer_source(tok: dict, model_path: str) -> str:
    """The file a stored tokenizer came from: a file of the model's folder, or the model."""
    return os.path.join(model_path, tok["source"]) if tok["source"] else model_path


def tokenizer_factory(tok, array, model_path: str):
    """The model's tokenizer, built on first use (as after a cold load): from the stored
    tokenizer.json text, or from the model's own files ("source"); None if it has none."""
    if tok is None:
        return None
    if tok == "source":
        from qwen_np.runtime.tokenizer import load_tokenizer
        return lambda: load_tokenizer(model_path)
    text = array(tok["json"], first=True)
    source = tokenizer_source(tok, model_path)

    def make() -> Tokenizer:
        json_text = text.tobytes().decode("utf-8")
        drop_pages(text)          # the text's pages are not needed once it is a tokenizer
        return Tokenizer.from_json(json_text, source)
    return make
