"""The one dispatch between the two kinds of model path: a Hugging Face folder (config.json,
safetensors: float, GPTQ, AWQ or the original Qwen's) or a GGUF file.

    open_model(path) -> (config, tensors under Hugging Face names, TokenizerSource)

Every command that takes a model (load, inspect, quantize) goes through `model_kind`, so a
missing path, a FIFO, an unreadable file or a file of neither kind is the same one-line
FormatError naming the path everywhere.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass

from qwen_np.errors import FormatError
from qwen_np.formats.files import regular_file
from qwen_np.formats.gguf_qwen import read_gguf_model
from qwen_np.formats.hf_dir import read_hf_dir


@dataclass(frozen=True)
class TokenizerSource:
    """Where a model's tokenizer is read from: a file of its folder (tokenizer.json or
    qwen.tiktoken), or a GGUF file's metadata. The runtime builds the tokenizer from it."""
    path: str                       # the file: tokenizer.json, qwen.tiktoken or the GGUF
    gguf_metadata: dict | None = None


def is_gguf(path: str) -> bool:
    """The file starts with GGUF's magic."""
    with open(path, "rb") as f:
        return f.read(4) == b"GGUF"


@contextmanager
def reading(path: str):
    """A file the system cannot read (no permission, an I/O error) is a FormatError naming
    it, like a malformed one."""
    try:
        yield
    except OSError as e:
        raise FormatError(f"{e.filename or path}: cannot read ({e.strerror})") from None


def model_kind(path: str) -> str:
    """"folder" or "gguf"; a FormatError naming the path for anything else."""
    if not os.path.exists(path):
        raise FormatError(f"{path}: no such file or folder")
    if os.path.isdir(path):
        return "folder"
    with reading(path):
        regular_file(path)          # a FIFO or a device: refused before it is opened
        if is_gguf(path) or path.lower().endswith(".gguf"):
            return "gguf"
    raise FormatError(f"{path}: neither a model folder (config.json + safetensors) nor a GGUF file")


def open_model(path: str):
    """(config, tensors under HF names, TokenizerSource or None) of a model folder or a GGUF
    file."""
    path = os.fspath(path)
    kind = model_kind(path)
    with reading(path):
        if kind == "folder":
            config, tensors, tokenizer_path = read_hf_dir(path)
            return config, tensors, None if tokenizer_path is None else TokenizerSource(tokenizer_path)
        config, tensors, meta = read_gguf_model(path)
        return config, tensors, TokenizerSource(path, meta)
