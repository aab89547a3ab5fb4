"""`qwen-np quantize --method awq`: a float Qwen2/Qwen3 model (Hugging Face folder or GGUF) ->
an AutoAWQ "GEMM" checkpoint, by AWQ's activation-aware scale search calibrated on a text
(runtime/awq_calibration.py drives tensors/awq_search.py, awq_clip.py and awq_grid.py layer by
layer, as AutoAWQ 0.2.9 does).

The checkpoint is what AutoAWQ's save_quantized writes: per projection `qweight` (int32
[in, out/8], AWQ's interleaved nibbles), `qzeros` (true zero points, the same packing) and
`scales` (float16 [in/group, out]) (formats/awq.py:awq_from_codes); the RMSNorm weights (and
v_proj's bias where v -> o is scaled) with the AWQ scales folded in; everything else as in
the source, float32 stored as float16. config.json carries AutoAWQ's transformers
quantization_config (quant_method awq, version gemm, zero_point, group_size, bits), which
transformers, AutoAWQ and qwen-np (formats/hf_quantized.py) read.
"""

from __future__ import annotations

import numpy as np

from qwen_np.apps.quantize import (DEFAULT_CALIBRATION, QUANTIZED, calibration_ids,
                                   read_float_source_for, to_float16_if_float32,
                                   write_checkpoint)
from qwen_np.errors import FormatError, InputError, UnsupportedModel
from qwen_np.formats.awq import awq_from_codes
from qwen_np.model.config import config_from_hf_dict
from qwen_np.runtime.awq_calibration import AWQSettings, calibrate_awq, check_awq_shapes
from qwen_np.runtime.calibration import calibration_samples
from qwen_np.tensors.quantized import QuantizedTensor


def awq_quantization_config(group_size: int) -> dict:
    """AutoAWQ's AwqConfig.to_transformers_dict() for its GEMM checkpoints."""
    return {"quant_method": "awq", "zero_point": True, "group_size": group_size, "bits": 4,
            "version": "gemm", "modules_to_not_convert": None}


def quantize_folder_awq(src: str, dst: str, group_size: int = 128, bits: int = 4,
                        calibration: str | None = None, samples: int = 128, seq_len: int = 512,
                        clip: bool = True, progress=None, sample_ids=None) -> dict:
    """AWQ-quantize src into dst. Returns {"quantized": n, "samples": .., "bytes_in": ..,
    "bytes_out": ..}. Calibrated on `calibration` (a UTF-8 text; default the built-in
    DEFAULT_CALIBRATION), up to `samples` windows of `seq_len` tokens, or on `sample_ids`
    (the samples' token ids, a list of arrays) when given; `clip`: AutoAWQ's clipping search
    (its default)."""
    if bits != 4:
        raise UnsupportedModel(f"--bits {bits}: AWQ GEMM checkpoints hold 4-bit codes")
    if group_size < 1:
        raise InputError(f"--group-size {group_size}: AWQ needs a positive group size")
    config_json, tensors, write_tokenizer = read_float_source_for(src, dst)
    names = [n for n in tensors if QUANTIZED.match(n)]
    for name in names:
        if isinstance(tensors[name], QuantizedTensor):
            raise FormatError(f"{src}: tensor {name} is already quantized "
                              f"({tensors[name].bits}-bit); quantize reads float models")
    cfg = config_from_hf_dict(config_json, src)
    check_awq_shapes(cfg, tensors, group_size, src)              # every refusal before any work
    if sample_ids is None:
        if seq_len > cfg.max_position_embeddings:
            raise InputError(f"--seq-len {seq_len}: longer than the model's "
                             f"max_position_embeddings {cfg.max_position_embeddings}")
        chosen = calibration_samples(calibration_ids(src, calibration), samples, seq_len,
                                     calibration or DEFAULT_CALIBRATION)
    else:
        chosen = [np.asarray(ids, np.int64) for ids in sample_ids]
    packed = {}

    def pack(name, r):
        packed[name] = awq_from_codes(r.q, r.zero, r.scale)
    calib = calibrate_awq(cfg, tensors, chosen, AWQSettings(group_size, bits, clip), src,
                          progress, on_result=pack)
    out = {}
    stats = {"quantized": len(packed), "samples": len(chosen), "bytes_in": 0}
    for name, t in tensors.items():
        stats["bytes_in"] += int(t.nbytes)
        if name in packed:
            module = name[: -len(".weight")]
            for part, arr in packed.pop(name).items():
                out[f"{module}.{part}"] = arr
        else:
            out[name] = to_float16_if_float32(calib.folded.get(name, t), name, src)
    stats["bytes_out"] = sum(int(a.nbytes) for a in out.values())
    write_checkpoint(dst, out, config_json, awq_quantization_config(group_size), write_tokenizer)
    return stats


def cmd_quantize_awq(args) -> int:
    """`qwen-np quantize --method awq` (apps/cli.py dispatches here)."""
    from qwen_np.apps.loading import progress_bar
    unused = [flag for flag, on in (("--act-order", args.act_order),
                                     ("--static-groups", args.static_groups),
                                     ("--keep", getattr(args, "keep", None)),
                                     ("--checkpoint-format", args.checkpoint_format != "gptq"))
              if on]
    if unused:
        raise InputError(f"{', '.join(unused)}: not for --method awq (AWQ GEMM: 4 bits, "
                         f"a zero point per group)")
    stats = quantize_folder_awq(args.src, args.dst, args.group_size, args.bits,
                                calibration=args.calibration, samples=args.samples,
                                seq_len=args.seq_len, progress=progress_bar("quantizing"))
    print(f"{args.dst}: {stats['quantized']} matrices quantized to 4 bits by awq (group "
          f"{args.group_size}, zero points, {stats['samples']} x {args.seq_len} calibration "
          f"tokens; AutoAWQ GEMM); tensors {stats['bytes_in'] / 2**20:.1f} MiB -> "
          f"{stats['bytes_out'] / 2**20:.1f} MiB")
    return 0
