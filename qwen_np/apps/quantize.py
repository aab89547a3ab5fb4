"""`qwen-np quantize`: a float Hugging Face folder -> a GPTQ (v1) folder, by round-to-nearest.

Every projection of every decoder layer (q, k, v, o, gate, up, down; in an MoE model each
expert's and the shared expert's gate, up and down, one module per expert as GPTQModel writes
them) is quantized with `quant.rtn.quantize_rtn`; embeddings, norms, biases, an MoE router
and the shared expert's gate, and the LM head stay unquantized, in
float16 when the source holds float32 (as GPTQ checkpoints store them; bfloat16 stays
bfloat16). The output is an ordinary GPTQ checkpoint (`qweight`, `qzeros` holding
zero - 1, `scales`, `g_idx`; `quantization_config` in config.json and quantize_config.json),
which GPTQModel and transformers (with optimum) load like any other.
"""

from __future__ import annotations

import json
import os
import re
import shutil

import numpy as np

from qwen_np.version import __version__
from qwen_np.model.config import config_to_hf_dict
from qwen_np.tensors.dense import as_compute
from qwen_np.errors import FormatError, InputError, UnsupportedModel
from qwen_np.formats.hf_dir import read_hf_config, read_hf_tensors, unstacked_experts
from qwen_np.formats.hf_quantized import read_quantization_config
from qwen_np.formats.files import read_json
from qwen_np.formats.safetensors import write_safetensors
from qwen_np.tensors.quantized import QuantizedTensor
from qwen_np.formats.gptq import canonical_codes_to_gptq
from qwen_np.tensors.rtn import quantize_rtn

# the decoder projections: Qwen2/Qwen3 names, and the original Qwen's (whose output is then
# the Qwen-7B-Chat-Int4 layout: c_attn, c_proj, w1, w2 quantized, c_attn keeping its bias)
QUANTIZED = re.compile(r"(model\.layers\.\d+\.(self_attn\.[qkvo]_proj"
                       r"|mlp\.(experts\.\d+\.|shared_expert\.)?(gate|up|down)_proj)"
                       r"|transformer\.h\.\d+\.(attn\.c_attn|attn\.c_proj|mlp\.w1|mlp\.w2"
                       r"|mlp\.c_proj))\.weight$")
COPIED_FILES = ("tokenizer.json", "tokenizer_config.json", "generation_config.json",
                "special_tokens_map.json", "vocab.json", "merges.txt", "qwen.tiktoken")


def to_float16_if_float32(t, name: str, src: str):
    if not (isinstance(t, np.ndarray) and t.dtype == np.float32):
        return t
    if np.abs(t).max(initial=0) > np.finfo(np.float16).max:
        raise FormatError(f"{src}: tensor {name} holds values beyond float16's range")
    return t.astype(np.float16)


def gptq_quantization_config(bits: int, group_size: int, sym: bool, fmt: str = "gptq") -> dict:
    return {"quant_method": "gptq", "bits": bits, "group_size": group_size, "desc_act": False,
            "sym": sym, "static_groups": False, "true_sequential": True, "damp_percent": 0.01,
            "checkpoint_format": fmt, "format": fmt, "pack_dtype": "int32",
            "meta": {"quantizer": [f"qwen-np:{__version__}"], "method": "rtn"}}


