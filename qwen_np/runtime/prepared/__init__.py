"""The prepared-model cache: a model as a backend prepared it, kept on disk, so that a second
start maps one file instead of converting every tensor again.

A cold `load` of the real GGUF (Qwen2.5-Coder-0.5B Q4_K_M) converts every block tensor to the
canonical form (about 1.7 s), re-lays it as the Numba backend's row tiles (0.2 s) and builds
the tokenizer from the metadata (0.4 s). The result of all three is written here once, one
file per model, backend and dtype; a later `load` maps that file and is done.

    file_format.py       the file's layout (drawn there); writing a file, rebuilding a model
    sources.py           the key: the model's source files hashed (a stat index spares
                         hashing them again) and the loading code's text stamped
    array_reader.py      reading the arrays into place in threads, checking each crc32
    tokenizer_store.py   what is stored of the tokenizer, and building it again

A file's name comes from the model's real path, the backend and the dtype; its key says what
it was made from. On open: the magic and format, the file's length against the header, the
index's crc32, the key against this process's, then each array's place inside the payload
and the crc32 of every array the model reads (the real GGUF's 548 MB in about 0.07 s: two
threads read through buffers, so the pages are not mapped for it; the zero padding between
arrays is never read, and not checked).
Any mismatch, or anything malformed, prints one line on stderr saying why, and the model is
loaded from its own files and the file written again.

Where and when: in $QWEN_NP_CACHE_DIR, else in prepared/ under the folder apps/fetch.py downloads
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
"""

from __future__ import annotations

import hashlib
import mmap
import os
import sys
from dataclasses import dataclass

import numpy as np

from qwen_np.model.config import QwenConfig
from qwen_np.tensors.dense import BFloat16Array
from qwen_np.errors import QwenNpError
from qwen_np.runtime.prepared.file_format import (CACHE_FORMAT, LOADER_TYPES, StaleCache,
                                                  Unstorable, read_index, rebuild,
                                                  write_cache_file)
from qwen_np.runtime.prepared.sources import (SourceChanged, StatIndex, code_stamp,
                                              key_difference, source_files, stat_stamp)
from qwen_np.runtime.prepared.array_reader import ArrayReader, damaged_array, read_arrays
from qwen_np.runtime.prepared.tokenizer_store import built_meanwhile, stored_tokenizer

SUFFIX = ".qnp"


def cache_dir() -> str:
    """$QWEN_NP_CACHE_DIR, else prepared/ in apps/fetch.py's folder ($QWEN_NP_CACHE, else
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
            known = StatIndex(cache_dir())
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


def open_checked(file: str, key: dict, model_path: str, types: dict):
    """(config, tensors, tokenizer factory) from a cache file that passes every check, its
    arrays read into memory, as writable as after a cold load (Numba compiles a kernel per
    argument type, and a read-only array is another type), or, where a cold load maps them
    from the model's file, mapped read-only; StaleCache says which check failed. The
    tokenizer is built while the large arrays are read (reading lets go of the GIL; building
    it does not)."""
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
