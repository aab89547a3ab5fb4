"""`qwen-np quantize SRC DST.gguf --type T`: a float model -> a GGUF file that llama.cpp runs.

SRC is a float Hugging Face folder, or a GGUF file (a quantized one is dequantized to float32
first, and the output line says so). Each tensor gets its ggml type from
formats/gguf_tensor_types.py (a pure type, or llama.cpp's Q4_K_M mix), its blocks from
formats/gguf_blocks_write.py, and the file its metadata from formats/gguf_metadata.py (a GGUF
source's tokenizer.* and general.* keys are copied as they are). Tensors are written in
sorted Hugging Face name order, the order convert_hf_to_gguf.py writes a one-file checkpoint
in (the Q4_K_M mix counts attn_v and ffn_down tensors in that order), one at a time: the
container is gguf-py's GGUFWriter (the optional extra `qwen-np[gguf]`).
"""

from __future__ import annotations

import os
import time
from collections import Counter

import numpy as np

from qwen_np.errors import FormatError, InputError, UnsupportedModel
from qwen_np.formats.gguf_blocks_write import WRITERS, quantize_rows
from qwen_np.formats.gguf_metadata import QUANTIZATION_VERSION, gguf_arch, gguf_tensor_name, \
    model_metadata, token_list
from qwen_np.formats.gguf_tensor_types import FILE_TYPE, OUTPUT_TYPES, check_output_type, \
    tensor_types
from qwen_np.tensors.dense import BFloat16Array, as_compute
from qwen_np.tensors.mapped import MappedQuantizedRows, MappedRows
from qwen_np.tensors.quantized import QuantizedTensor, dequantize


def import_gguf(what: str):
    try:
        import gguf
    except ImportError:
        raise UnsupportedModel(f"{what}: writing GGUF needs gguf-py: pip install 'qwen-np[gguf]'") \
            from None
    return gguf


def cmd_quantize_gguf(args) -> int:
    if not args.dst.endswith(".gguf"):
        raise InputError(f"{args.dst}: --type writes a GGUF file; name the output *.gguf "
                         f"(or leave out --type for a GPTQ folder)")
    if getattr(args, "type", None) is None:
        raise InputError(f"{args.dst}: a .gguf output needs --type ({', '.join(OUTPUT_TYPES)})")
    if getattr(args, "method", "rtn") != "rtn":
        raise InputError(f"{args.dst}: --method {args.method} writes a GPTQ/AWQ folder; GGUF "
                         f"output (--type) uses llama.cpp's own rounding")
    if getattr(args, "keep", None):
        raise InputError(f"{args.dst}: --keep sets a GPTQ checkpoint's widths; a GGUF file's "
                         f"per-tensor types come from --type (Q4_K_M is llama.cpp's mix)")
    stats = quantize_to_gguf(args.src, args.dst, args.type)
    counts = ", ".join(f"{n} {t}" for t, n in sorted(stats["types"].items()))
    source = "dequantized to float32 from " + stats["source_types"] if stats["source_types"] \
        else "float source"
    print(f"{args.dst}: {args.type} ({source}); {stats['bytes'] / 1e6:.1f} MB, "
          f"{stats['tensors']} tensors: {counts}; {stats['seconds']:.1f} s")
    return 0


