"""The one dispatch between the two kinds of model path: a Hugging Face folder (config.json,
safetensors: float, GPTQ, AWQ or the original Qwen's) or a GGUF file.

    open_model(path) -> (config, tensors under Hugging Face names, TokenizerSource)

Every command that takes a model (load, inspect, quantize) goes through `model_kind`, so a
missing path, a FIFO, an unreadable file or a file of neither kind is the same one-line
FormatError naming the path everywhere.

Every quantized tensor of every format comes out of `open_model`, and `check_scales` refuses
there, by name, one whose scales or offsets hold a NaN or an infinity (the model would compute
garbage, with NumPy's RuntimeWarnings on stderr). The converters keep such values as they are,
quietly, for this one check; it runs before a backend re-lays the tensors, and reads only
the scales and offsets (a fraction of the codes' bytes).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from qwen_np.errors import FormatError
from qwen_np.formats.files import regular_file
from qwen_np.formats.gguf_blocks import TYPE_IDS, block_floats
from qwen_np.formats.gguf_qwen import read_gguf_model
from qwen_np.formats.hf_dir import read_hf_dir
from qwen_np.tensors.mapped import MappedQuantizedRows, drop_pages
from qwen_np.tensors.quantized import QuantizedTensor


@dataclass(frozen=True)
class TokenizerSource:
    """Where a model's tokenizer is read from: a file of its folder (tokenizer.json or
    qwen.tiktoken), or a GGUF file's metadata. The runtime builds the tokenizer from it."""
    path: str                       # the file: tokenizer.json, qwen.tiktoken or the GGUF
    gguf_metadata: dict | None = None


def is_gguf(path: str) -> bool:
    """The file starts with GGUF's magic. Anything but a regular file is a FormatError,
    before it is opened (opening a FIFO to read blocks until a writer comes)."""
    with open(regular_file(path), "rb") as f:
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
            check_scales(tensors, path)
            return config, tensors, None if tokenizer_path is None else TokenizerSource(tokenizer_path)
        config, tensors, meta = read_gguf_model(path)
        check_scales(tensors, path)
        return config, tensors, TokenizerSource(path, meta)


def check_scales(tensors: dict, source: str) -> None:
    """A FormatError naming the first tensor whose scales or offsets are not all finite, and
    where: a QuantizedTensor's [out, G] scale and offset; a GGUF table kept in its blocks
    (MappedQuantizedRows, an untied embedding), each block's float16 d, dmin or m, from which
    its scales and offsets are made. A tensor under two names (tied) is read once."""
    seen = set()
    for name, t in tensors.items():
        if id(t) in seen:
            continue
        seen.add(id(t))
        if isinstance(t, QuantizedTensor):
            parts = (("scale", t.scale, "group"), ("offset", t.offset, "group"))
        elif isinstance(t, MappedQuantizedRows):
            fields = block_floats(t.raw, TYPE_IDS[t.dtype_name])       # [rows, n_blocks, k]
            parts = (("block scale (d, dmin or m)", fields, "block"),)
        else:
            continue                          # float weights: out of this check's scope
        for what, values, unit in parts:
            finite = np.isfinite(values)
            if not finite.all():
                at = tuple(int(i) for i in np.argwhere(~finite)[0])
                raise FormatError(f"{source}: tensor {name} has a non-finite {what}: "
                                  f"{values[at]} at row {at[0]}, {unit} {at[1]}")
        if isinstance(t, MappedQuantizedRows):
            drop_pages(t.raw)                 # read through once; looked up a row at a time after
