"""Regenerate tests/fixtures/gptq_compare: one tiny float model, one set of calibration token
ids, and GPTQModel's GPTQ of that model on those ids under several settings, for
tests/test_gptq_vs_gptqmodel.py to hold qwen-np's GPTQ (runtime/calibration.py,
tensors/gptq_solver.py) against.

Environment: the offline oracle of tools/make_quant_fixtures.py (its docstring has the
install): Python 3.11, torch 2.13.0+cpu, transformers 5.24.0, gptqmodel 7.7.0 (installed
--no-deps), torchao 0.18.0; on a 2-core CPU. Then, from the repository root:
    GPTQMODEL_CPU_WORKERS=2 /path/to/oracle/bin/python tools/make_gptq_compare_fixture.py
(about 25 s per case, 2 minutes in all; GPTQModel's pools refuse to start on 2 cores without
the variable). Its output is the same, byte for byte, on every run.

What it writes into tests/fixtures/gptq_compare/:
  source/                  the float model: Qwen2, hidden 64, MLP 128, 2 layers, 4 heads / 2 KV
                           heads, vocabulary 320, tied, random weights N(0, 0.1) (as
                           tools/make_quant_fixtures.py:make_source), stored in bfloat16 so that
                           both sides upcast the same numbers to float32; and its tokenizer
  calibration_ids.npy      int32 [16, 64]: 16 samples of 64 random token ids (seed 0), all the
                           same length, so that no sample is padded, cut or joined
  gptqmodel-<case>/        GPTQModel's checkpoint (format "gptq", v1: zeros stored minus one)
                           kept to its quantized tensors (qweight, qzeros, scales, g_idx of the
                           14 projections) and its quantize_config.json, whose bits,
                           group_size, sym, desc_act and (under "meta") static_groups and
                           damp_percent the test gives qwen-np

GPTQModel 7.7.0's defaults are not the classic GPTQ that qwen-np implements; every option that
changes the result is set here explicitly (gptqmodel/quantization/config.py, gptq.py):
  damp_percent=0.01          its default is 0.05; qwen-np's (and the paper's) is 0.01
  damp_auto_increment=0.0025 the step qwen-np takes when H + damp is not positive definite
                             (GPTQModel's default is 0.01); not reached on this model
  act_group_aware=False      GPTQModel turns on its group-aware reordering (GAR) whenever
                             desc_act is off; classic GPTQ keeps the input order
  mse=0.0                    no grid search for the scale: min/max as in the paper
  gptaq=None, foem=None      the plain GPTQ update, not GPTAQ's or FOEM's
  true_sequential=True       q/k/v, then o, then gate/up, then down, each from the inputs of
                             the layer with the earlier subsets quantized, as qwen-np
  fallback=None              no round-to-nearest for modules that see few tokens
  hessian=HessianConfig()    float32 staging, no chunking
  offload_to_disk=False      (speed only)
and at load and calibration:
  dtype=torch.float32        on the CPU GPTQModel would otherwise run the model in bfloat16,
                             so its calibration inputs X would differ from qwen-np's float32
  attn_implementation="eager" attention as plain matmuls and softmax
  calibration_sort=None, calibration_concat_size=None, batch_size=1
                             the samples in the given order, one at a time, never joined
                             or padded
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile

os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")

import numpy as np  # noqa: E402
import torch  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..")
sys.path.insert(0, os.path.join(ROOT, "tests"))
import transformers_oracle as oracle  # noqa: E402

OUT = os.path.join(ROOT, "tests", "fixtures", "gptq_compare")
SAMPLES, SEQ_LEN, VOCAB_USED = 16, 64, 300
DAMP = 0.01

# name: (bits, group_size, sym, desc_act, static_groups)
CASES = {
    "gptqmodel-4bit-g32-sym": (4, 32, True, False, False),
    "gptqmodel-4bit-g32-asym-descact": (4, 32, False, True, False),
    "gptqmodel-8bit-g32-sym": (8, 32, True, False, False),
    "gptqmodel-4bit-perchannel-sym": (4, -1, True, False, False),
    "gptqmodel-4bit-g32-sym-descact-static": (4, 32, True, True, True),
}
QUANTIZED_PARTS = (".qweight", ".qzeros", ".scales", ".g_idx")


def make_source(path: str):
    """tools/make_quant_fixtures.py's tiny Qwen2, stored in bfloat16 (what both sides read)."""
    from transformers import PreTrainedTokenizerFast
    cfg = oracle.make_config("qwen2", hidden=64, heads=4, kv_heads=2, intermediate=128, vocab=320,
                             tied=True)
    model = oracle.random_model(cfg, seed=7, std=0.1)
    tok = oracle.train_tiny_tokenizer(vocab_size=300)
    oracle.save_model(model, tok, path, "bfloat16", shard=False)
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>",
                            pad_token="<|endoftext|>").save_pretrained(path)


