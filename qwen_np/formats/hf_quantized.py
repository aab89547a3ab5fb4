"""Quantized Hugging Face checkpoints: find the quantization config, and turn each quantized
module's tensors (GPTQ: qweight/qzeros/scales/g_idx; AWQ: qweight/qzeros/scales) into one
canonical `QuantizedTensor` under the module's ordinary `.weight` name."""

from __future__ import annotations

import os
import re

import numpy as np

from qwen_np.model.config import ConfigReader
from qwen_np.tensors.dense import BFloat16Array, bfloat16_to_float32, dtype_name
from qwen_np.errors import FormatError, UnsupportedModel
from qwen_np.formats.awq import awq_to_canonical
from qwen_np.formats.gptq import gptq_to_canonical
from qwen_np.tensors.mapped import drop_pages
from qwen_np.formats.files import read_json
from qwen_np.errors import short_repr

SUPPORTED_METHODS = ("gptq", "awq")


def read_quantization_config(model_dir: str) -> dict | None:
    """`quantization_config` of config.json, else quantize_config.json (older AutoGPTQ), else None."""
    cfg_path = os.path.join(model_dir, "config.json")
    q = read_json(cfg_path, "config.json").get("quantization_config")
    if q is None:
        path = os.path.join(model_dir, "quantize_config.json")
        if not os.path.lexists(path):
            return None
        q = read_json(path, "quantize_config.json")
        if not isinstance(q, dict):
            raise FormatError(f"{path}: not a JSON object")
        q = {"quant_method": "gptq", **q, "_source": path}
    elif not isinstance(q, dict):
        raise FormatError(f"{cfg_path}: quantization_config is {short_repr(q)}; expected an object")
    else:
        q = dict(q, _source=cfg_path)
    return q


def describe_quantization(q: dict, module: str | None = None) -> tuple[str, int, int, bool]:
    """(method, bits, group_size, gptq_v2), checked; errors name the config file and key.
    With `module`, GPTQ's per-module overrides (`dynamic`, see module_overrides) apply."""
    src = q.get("_source", "config.json")
    if module is not None and q.get("dynamic") is not None:
        q = {**q, **module_overrides(q, module)}
    method = q.get("quant_method")
    method = method.lower() if isinstance(method, str) else method
    if method not in SUPPORTED_METHODS:
        raise UnsupportedModel(f"{src}: unknown quant_method {short_repr(q.get('quant_method'))} "
                               f"(supported: {', '.join(SUPPORTED_METHODS)})")
    key = ConfigReader(q, src)
    bits = key.integer("bits" if "bits" in q else "w_bit", maximum=64)
    if bits not in ((4, 8) if method == "gptq" else (4,)):
        raise UnsupportedModel(f"{src}: {bits}-bit {method} is not supported "
                               f"(supported: {'4 or 8' if method == 'gptq' else '4'} bits)")
    group_name = "group_size" if "group_size" in q else "q_group_size"
    group = -1 if q.get(group_name) == -1 else key.integer(group_name, 128)
    fmt = q.get("checkpoint_format") or q.get("format") or "gptq"
    fmt = fmt.lower() if isinstance(fmt, str) else fmt
    if method == "gptq" and fmt not in ("gptq", "gptq_v2"):
        raise UnsupportedModel(f"{src}: GPTQ checkpoint_format {short_repr(fmt)} is not "
                               f"supported (supported: gptq, gptq_v2)")
    version = q.get("version", "gemm")
    if method == "awq" and (not isinstance(version, str) or version.lower() != "gemm"):
        raise UnsupportedModel(f"{src}: AWQ version {short_repr(version)} is not supported (gemm)")
    return method, bits, group, fmt == "gptq_v2"


def module_overrides(q: dict, module: str) -> dict:
    """GPTQModel's mixed precision: `dynamic` in quantization_config maps regular expressions
    over module names to overrides, e.g.
        {"+:.*down_proj": {"bits": 8}, "-:lm_head": {}}
    The first pattern that matches the module's full name (re.match) decides: "+:" (or no
    prefix) overrides bits / group_size; "-:" leaves the module unquantized (it has a float
    `.weight`, not `.qweight`, so reading it here means the file contradicts its config)."""
    src = q.get("_source", "config.json")
    dynamic = q["dynamic"]
    if not isinstance(dynamic, dict):
        raise FormatError(f"{src}: quantization_config.dynamic is {short_repr(dynamic)}; "
                          f"expected an object of pattern: overrides")
    for pattern, overrides in dynamic.items():
        negative = pattern.startswith("-:")
        regex = pattern[2:] if pattern[:2] in ("-:", "+:") else pattern
        try:
            matched = re.match(regex, module) is not None
        except re.error as e:
            raise FormatError(f"{src}: quantization_config.dynamic pattern {short_repr(pattern)} "
                              f"is not a regular expression ({e})") from None
        if not matched:
            continue
        if negative:
            raise FormatError(f"{src}: module {module} is quantized, but quantization_config."
                              f"dynamic {short_repr(pattern)} excludes it")
        if not isinstance(overrides, dict):
            raise FormatError(f"{src}: quantization_config.dynamic[{short_repr(pattern)}] is "
                              f"{short_repr(overrides)}; expected an object")
        return {k: v for k, v in overrides.items() if k in ("bits", "group_size")}
    return {}


