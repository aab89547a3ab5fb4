"""Quantized Hugging Face checkpoints: find the quantization config, and turn each quantized
module's tensors (GPTQ: qweight/qzeros/scales/g_idx; AWQ: qweight/qzeros/scales) into one
canonical `QuantizedTensor` under the module's ordinary `.weight` name."""

from __future__ import annotations

import json
import os

import numpy as np

from ..errors import FormatError, UnsupportedModel
from ..quant.awq import awq_to_canonical
from ..quant.gptq import gptq_to_canonical
from .mapped import drop_pages

SUPPORTED_METHODS = ("gptq", "awq")


def read_quantization_config(model_dir: str) -> dict | None:
    """`quantization_config` of config.json, else quantize_config.json (older AutoGPTQ), else None."""
    cfg_path = os.path.join(model_dir, "config.json")
    with open(cfg_path, encoding="utf-8") as f:
        q = json.load(f).get("quantization_config")
    if q is None:
        path = os.path.join(model_dir, "quantize_config.json")
        if not os.path.isfile(path):
            return None
        with open(path, encoding="utf-8") as f:
            q = json.load(f)
        q.setdefault("quant_method", "gptq")
        q["_source"] = path
    else:
        q = dict(q, _source=cfg_path)
    return q


def describe_quantization(q: dict) -> tuple[str, int, int, bool]:
    """(method, bits, group_size, gptq_v2), checked; errors name the config file."""
    src = q.get("_source", "config.json")
    method = str(q.get("quant_method", "")).lower()
    if method not in SUPPORTED_METHODS:
        raise UnsupportedModel(f"{src}: unknown quant_method {q.get('quant_method')!r} "
                               f"(supported: {', '.join(SUPPORTED_METHODS)})")
    bits = int(q.get("bits", q.get("w_bit", 0)))
    if bits not in ((4, 8) if method == "gptq" else (4,)):
        raise UnsupportedModel(f"{src}: {bits}-bit {method} is not supported "
                               f"(supported: {'4 or 8' if method == 'gptq' else '4'} bits)")
    group = int(q.get("group_size", q.get("q_group_size", 128)))
    fmt = str(q.get("checkpoint_format") or q.get("format") or "gptq").lower()
    if method == "gptq" and fmt not in ("gptq", "gptq_v2"):
        raise UnsupportedModel(f"{src}: GPTQ checkpoint_format {fmt!r} is not supported "
                               f"(supported: gptq, gptq_v2)")
    if method == "awq" and str(q.get("version", "gemm")).lower() != "gemm":
        raise UnsupportedModel(f"{src}: AWQ version {q.get('version')!r} is not supported (gemm)")
    return method, bits, group, fmt == "gptq_v2"


def convert_quantized_tensors(tensors: dict, q: dict, expected: dict, source: str) -> dict:
    """Replace every quantized module's packed tensors by one QuantizedTensor at `<module>.weight`.

    `expected` maps the model's tensor names to the shapes its config implies. All-zero biases
    on modules that have none (written by AutoGPTQ before 2024) are dropped.
    """
    method, bits, group, v2 = describe_quantization(q)
    tensors = dict(tensors)
    modules = sorted(n[: -len(".qweight")] for n in tensors if n.endswith(".qweight"))
    for m in modules:
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
        try:
            if method == "gptq":
                tensors[weight_name] = gptq_to_canonical(m, qweight, qzeros, scales, g_idx, bits,
                                                         group, v2, shape)
            else:
                tensors[weight_name] = awq_to_canonical(m, qweight, qzeros, scales, bits, group,
                                                        shape)
        except FormatError as e:
            raise FormatError(f"{source}: {e}") from None
        for packed in (qweight, qzeros, scales, g_idx):  # the file's copy is not needed again
            if isinstance(packed, np.ndarray):
                drop_pages(packed)
        bias = m + ".bias"
        if bias in tensors and bias not in expected:
            if np.any(np.asarray(getattr(tensors[bias], "bits", tensors[bias])) != 0):
                raise FormatError(f"{source}: unexpected non-zero tensor {bias}")
            del tensors[bias]
    return tensors