def gptqmodel_quantize(src: str, dst: str, ids: np.ndarray, bits: int, group_size: int,
                       sym: bool, desc_act: bool, static_groups: bool):
    """GPTQModel as classic GPTQ (the module docstring says why each option is set)."""
    from gptqmodel import GPTQModel
    from gptqmodel.quantization.config import GPTQConfig, HessianConfig
    qcfg = GPTQConfig(bits=bits, group_size=group_size, sym=sym, desc_act=desc_act,
                      static_groups=static_groups, damp_percent=DAMP, damp_auto_increment=0.0025,
                      act_group_aware=False, mse=0.0, gptaq=None, foem=None,
                      true_sequential=True, fallback=None, hessian=HessianConfig(),
                      offload_to_disk=False)
    torch.manual_seed(0)
    model = GPTQModel.load(src, qcfg, device="cpu", dtype=torch.float32,
                           attn_implementation="eager")
    calibration = [{"input_ids": row.tolist(), "attention_mask": [1] * len(row)} for row in ids]
    model.quantize(calibration, calibration_sort=None, calibration_concat_size=None,
                   batch_size=1, calibration_data_min_length=0)
    model.save(dst)


def keep_quantized_tensors(d: str):
    """Only GPTQModel's quantized tensors and quantize_config.json stay (the float tensors
    are the source's)."""
    from safetensors import safe_open
    from safetensors.torch import save_file
    with safe_open(os.path.join(d, "model.safetensors"), "pt") as f:
        kept = {k: f.get_tensor(k).contiguous() for k in f.keys() if k.endswith(QUANTIZED_PARTS)}
    for name in os.listdir(d):
        if name != "quantize_config.json":
            p = os.path.join(d, name)
            shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)
    save_file(kept, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
    return len(kept) // len(QUANTIZED_PARTS)


def main():
    os.chdir(tempfile.mkdtemp(prefix="qwen-np-gptq-logs-"))  # GPTQModel writes logs/ into the cwd
    shutil.rmtree(OUT, ignore_errors=True)
    src = os.path.join(OUT, "source")
    make_source(src)
    ids = np.random.default_rng(0).integers(0, VOCAB_USED, (SAMPLES, SEQ_LEN)).astype(np.int32)
    np.save(os.path.join(OUT, "calibration_ids.npy"), ids)
    for name, (bits, group, sym, desc_act, static) in CASES.items():
        d = os.path.join(OUT, name)
        print(name, flush=True)
        gptqmodel_quantize(src, d, ids, bits, group, sym, desc_act, static)
        with open(os.path.join(d, "quantize_config.json")) as f:
            saved = json.load(f)
        meta = saved["meta"]          # GPTQModel writes its other settings under "meta"
        assert (saved["bits"], saved["group_size"], saved["sym"], saved["desc_act"],
                meta["static_groups"], meta["damp_percent"], meta["act_group_aware"]) == \
            (bits, group, sym, desc_act, static, DAMP, False), saved
        modules = keep_quantized_tensors(d)
        size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
        print(f"  {modules} modules, {size // 1024} KiB", flush=True)


if __name__ == "__main__":
    main()
