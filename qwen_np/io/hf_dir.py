"""A Hugging Face model folder: config.json, one model.safetensors or shards listed in
model.safetensors.index.json, and (optionally) tokenizer.json."""

from __future__ import annotations

import json
import os

from ..config import QwenConfig, read_hf_config
from ..errors import FormatError
from ..weights import expected_shapes
from .hf_quantized import convert_quantized_tensors, read_quantization_config
from .safetensors import open_safetensors

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


def read_hf_tensors(model_dir: str) -> dict:
    """name -> memory-mapped tensor, over a single file or every shard of the index."""
    single = os.path.join(model_dir, SINGLE_FILE)
    index = os.path.join(model_dir, INDEX_FILE)
    if os.path.isfile(index):
        try:
            with open(index, encoding="utf-8") as f:
                weight_map = json.load(f)["weight_map"]
        except (json.JSONDecodeError, KeyError, UnicodeDecodeError):
            raise FormatError(f"{index}: not a safetensors index (no weight_map)") from None
        tensors = {}
        for shard in sorted(set(weight_map.values())):
            shard_path = os.path.join(model_dir, shard)
            if not os.path.isfile(shard_path):
                raise FormatError(f"{index}: shard {shard} is listed but missing")
            for name, t in open_safetensors(shard_path).items():
                if weight_map.get(name) != shard:
                    raise FormatError(f"{shard_path}: tensor {name} is not listed for this shard "
                                      f"in {INDEX_FILE}")
                tensors[name] = t
        missing = sorted(set(weight_map) - set(tensors))
        if missing:
            raise FormatError(f"{index}: tensor {missing[0]} is listed but not in its shard")
        return tensors
    if os.path.isfile(single):
        return open_safetensors(single)
    if any(f.endswith(".bin") for f in os.listdir(model_dir)):
        raise FormatError(f"{model_dir}: only PyTorch .bin weights found; qwen-np reads "
                          f"safetensors (convert with transformers' save_pretrained)")
    raise FormatError(f"{model_dir}: no {SINGLE_FILE} or {INDEX_FILE}")


def read_hf_dir(model_dir: str) -> tuple[QwenConfig, dict, str | None]:
    """(config, tensors, path of tokenizer.json or None).

    Quantized modules (GPTQ, AWQ) come back as canonical QuantizedTensors under `.weight`.
    """
    if not os.path.isdir(model_dir):
        raise FormatError(f"{model_dir}: no such model folder")
    config = read_hf_config(model_dir)
    tensors = read_hf_tensors(model_dir)
    quant = read_quantization_config(model_dir)
    if quant is not None:
        tensors = convert_quantized_tensors(tensors, quant, expected_shapes(config), model_dir)
    tok = os.path.join(model_dir, "tokenizer.json")
    return config, tensors, (tok if os.path.isfile(tok) else None)