def quantize_folder(src: str, dst: str, bits: int = 4, group_size: int = 128, sym: bool = True,
                    progress=None, checkpoint_format: str = "gptq") -> dict:
    """Quantize src into dst. Returns {"quantized": n, "bytes_in": .., "bytes_out": ..}.

    checkpoint_format "gptq" (v1: zeros stored minus one, what AutoGPTQ and Qwen's published
    checkpoints use) or "gptq_v2" (true zeros; GPTQModel loads asymmetric v1 files only from
    its own quantizer, and v2 from anyone).
    """
    if checkpoint_format not in ("gptq", "gptq_v2"):
        raise UnsupportedModel(f"checkpoint format {checkpoint_format!r} (gptq or gptq_v2)")
    if bits not in (4, 8):
        raise UnsupportedModel(f"--bits {bits}: GPTQ output supports 4 or 8 bits")
    if group_size != -1 and group_size < 1:
        raise InputError(f"--group-size {group_size}: a positive number of inputs, or -1")
    if os.path.abspath(src) == os.path.abspath(dst):
        raise FormatError(f"{dst}: the output folder must differ from the input")
    try:
        config_json, tensors, write_tokenizer = read_float_source(src)
    except OSError as e:
        raise FormatError(f"{e.filename or src}: cannot read ({e.strerror})") from None
    names = [n for n in tensors if QUANTIZED.match(n)]
    per_word = 32 // bits
    out, stats = {}, {"quantized": 0, "bytes_in": 0, "bytes_out": 0}
    for name, t in tensors.items():
        stats["bytes_in"] += int(t.nbytes)
        if name not in names:
            out[name] = to_float16_if_float32(t, name, src)
            continue
        if isinstance(t, QuantizedTensor):
            raise FormatError(f"{src}: tensor {name} is already quantized ({t.bits}-bit); "
                              f"quantize reads float models")
        rows, cols = t.shape
        if rows % per_word or cols % per_word:
            raise FormatError(f"{src}: tensor {name} {list(t.shape)}: GPTQ needs both sizes to be "
                              f"multiples of {per_word}")
        q, zero, scale = quantize_rtn(as_compute(t, "float32"), bits, group_size, sym)
        module = name[: -len(".weight")]
        v2 = checkpoint_format == "gptq_v2"
        for part, arr in canonical_codes_to_gptq(q, zero, scale, bits, group_size, v2).items():
            out[f"{module}.{part}"] = arr
        stats["quantized"] += 1
        if progress is not None:
            progress(stats["quantized"], len(names))
    stats["bytes_out"] = sum(int(a.nbytes) for a in out.values())
    qcfg = gptq_quantization_config(bits, group_size, sym, checkpoint_format)
    config = dict(config_json, quantization_config=qcfg)
    if any(getattr(t, "dtype", None) == np.float16 for t in out.values()):
        config["torch_dtype"] = "float16"
    try:
        os.makedirs(dst, exist_ok=True)
        write_safetensors(os.path.join(dst, "model.safetensors"), out, {"format": "pt"})
        with open(os.path.join(dst, "config.json"), "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2)
        with open(os.path.join(dst, "quantize_config.json"), "w", encoding="utf-8") as f:
            json.dump({k: v for k, v in qcfg.items() if k != "quant_method"}, f, indent=2)
        write_tokenizer(dst)
    except OSError as e:       # no permission, disk full: the user's to fix, named
        raise FormatError(f"{e.filename or dst}: cannot write ({e.strerror})") from None
    return stats


def read_float_source(src: str):
    """(config.json dict, tensors under HF names, a function writing the tokenizer files into
    a folder) of a Hugging Face folder or a GGUF file."""
    if not os.path.exists(src):
        raise FormatError(f"{src}: no such file or folder")
    if os.path.isdir(src):
        cfg = read_hf_config(src)  # validates the architecture first
        if read_quantization_config(src) is not None:
            raise FormatError(f"{src}: already quantized")
        config = read_json(os.path.join(src, "config.json"), "config.json")
        tensors = read_hf_tensors(src)
        if cfg.num_experts:         # stacked experts: one module per expert, as GPTQ has them
            tensors = unstacked_experts(cfg, tensors, src)

        def copy_tokenizer(dst):
            for fname in COPIED_FILES:
                if os.path.isfile(os.path.join(src, fname)):
                    shutil.copyfile(os.path.join(src, fname), os.path.join(dst, fname))
        return config, tensors, copy_tokenizer
    from qwen_np.runtime.load import read_model
    cfg, tensors, make_tokenizer = read_model(src)
    return config_to_hf_dict(cfg), tensors, \
        lambda dst: make_tokenizer().save(os.path.join(dst, "tokenizer.json"))
