"""The boundary between a model folder and the parsers: which files may be opened, and JSON
read with every failure turned into a one-line FormatError.

- Only regular files are opened: a FIFO would block the reader forever, a device or a folder
  is not a model file (`regular_file`).
- A file named by another file (a shard in model.safetensors.index.json) must be a plain
  relative name inside the model folder: no absolute path, no `..` (`file_in_folder`). The
  folder's own files may be symlinks (Hugging Face's cache keeps them as links to blobs), but
  no name read from a file can point the reader anywhere else.
- JSON is read with a size limit and parsed with duplicate keys and deep nesting refused (the parser's depth is bounded
  by Python's recursion limit, and running into it is a FormatError)
  (`read_json`); the values' types are checked where each key is read (model/config.py,
  hf_quantized.py, hf_dir.py).
"""

from __future__ import annotations

import json
import os
import stat

from qwen_np.errors import FormatError

MAX_JSON_BYTES = 64 << 20        # config and index files are kilobytes; tokenizer.json a few MB


def regular_file(path: str) -> str:
    """`path` if it is a regular file (after symlinks); else a FormatError naming it."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FormatError(f"{path}: no such file") from None
    except OSError as e:
        raise FormatError(f"{path}: cannot read ({e.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise FormatError(f"{path}: {kind} (expected a model file)")
    return path


def file_in_folder(folder: str, name, source: str) -> str:
    """The path of `name` (read from the file `source`) inside `folder`, refusing anything
    that is not a plain relative file name within it."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise FormatError(f"{source}: file name {name!r} is not a file name")
    parts = name.replace("\\", "/").split("/")
    if os.path.isabs(name) or name.startswith(("/", "\\")) or ".." in parts:
        raise FormatError(f"{source}: file name {name!r} points outside the model folder")
    return os.path.join(folder, name)


def read_json(path: str, what: str = "JSON"):
    """The parsed content of a JSON file; FormatError (naming the file) if it is not a
    regular file, is too large, is not UTF-8 JSON, repeats a key, or nests too deeply."""
    regular_file(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_JSON_BYTES + 1)
    except OSError as e:
        raise FormatError(f"{path}: cannot read ({e.strerror})") from None
    if len(raw) > MAX_JSON_BYTES:
        raise FormatError(f"{path}: {what} larger than {MAX_JSON_BYTES >> 20} MiB")
    return parse_json(raw, path, what)


def parse_json(raw: bytes, source: str, what: str = "JSON"):
    """JSON from bytes, as read_json parses it (the safetensors header uses this too)."""
    try:
        return json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except UnicodeDecodeError:
        raise FormatError(f"{source}: {what} is not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise FormatError(f"{source}: not valid JSON ({e.msg} at line {e.lineno} "
                          f"column {e.colno})") from None
    except ValueError as e:  # an integer of more than 4300 digits, say
        raise FormatError(f"{source}: not valid JSON ({first_line_of(e)})") from None
    except RecursionError:   # the parser's nesting is bounded by Python's recursion limit
        raise FormatError(f"{source}: {what} nests too deeply") from None
    except _DuplicateKey as e:
        raise FormatError(f"{source}: {what} repeats the key {e.args[0]!r}") from None


def first_line_of(e: BaseException) -> str:
    lines = str(e).splitlines()
    return lines[0] if lines else type(e).__name__


class _DuplicateKey(Exception):
    pass


def _no_duplicate_keys(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out
