"""Regenerate tests/fixtures/quant: tiny quantized checkpoints written by the formats' own
libraries, with each library's dequantized weights and forward-pass logits.

Needs an offline oracle environment (not a test dependency; about 2.6 GB), e.g.:
    python3 -m venv oracle && . oracle/bin/activate
    echo "torch==2.13.0" > c.txt                       # the CPU build on this machine
    pip install -c c.txt torch==2.13.0 transformers==5.24.0 safetensors tokenizers numpy
    pip download --no-deps --no-binary :all: gptqmodel==7.7.0
    pip install --no-deps gptqmodel-7.7.0.tar.gz
    pip install -c c.txt accelerate threadpoolctl device-smi protobuf pillow requests pypcre \\
        tokenicer logbar ninja maturin datasets pyarrow dill defuser torchao==0.18.0 optimum
    pip install -c c.txt autoawq==0.2.9
    GPTQMODEL_CPU_WORKERS=2 python tools/make_quant_fixtures.py

Made here, each into tests/fixtures/quant/<name>/ plus <name>.reference.npz:
  gptqmodel-4bit-g32-sym          GPTQModel 7.7.0, desc_act=False, sym=True
  gptqmodel-4bit-g32-descact-asym GPTQModel, desc_act=True (non-monotonic g_idx), sym=False
  gptqmodel-8bit-g64-sym          GPTQModel, 8 bits
  autoawq-4bit-g32-gemm           AutoAWQ 0.2.9, GEMM, zero_point=True
  qwen-np-4bit-g32-sym            `qwen-np quantize` output (v1), as GPTQModel loads it
  qwen-np-4bit-g32-asym-v2        `qwen-np quantize --asym --checkpoint-format gptq_v2`
The reference holds `ids`, `logits` (the library's float32 forward pass) and
`dequant.<module>` (the library's dequantized weight [out, in], float32) for the modules of
layer 0 and one of layer 1. How each library is run is written beside each step below.
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
sys.path.insert(0, ROOT)
import transformers_oracle as oracle  # noqa: E402

OUT = os.path.join(ROOT, "tests", "fixtures", "quant")
IDS = [1, 17, 42, 99, 256, 300, 7, 211, 5, 64, 128]
KEEP_FILES = ("config.json", "quantize_config.json", "model.safetensors", "tokenizer.json",
              "generation_config.json")
REFERENCE_MODULES = [f"model.layers.0.{m}" for m in
                     ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                      "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")] + \
                    ["model.layers.1.mlp.down_proj"]


def make_source(path: str):
    """A tiny float32 Qwen2 (hidden 64, MLP 128, 2 layers, 4 heads / 2 KV heads, vocab 320) and
    a byte-level BPE tokenizer the libraries can calibrate with."""
    from transformers import PreTrainedTokenizerFast
    cfg = oracle.make_config("qwen2", hidden=64, heads=4, kv_heads=2, intermediate=128, vocab=320,
                             tied=True)
    model = oracle.random_model(cfg, seed=7, std=0.1)
    tok = oracle.train_tiny_tokenizer(vocab_size=300)
    oracle.save_model(model, tok, path, "float32", shard=False)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>")
    fast.save_pretrained(path)


def calibration_text():
    return [line for text in oracle.CORPUS for line in text.splitlines() if line.strip()] * 4


def float32_twin_logits(qdir: str, weights: dict[str, torch.Tensor]) -> np.ndarray:
    """Logits of a plain float32 transformers model whose projections are `weights` (a
    library's dequantization) and whose other tensors are the checkpoint's, upcast exactly."""
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM
    cfg = AutoConfig.from_pretrained(qdir)
    del cfg.quantization_config
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    sd = {}
    with safe_open(os.path.join(qdir, "model.safetensors"), "pt") as f:
        for k in f.keys():
            if not k.endswith((".qweight", ".qzeros", ".scales", ".g_idx")):
                sd[k] = f.get_tensor(k).float()
    sd.update({n + ".weight": w for n, w in weights.items()})
    missing, _ = model.load_state_dict(sd, strict=False)
    assert not [m for m in missing if "lm_head" not in m], missing
    model.tie_weights()
    with torch.no_grad():
        return model(input_ids=torch.tensor([IDS])).logits[0].numpy()


def gptqmodel_reference(qdir: str, modules=None, twin=None) -> dict:
    """GPTQModel's own view: load with the pure-torch kernel (float16; it refuses float32),
    cast the model to float32 and drop its weight cache so that dequantize_weight() and the
    forward pass run in float32 (float16 -> float32 is exact). `modules`: whose dequantized
    weights to keep (REFERENCE_MODULES); `twin`: the float32 twin's logits function
    (float32_twin_logits), a sanity check printed beside."""
    modules, twin = modules or REFERENCE_MODULES, twin or float32_twin_logits
    from gptqmodel import BACKEND, GPTQModel
    from gptqmodel.nn_modules.qlinear import BaseQuantLinear
    g = GPTQModel.load(qdir, device="cpu", backend=BACKEND.GPTQ_TORCH, dtype=torch.float16)
    hf = g.model
    hf.to(torch.float32)
    weights = {}
    for name, m in hf.named_modules():
        if isinstance(m, BaseQuantLinear):
            m.clear_weight_cache()
            with torch.no_grad():
                weights[name] = m.dequantize_weight().T.contiguous().float()   # [out, in]
    with torch.no_grad():
        logits = hf(input_ids=torch.tensor([IDS])).logits[0].float().numpy()
    print(f"    {len(weights)} quantized modules; GPTQModel forward vs float32 twin of its "
          f"dequantized weights: {np.abs(logits - twin(qdir, weights)).max():.2e}")
    return {"logits": logits, **{f"dequant.{n}": weights[n].numpy() for n in modules}}


def gptqmodel_quantize(src: str, dst: str, bits: int, group: int, desc_act: bool, sym: bool):
    from gptqmodel import GPTQModel, QuantizeConfig
    torch.manual_seed(0)
    model = GPTQModel.load(src, QuantizeConfig(bits=bits, group_size=group, desc_act=desc_act,
                                               sym=sym), device="cpu")
    model.quantize(calibration_text(), batch_size=4)
    model.save(dst)


def autoawq_quantize_and_reference(src: str, dst: str) -> dict:
    """AutoAWQ 0.2.9 on CPU (apply_clip=False: its clipping search needs out % 64 == 0).
    Its dequantize_gemm with float32 scales gives the weights; AutoAWQ has no float32 CPU
    forward pass, so the logits are those of the float32 twin of its dequantized weights."""
    from awq import AutoAWQForCausalLM
    from awq.utils.packing_utils import dequantize_gemm
    from safetensors import safe_open
    from transformers import AutoTokenizer
    torch.manual_seed(0)
    model = AutoAWQForCausalLM.from_pretrained(src)
    tok = AutoTokenizer.from_pretrained(src)
    model.quantize(tok, quant_config={"zero_point": True, "q_group_size": 32, "w_bit": 4,
                                      "version": "GEMM"},
                   calib_data=calibration_text(), max_calib_seq_len=128, apply_clip=False)
    model.save_quantized(dst)
    with safe_open(os.path.join(dst, "model.safetensors"), "pt") as f:
        sd = {k: f.get_tensor(k) for k in f.keys()}
    weights = {}
    for k in sd:
        if k.endswith(".qweight"):
            m = k[: -len(".qweight")]
            weights[m] = dequantize_gemm(sd[m + ".qweight"], sd[m + ".qzeros"],
                                         sd[m + ".scales"].float(), 4, 32).T.contiguous()
    return {"logits": float32_twin_logits(dst, weights),
            **{f"dequant.{n}": weights[n].numpy() for n in REFERENCE_MODULES}}


def keep_only_needed(d: str, tokenizer_src: str):
    for f in os.listdir(d):
        if f not in KEEP_FILES:
            p = os.path.join(d, f)
            shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)
    shutil.copyfile(os.path.join(tokenizer_src, "tokenizer.json"), os.path.join(d, "tokenizer.json"))


def save(name: str, d: str, ref: dict, src: str):
    keep_only_needed(d, src)
    np.savez_compressed(os.path.join(OUT, f"{name}.reference.npz"), ids=np.array(IDS), **ref)
    size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
    print(f"  {name}: {size // 1024} KiB")


def main():
    from qwen_np.apps.quantize import quantize_folder
    os.chdir(tempfile.mkdtemp(prefix="qwen-np-quant-logs-"))   # GPTQModel writes logs/ into the cwd
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    src = tempfile.mkdtemp(prefix="qwen-np-src-")
    make_source(src)
    for name, bits, group, desc_act, sym in (("gptqmodel-4bit-g32-sym", 4, 32, False, True),
                                             ("gptqmodel-4bit-g32-descact-asym", 4, 32, True, False),
                                             ("gptqmodel-8bit-g64-sym", 8, 64, False, True)):
        d = os.path.join(OUT, name)
        print(name)
        gptqmodel_quantize(src, d, bits, group, desc_act, sym)
        save(name, d, gptqmodel_reference(d), src)

    name = "autoawq-4bit-g32-gemm"
    d = os.path.join(OUT, name)
    print(name)
    save(name, d, autoawq_quantize_and_reference(src, d), src)

    for name, sym, fmt in (("qwen-np-4bit-g32-sym", True, "gptq"),
                           ("qwen-np-4bit-g32-asym-v2", False, "gptq_v2")):
        d = os.path.join(OUT, name)
        print(name)
        quantize_folder(src, d, bits=4, group_size=32, sym=sym, checkpoint_format=fmt)
        save(name, d, gptqmodel_reference(d), src)   # GPTQModel loads what we wrote
    shutil.rmtree(src)


if __name__ == "__main__":
    main()
