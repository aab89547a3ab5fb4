"""A Hugging Face model folder: config.json, one model.safetensors or shards listed in
model.safetensors.index.json, and (optionally) tokenizer.json."""

from __future__ import annotations

import os
import re
from dataclasses import replace

from qwen_np.model.config import ConfigReader, QwenConfig, config_from_hf_dict
from qwen_np.tensors.dense import BFloat16Array
from qwen_np.errors import FormatError
from qwen_np.model.weights import check_layer_count, expected_shapes
from qwen_np.formats.hf_quantized import convert_quantized_tensors, read_quantization_config
from qwen_np.formats.files import file_in_folder, read_json
from qwen_np.errors import short_repr
from qwen_np.formats.qwen_v1 import TENSORS_PER_LAYER as V1_TENSORS_PER_LAYER
from qwen_np.formats.qwen_v1 import v1_expected_shapes, v1_to_model_names
from qwen_np.formats.safetensors import open_safetensors

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


def read_hf_tensors(model_dir: str) -> dict:
    """name -> memory-mapped tensor, over a single file or every shard of the index. Shard
    names are confined to the model folder (formats/files.py)."""
    single = os.path.join(model_dir, SINGLE_FILE)
    index = os.path.join(model_dir, INDEX_FILE)
    if os.path.lexists(index):
        weight_map = read_weight_map(index)
        tensors = {}
        for shard in sorted(set(weight_map.values())):
            shard_path = file_in_folder(model_dir, shard, index)
            if not os.path.lexists(shard_path):
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
    if os.path.lexists(single):
        return open_safetensors(single)
    if any(f.endswith(".bin") for f in os.listdir(model_dir)):
        raise FormatError(f"{model_dir}: only PyTorch .bin weights found; qwen-np reads "
                          f"safetensors (convert with transformers' save_pretrained)")
    raise FormatError(f"{model_dir}: no {SINGLE_FILE} or {INDEX_FILE}")


def read_weight_map(index: str) -> dict[str, str]:
    """The index's tensor name -> shard file name, checked to be strings both."""
    d = read_json(index, INDEX_FILE)
    weight_map = d.get("weight_map") if isinstance(d, dict) else None
    if not isinstance(weight_map, dict):
        raise FormatError(f"{index}: not a safetensors index (no weight_map object)")
    for name, shard in weight_map.items():
        if not isinstance(shard, str):
            raise FormatError(f"{index}: tensor {name} is mapped to {short_repr(shard)}, "
                              f"not a file name")
    return weight_map


def read_hf_dir(model_dir: str) -> tuple[QwenConfig, dict, str | None]:
    """(config, tensors, path of the tokenizer file or None).

    Quantized modules (GPTQ, AWQ) come back as canonical QuantizedTensors under `.weight`.
    An original Qwen checkpoint's tensors come back under the same names as Qwen2's
    (formats/qwen_v1.py), its fused c_attn split into q, k and v.
    """
    if not os.path.isdir(model_dir):
        raise FormatError(f"{model_dir}: no such model folder")
    config = read_hf_config(model_dir)
    tensors = read_hf_tensors(model_dir)
    if config.num_experts:
        tensors = unstacked_experts(config, tensors, model_dir)
    v1 = config.model_type == "qwen"
    check_layer_count(config, len(tensors), model_dir, V1_TENSORS_PER_LAYER if v1 else None)
    quant = read_quantization_config(model_dir)
    if quant is not None:
        expected = v1_expected_shapes(config) if v1 else expected_shapes(config)
        tensors = convert_quantized_tensors(tensors, quant, expected, model_dir)
    if v1:
        tensors = v1_to_model_names(config, tensors, model_dir)
    return config, tensors, tokenizer_file(model_dir)


STACKED = re.compile(r"model\.layers\.(\d+)\.mlp\.experts\.(gate_up_proj|down_proj)$")


def unstacked_experts(config: QwenConfig, tensors: dict, source: str) -> dict:
    """Experts stored stacked, as transformers v5 holds them in memory,
        model.layers.N.mlp.experts.gate_up_proj   [E, 2 Fe, D]   (each expert's gate rows, then up)
        model.layers.N.mlp.experts.down_proj      [E, D, Fe]
    become one view per expert under the per-expert names save_pretrained writes
    (model.layers.N.mlp.experts.E.gate_proj.weight and so on); nothing is copied."""
    out = {}
    E, Fe, D = config.num_experts, config.moe_intermediate_size, config.hidden_size
    for name, t in tensors.items():
        m = STACKED.match(name)
        if m is None:
            out[name] = t
            continue
        fused = m.group(2) == "gate_up_proj"
        want = (E, 2 * Fe, D) if fused else (E, D, Fe)
        if tuple(t.shape) != want:
            raise FormatError(f"{source}: tensor {name} has shape {list(t.shape)}, the config "
                              f"implies {list(want)} (num_experts {E})")
        p = f"model.layers.{m.group(1)}.mlp.experts."
        for e in range(E):
            if fused:
                out[f"{p}{e}.gate_proj.weight"] = sliced(t, e, slice(0, Fe))
                out[f"{p}{e}.up_proj.weight"] = sliced(t, e, slice(Fe, 2 * Fe))
            else:
                out[f"{p}{e}.down_proj.weight"] = sliced(t, e, slice(None))
    return out


def sliced(t, e: int, rows: slice):
    """t[e, rows] of a stacked float tensor (a NumPy array or a BFloat16Array), a view."""
    if isinstance(t, BFloat16Array):
        return BFloat16Array(t.bits[e, rows])
    return t[e, rows]


TOKENIZER_FILES = ("tokenizer.json", "qwen.tiktoken")   # Hugging Face's; the original Qwen's


def tokenizer_file(model_dir: str) -> str | None:
    """The folder's tokenizer file (tokenizer.json first, else qwen.tiktoken), or None."""
    for name in TOKENIZER_FILES:
        path = os.path.join(model_dir, name)
        if os.path.lexists(path):
            return path
    return None


def read_hf_config(model_dir: str) -> QwenConfig:
    """config.json of a Hugging Face model folder (plus generation_config.json's EOS ids)."""
    path = os.path.join(model_dir, "config.json")
    if not os.path.lexists(path):
        raise FormatError(f"{model_dir}: no config.json (not a Hugging Face model folder)")
    cfg = config_from_hf_dict(read_json(path, "config.json"), source=path)

    gen_path = os.path.join(model_dir, "generation_config.json")
    if os.path.lexists(gen_path):
        gen = read_json(gen_path, "generation_config.json")
        if not isinstance(gen, dict):
            raise FormatError(f"{gen_path}: not a JSON object")
        extra = ConfigReader(gen, gen_path).token_ids("eos_token_id")
        cfg = replace(cfg, eos_token_ids=tuple(dict.fromkeys(cfg.eos_token_ids + extra)))
    return cfg