def checked_parts(module: str, qweight, qzeros, scales, g_idx, source: str):
    """The dtypes a quantized module's tensors must have: packed words as int32 (or uint32),
    scales as float16, float32 or bfloat16, g_idx as integers. Returns the scales as a NumPy
    array (bfloat16 becomes float32, which holds every bfloat16 value exactly)."""
    for part, t in (("qweight", qweight), ("qzeros", qzeros)):
        if not (isinstance(t, np.ndarray) and t.dtype in (np.int32, np.uint32)):
            raise FormatError(f"{source}: tensor {module}.{part} is {dtype_name(t)}; "
                              f"expected int32 words")
    if g_idx is not None and not (isinstance(g_idx, np.ndarray) and g_idx.dtype.kind in "iu"):
        raise FormatError(f"{source}: tensor {module}.g_idx is {dtype_name(g_idx)}; "
                          f"expected integers")
    if isinstance(scales, BFloat16Array):
        return bfloat16_to_float32(scales.bits)
    if not (isinstance(scales, np.ndarray) and scales.dtype in (np.float16, np.float32)):
        raise FormatError(f"{source}: tensor {module}.scales is {dtype_name(scales)}; "
                          f"expected float16, float32 or bfloat16")
    return scales


def to_canonical(method, module, qweight, qzeros, scales, g_idx, bits, group, v2, shape, source):
    """One module's packed tensors -> a QuantizedTensor; errors name the folder."""
    try:
        if method == "gptq":
            return gptq_to_canonical(module, qweight, qzeros, scales, g_idx, bits, group, v2,
                                     shape)
        return awq_to_canonical(module, qweight, qzeros, scales, bits, group, shape)
    except FormatError as e:
        raise FormatError(f"{source}: {e}") from None


def convert_quantized_tensors(tensors: dict, q: dict, expected: dict, source: str) -> dict:
    """Replace every quantized module's packed tensors by one QuantizedTensor at `<module>.weight`.

    `expected` maps the model's tensor names to the shapes its config implies. All-zero biases
    on modules that have none (written by AutoGPTQ before 2024) are dropped.
    """
    describe_quantization(q)
    tensors = dict(tensors)
    modules = sorted(n[: -len(".qweight")] for n in tensors if n.endswith(".qweight"))
    for m in modules:
        method, bits, group, v2 = describe_quantization(q, m)
        parts = ("qweight", "qzeros", "scales") + (("g_idx",) if method == "gptq" else ())
        for p in parts:
            if p != "g_idx" and f"{m}.{p}" not in tensors:
                raise FormatError(f"{source}: missing tensor {m}.{p}")
        weight_name = m + ".weight"
        if weight_name not in expected:
            raise FormatError(f"{source}: unexpected tensor {m}.qweight (no such weight in a model "
                              f"with this config)")
        shape = expected[weight_name]
        qweight, qzeros, scales = (tensors.pop(f"{m}.{p}") for p in ("qweight", "qzeros", "scales"))
        g_idx = tensors.pop(f"{m}.g_idx", None)
        scales = checked_parts(m, qweight, qzeros, scales, g_idx, source)
        # a file's inf/NaN scales stay so, quietly: formats/open.py's check_scales names them
        with np.errstate(over="ignore", invalid="ignore"):
            tensors[weight_name] = to_canonical(method, m, qweight, qzeros, scales, g_idx, bits,
                                                group, v2, shape, source)
        for packed in (qweight, qzeros, scales, g_idx):  # the file's copy is not needed again
            if isinstance(packed, np.ndarray):
                drop_pages(packed)
        bias = m + ".bias"
        if bias in tensors and bias not in expected:
            if np.any(np.asarray(getattr(tensors[bias], "bits", tensors[bias])) != 0):
                raise FormatError(f"{source}: unexpected non-zero tensor {bias}")
            del tensors[bias]
    return tensors