def quantize_to_gguf(src: str, dst: str, type_name: str) -> dict:
    """Write src as dst at `type_name`. Returns {"tensors", "types": {type: count}, "bytes",
    "source_types": the source's quantized types ("" for a float source), "seconds"}."""
    start = time.perf_counter()
    check_output_type(type_name)
    gguf = import_gguf(dst)
    if os.path.abspath(src) == os.path.abspath(dst):
        raise FormatError(f"{dst}: the output file must differ from the input")
    cfg, tensors, head_dim_key, add_source_keys, name, source_types = read_source(src, gguf)
    arch = gguf_arch(cfg, src)
    gguf_tensors = gguf_layout(tensors, cfg, src)            # {gguf name: (hf names, shape)}
    order = list(gguf_tensors)
    types = tensor_types([(n, gguf_tensors[n][1]) for n in order], type_name,
                         cfg.num_hidden_layers, cfg.num_experts)
    part = dst + ".part"                 # renamed to dst once whole: no half-written file
    w = gguf.GGUFWriter(part, arch)
    w.add_type("model")
    w.add_name(name)
    add_source_keys(w, "general.")
    for key, value, kind in model_metadata(cfg, FILE_TYPE[type_name], head_dim_key, src):
        w.add_key_value(key, value, VALUE_TYPES[kind](gguf))
    add_source_keys(w, "tokenizer.")
    w.add_quantization_version(QUANTIZATION_VERSION)
    for n in order:
        shape, t = gguf_tensors[n][1], types[n]
        if t in WRITERS:
            block, size = WRITERS[t][:2]
            nbytes = int(np.prod(shape[:-1])) * (shape[-1] // block) * size
            w.add_tensor_info(n, shape[:-1] + (shape[-1] // block * size,), np.dtype(np.uint8),
                              nbytes, raw_dtype=gguf.GGMLQuantizationType[t])
        else:
            dtype = np.dtype(np.float16 if t == "F16" else np.float32)
            w.add_tensor_info(n, shape, dtype, int(np.prod(shape)) * dtype.itemsize)
    try:
        w.write_header_to_file(part)
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for n in order:
            x = float_tensor(tensors, gguf_tensors[n])
            if not np.isfinite(x).all():
                raise FormatError(f"{src}: tensor {gguf_tensors[n][0][0]} holds NaN or inf")
            w.write_tensor_data(encode(x, types[n]))
        w.close()
        os.replace(part, dst)
    except OSError as e:
        raise FormatError(f"{e.filename or dst}: cannot write ({e.strerror})") from None
    finally:
        if os.path.exists(part):
            os.remove(part)
    return {"tensors": len(order), "types": dict(Counter(types.values())),
            "bytes": os.path.getsize(dst), "source_types": source_types,
            "seconds": time.perf_counter() - start}


VALUE_TYPES = {"u32": lambda g: g.GGUFValueType.UINT32, "f32": lambda g: g.GGUFValueType.FLOAT32,
               "str": lambda g: g.GGUFValueType.STRING, "bool": lambda g: g.GGUFValueType.BOOL}


def encode(x: np.ndarray, type_name: str) -> np.ndarray:
    """float32 [..., n] -> the tensor's bytes (block types) or its float array."""
    if type_name in WRITERS:
        return quantize_rows(x.reshape(-1, x.shape[-1]), type_name)
    return x.astype(np.float16 if type_name == "F16" else np.float32)


def read_source(src: str, gguf):
    """(config, tensors under HF names, head_dim_key, add_source_keys, the model's name, the
    source's quantized types: "" if none) of a float folder or a GGUF file.
    add_source_keys(writer, "tokenizer.") adds the tokenizer's keys, (writer, "general.") the
    source's descriptive general.* keys (a GGUF's basename, finetune, size_label ...)."""
    if not os.path.exists(src):
        raise FormatError(f"{src}: no such file or folder")
    name = os.path.basename(os.path.normpath(src))
    if os.path.isdir(src):
        from qwen_np.apps.quantize import read_float_source
        from qwen_np.model.config import config_from_hf_dict
        config_json, tensors, _ = read_float_source(src)
        cfg = config_from_hf_dict(config_json, src)
        tokenizer_json = os.path.join(src, "tokenizer.json")
        if not os.path.isfile(tokenizer_json):
            raise FormatError(f"{src}: no tokenizer.json (GGUF output needs the byte-level BPE "
                              f"tokenizer)")

        def add_folder_keys(w, prefix):
            if prefix != "tokenizer.":
                return
            tokens, kinds = token_list(tokenizer_json, cfg.vocab_size)
            w.add_tokenizer_model("gpt2")
            w.add_tokenizer_pre("qwen2")
            w.add_token_list(tokens)
            w.add_token_types(kinds)
            # merges, special token ids, add_bos_token, chat_template: gguf-py's own reading
            gguf.SpecialVocab(src, load_merges=True, n_vocab=cfg.vocab_size).add_to_gguf(
                w, quiet=True)
        return cfg, tensors, "head_dim" in config_json, add_folder_keys, name, ""
    from qwen_np.runtime.load import read_model
    cfg, tensors, _ = read_model(src)
    reader = gguf.GGUFReader(src)
    fields = reader.fields
    name = fields["general.name"].contents() if "general.name" in fields else name[:-5]
    head_dim_key = f"{gguf_arch(cfg, src)}.attention.key_length" in fields
    written = {"general.architecture", "general.type", "general.name", "general.file_type",
               "general.quantization_version", "general.alignment"}

    def add_file_keys(w, prefix):            # the source's keys, as they are
        for key, f in fields.items():
            if key.startswith(prefix) and key not in written:
                kind = gguf.GGUFValueType(f.types[0])
                sub = gguf.GGUFValueType(f.types[-1]) if kind == gguf.GGUFValueType.ARRAY else None
                w.add_key_value(key, f.contents(), kind, sub_type=sub)
    quantized = sorted({t.tensor_type.name for t in reader.tensors} - {"F32", "F16", "BF16"})
    return cfg, tensors, head_dim_key, add_file_keys, name, ", ".join(quantized)


def gguf_layout(tensors: dict, cfg, src: str) -> dict:
    """{GGUF name: (the HF names it is made of, NumPy shape)} in sorted HF name order; an
    MoE layer's experts stacked into one [E, out, in] tensor per projection (at the place of
    its first expert), Qwen2-MoE's shared expert gate stored as [D]."""
    out = {}
    for hf in sorted(tensors):
        n = gguf_tensor_name(hf)
        if n is None:
            raise UnsupportedModel(f"{src}: tensor {hf} has no GGUF name")
        shape = tuple(tensors[hf].shape)
        if n.endswith("_exps.weight"):
            parts, shape_e = out.get(n, ([], shape))
            out[n] = (parts + [hf], shape_e)
            continue
        if n.endswith("ffn_gate_inp_shexp.weight"):
            shape = (int(np.prod(shape)),)
        out[n] = ([hf], shape)
    for n, (parts, shape) in list(out.items()):
        if n.endswith("_exps.weight"):
            if len(parts) != cfg.num_experts:
                raise FormatError(f"{src}: {len(parts)} experts for {n}, the config says "
                                  f"{cfg.num_experts}")
            out[n] = (sorted(parts, key=lambda h: int(h.split(".")[5])),
                      (cfg.num_experts,) + shape)
    return out


def float_tensor(tensors: dict, entry) -> np.ndarray:
    """The float32 array of one GGUF tensor (its experts stacked)."""
    parts, shape = entry
    if len(parts) == 1:
        return as_float32(tensors[parts[0]]).reshape(shape)
    return np.stack([as_float32(tensors[h]) for h in parts])


def as_float32(t) -> np.ndarray:
    if isinstance(t, QuantizedTensor):
        return dequantize(t)
    if isinstance(t, MappedQuantizedRows):
        return dequantize(t.rows(np.arange(t.shape[0])))
    if isinstance(t, MappedRows):
        t = t.table
    if isinstance(t, BFloat16Array):
        return as_compute(t, np.float32)
    return np.asarray(t, np.float32)
