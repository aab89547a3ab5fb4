"""`qwen-np quantize`: a float Hugging Face folder -> a GPTQ (v1) folder, by round-to-nearest
(method "rtn") or by GPTQ calibrated on a text (method "gptq": runtime/calibration.py drives
tensors/gptq_solver.py layer by layer; Qwen2/Qwen3, dense and MoE).

Every projection of every decoder layer (q, k, v, o, gate, up, down; in an MoE model each
expert's and the shared expert's gate, up and down, one module per expert as GPTQModel writes
them) is quantized with `tensors/rtn.py:quantize_rtn` (or GPTQ); embeddings, norms, biases, an MoE router
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
from qwen_np.model.config import config_from_hf_dict, config_to_hf_dict
from qwen_np.tensors.dense import as_compute
from qwen_np.errors import FormatError, InputError, UnsupportedModel
from qwen_np.formats.hf_dir import read_hf_config, read_hf_tensors, unstacked_experts
from qwen_np.formats.hf_quantized import read_quantization_config
from qwen_np.formats.files import read_json
from qwen_np.formats.safetensors import write_safetensors
from qwen_np.tensors.quantized import QuantizedTensor
from qwen_np.formats.gptq import canonical_codes_to_gptq
from qwen_np.tensors.rtn import quantize_rtn
from qwen_np.runtime.calibration import GPTQSettings, calibrate_gptq, calibration_samples
from qwen_np.runtime.mixed_precision import check_gptq_rules, gptq_dynamic, parse_keep, width_of

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


# the built-in calibration text: the project's own docs and source (Apache-2.0), see its header
DEFAULT_CALIBRATION = os.path.join(os.path.dirname(__file__), "calibration_text.txt")


def gptq_quantization_config(bits: int, group_size: int, sym: bool, fmt: str = "gptq",
                             method: str = "rtn", gptq: GPTQSettings | None = None) -> dict:
    gptq = gptq or GPTQSettings()
    return {"quant_method": "gptq", "bits": bits, "group_size": group_size,
            "desc_act": gptq.act_order, "sym": sym, "static_groups": gptq.static_groups,
            "true_sequential": True, "damp_percent": gptq.damp_percent,
            "checkpoint_format": fmt, "format": fmt, "pack_dtype": "int32",
            "meta": {"quantizer": [f"qwen-np:{__version__}"], "method": method}}


def quantize_folder(src: str, dst: str, bits: int = 4, group_size: int = 128, sym: bool = True,
                    progress=None, checkpoint_format: str = "gptq", method: str = "rtn",
                    calibration: str | None = None, samples: int = 128, seq_len: int = 512,
                    damp: float = 0.01, act_order: bool = False,
                    static_groups: bool = False, keep=()) -> dict:
    """Quantize src into dst. Returns {"quantized": n, "bytes_in": .., "bytes_out": ..}
    (and, for GPTQ, "samples": the calibration samples used, "rtn_experts": the experts no
    calibration token reached, rounded to nearest).

    checkpoint_format "gptq" (v1: zeros stored minus one, what AutoGPTQ and Qwen's published
    checkpoints use) or "gptq_v2" (true zeros; GPTQModel loads asymmetric v1 files only from
    its own quantizer, and v2 from anyone).
    method "rtn" (round-to-nearest) or "gptq": calibrated on `calibration` (a UTF-8 text
    file; default the built-in DEFAULT_CALIBRATION), up to `samples` windows of `seq_len`
    tokens, dampening `damp`, `act_order` (desc_act), `static_groups`.
    keep: mixed precision, `--keep` rules ("8:lm_head,down_proj"; runtime/mixed_precision.py);
    a quantized LM head is rounded to nearest (GPTQ calibrates the decoder layers only).
    """
    rules = parse_keep(keep)
    if method not in ("rtn", "gptq"):
        raise InputError(f"--method {method!r}: rtn or gptq")
    if not 0 < damp < 1:
        raise InputError(f"--damp {damp}: a fraction between 0 and 1")
    if method == "rtn" and (act_order or static_groups or calibration is not None):
        raise InputError("--calibration, --act-order and --static-groups apply to --method gptq")
    if checkpoint_format not in ("gptq", "gptq_v2"):
        raise UnsupportedModel(f"checkpoint format {checkpoint_format!r} (gptq or gptq_v2)")
    if bits not in (4, 8):
        raise UnsupportedModel(f"--bits {bits}: GPTQ output supports 4 or 8 bits")
    if group_size != -1 and group_size < 1:
        raise InputError(f"--group-size {group_size}: a positive number of inputs, or -1")
    config_json, tensors, write_tokenizer = read_float_source_for(src, dst)
    tied = config_json.get("tie_word_embeddings", False) or "lm_head.weight" not in tensors
    check_gptq_rules(rules, [n[: -len(".weight")] for n in tensors if QUANTIZED.match(n)]
                     + ["lm_head"], tied)
    if width_of(rules, "lm_head", 16) != 16 and "lm_head.weight" not in tensors:
        tensors = dict(tensors, **{"lm_head.weight": tensors["model.embed_tokens.weight"]})
        config_json = dict(config_json, tie_word_embeddings=False)   # the head is its own now
        shared_head = tensors["lm_head.weight"].nbytes    # not read twice: not counted twice
    else:
        shared_head = 0
    names = [n for n in tensors if (QUANTIZED.match(n) or n == "lm_head.weight")
             and width_of(rules, n[: -len(".weight")], 16 if n == "lm_head.weight" else bits)
             != 16]
    for name in names:          # every refusal before any work
        t = tensors[name]
        if isinstance(t, QuantizedTensor):
            raise FormatError(f"{src}: tensor {name} is already quantized ({t.bits}-bit); "
                              f"quantize reads float models (a quantized source is refused, "
                              f"not dequantized)")
        rows, cols = t.shape
        per_word = 32 // width_of(rules, name[: -len(".weight")], bits)
        if rows % per_word or cols % per_word:
            raise FormatError(f"{src}: tensor {name} {list(t.shape)}: GPTQ needs both sizes to be "
                              f"multiples of {per_word}")
    settings = GPTQSettings(bits, group_size, sym, damp, act_order, static_groups, rules)
    out, stats = {}, {"quantized": 0, "bytes_in": 0, "bytes_out": 0}
    v2 = checkpoint_format == "gptq_v2"
    solved = {}                 # GPTQ: {weight name: its GPTQ tensors}, packed as they come

    def pack(name, r):
        parts = canonical_codes_to_gptq(r.q, r.zero, r.scale, r.bits, group_size, v2)
        parts["g_idx"] = r.g_idx                        # act-order: groups scattered
        solved[name] = parts
    if method == "gptq":
        ids = calibration_ids(src, calibration)
        chosen = calibration_samples(ids, samples, seq_len, calibration or DEFAULT_CALIBRATION)
        stats["samples"] = len(chosen)
        cfg = config_from_hf_dict(config_json, src)
        if seq_len > cfg.max_position_embeddings:
            raise InputError(f"--seq-len {seq_len}: longer than the model's "
                             f"max_position_embeddings {cfg.max_position_embeddings}")
        stats["rtn_experts"] = calibrate_gptq(cfg, tensors, chosen, settings, src, progress,
                                              on_result=pack)[1]
    for name, t in tensors.items():
        stats["bytes_in"] += int(t.nbytes)
        if name not in names:
            out[name] = to_float16_if_float32(t, name, src)
            continue
        module = name[: -len(".weight")]
        if name in solved:
            parts = solved.pop(name)
        else:
            width = settings.width(name) if name != "lm_head.weight" else width_of(rules, module, 16)
            q, zero, scale = quantize_rtn(as_compute(t, "float32"), width, group_size, sym)
            parts = canonical_codes_to_gptq(q, zero, scale, width, group_size, v2)
        for part, arr in parts.items():
            out[f"{module}.{part}"] = arr
        stats["quantized"] += 1
        if progress is not None and method == "rtn":
            progress(stats["quantized"], len(names))
    stats["bytes_in"] -= shared_head
    stats["bytes_out"] = sum(int(a.nbytes) for a in out.values())
    qcfg = gptq_quantization_config(bits, group_size, sym, checkpoint_format, method, settings)
    if rules:
        qcfg["dynamic"] = gptq_dynamic(rules)
        qcfg["lm_head"] = "lm_head.weight" in names
    write_checkpoint(dst, out, config_json, qcfg, write_tokenizer,
                     {"quantize_config.json": {k: v for k, v in qcfg.items()
                                               if k != "quant_method"}})
    return stats


def write_checkpoint(dst: str, out: dict, config_json: dict, qcfg: dict, write_tokenizer,
                     extra_json: dict | None = None) -> None:
    """The folder: model.safetensors (out), config.json (the source's, with qcfg as its
    quantization_config, torch_dtype float16 where a tensor is), extra_json's files, and the
    tokenizer."""
    config = dict(config_json, quantization_config=qcfg)
    if any(getattr(t, "dtype", None) == np.float16 for t in out.values()):
        config["torch_dtype"] = "float16"
    try:
        os.makedirs(dst, exist_ok=True)
        write_safetensors(os.path.join(dst, "model.safetensors"), out, {"format": "pt"})
        for name, content in {"config.json": config, **(extra_json or {})}.items():
            with open(os.path.join(dst, name), "w", encoding="utf-8") as f:
                json.dump(content, f, indent=2)
        write_tokenizer(dst)
    except OSError as e:       # no permission, disk full: the user's to fix, named
        raise FormatError(f"{e.filename or dst}: cannot write ({e.strerror})") from None


def calibration_ids(src: str, calibration: str | None) -> list[int]:
    """The calibration text's token ids, by the source model's own tokenizer."""
    path = calibration or DEFAULT_CALIBRATION
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise FormatError(f"{path}: cannot read the calibration text ({e.strerror})") from None
    except UnicodeDecodeError:
        raise FormatError(f"{path}: the calibration text is not UTF-8") from None
    from qwen_np.runtime.tokenizer import load_tokenizer
    return load_tokenizer(src).encode(text)


def read_float_source_for(src: str, dst: str):
    """read_float_source, for writing dst: the two must differ; read errors name the file."""
    if os.path.abspath(src) == os.path.abspath(dst):
        raise FormatError(f"{dst}: the output folder must differ from the input")
    try:
        return read_float_source(src)
    except OSError as e:
        raise FormatError(f"{e.filename or src}: cannot read ({e.strerror})") from None


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
