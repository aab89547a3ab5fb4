"""A prepared-model cache file's key: what it was made from (the model's source files, hashed,
and qwen-np's own code), and the stat index that spares hashing an unchanged source again.

The key, which a file must match to be used ("never trusted without checking"; the other
checks on open are listed in __init__.py):

    KEY = {"format": CACHE_FORMAT, "qwen-np": version,
           "code": a stamp of the code that reads and prepares a model (LAYOUT_CODE),
           "backend": "numba", "dtype": "float32", "layout": the backend's prepared layout,
           "sources": {file name: sha256, or null where the file is absent}}

The sources are, for a GGUF, the file; for a Hugging Face folder, every file the loader may
read (config.json, generation_config.json, quantize_config.json, the safetensors file or
index and shards, tokenizer.json or qwen.tiktoken), absent ones included, so that a file
appearing counts too. The code stamp digests the text of the modules that read and prepare a
model (LAYOUT_CODE), so that a checkout whose loading code was edited never reads what older
code wrote (the version alone would not change), while an edit anywhere else (the kernels,
the forward pass, the server) keeps the 548 MB file of the real model valid.

Hashing the real GGUF (491 MB) takes 0.26 s, too much for every start, so `sources.json` in
the cache folder maps each source's real path to its (size, mtime_ns, ctime_ns, inode,
device) when it was hashed, and the sha256; when all five are unchanged the stored sha256 is
used without reading the file. Like make, this trusts the file system's metadata. A file
rewritten in place with its size and mtime restored is still noticed (restoring an mtime
sets the ctime to now); a change that keeps all five is not (a clock set back before the
change, a file system that keeps no ctime, bytes changed beneath the file system). A file
changed less than 2 s before it was hashed is hashed again next time (git's "racily clean"
rule), and one that changes while the model loads is not cached.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import time

from qwen_np.runtime.prepared.file_format import CACHE_FORMAT, MAX_INDEX_BYTES, replace_file

RACY_NS = 2_000_000_000                # a file changed this recently is hashed again next time
STAT_INDEX = "sources.json"
# the files of a Hugging Face folder that the loader may read (formats/hf_dir.py, model/config.py,
# formats/hf_quantized.py); the shards an index names are added to these
FOLDER_FILES = ("config.json", "generation_config.json", "quantize_config.json",
                "model.safetensors", "model.safetensors.index.json", "tokenizer.json",
                "qwen.tiktoken")


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
    """`sources.json` in the cache folder `folder`: real path -> [size, mtime_ns, ctime_ns,
    inode, device, sha256] of each source file hashed so far. An unreadable one is empty
    (every source is hashed)."""

    def __init__(self, folder: str):
        self.path = os.path.join(folder, STAT_INDEX)
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


# The modules whose functions run while a model is read and prepared: what a cache file holds
# is what they make, so the code stamp digests their text, and only theirs (tests/
# test_prepared_cache.py traces cold loads of every kind of model and fails when a module not
# named here runs). An edit to the kernels, the forward pass, the server or the tools leaves
# every cache file valid; the kernels' reading of a backend's prepared form is the backend's
# `prepared_layout` version, a part of the key of its own.
LAYOUT_CODE = (
    "qwen_np.formats.awq", "qwen_np.formats.files", "qwen_np.formats.generation_config",
    "qwen_np.formats.gguf", "qwen_np.formats.gguf_blocks", "qwen_np.formats.gguf_qwen",
    "qwen_np.formats.gptq", "qwen_np.formats.hf_dir", "qwen_np.formats.hf_quantized",
    "qwen_np.formats.open", "qwen_np.formats.qwen_v1", "qwen_np.formats.safetensors",
    "qwen_np.model.config", "qwen_np.model.kv_cache", "qwen_np.model.sampling",
    "qwen_np.model.weights",
    "qwen_np.tensors.dense", "qwen_np.tensors.mapped", "qwen_np.tensors.packing",
    "qwen_np.tensors.quantized",
    "qwen_np.runtime.cache_folder", "qwen_np.runtime.load", "qwen_np.runtime.process_memory",
    "qwen_np.runtime.tokenizer", "qwen_np.runtime.prepared",
    "qwen_np.runtime.prepared.array_reader", "qwen_np.runtime.prepared.file_format",
    "qwen_np.runtime.prepared.sources", "qwen_np.runtime.prepared.tokenizer_store",
    "qwen_np.backends", "qwen_np.backends.process_settings",
    "qwen_np.backends.numpy.backend", "qwen_np.backends.numba.backend",
    "qwen_np.backends.numba.floats", "qwen_np.backends.numba.tiles",
)


def code_stamp() -> str:
    """A digest of the text of the LAYOUT_CODE modules (their bytes, not their mtimes: a
    checkout or a touch that leaves them as they were keeps every cache file valid)."""
    import importlib.util
    h = hashlib.sha256()
    for name in LAYOUT_CODE:
        spec = importlib.util.find_spec(name)
        with open(spec.origin, "rb") as f:
            h.update(f"{name}\0".encode() + hashlib.sha256(f.read()).digest())
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
