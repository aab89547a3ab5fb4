"""Regenerate tests/fixtures/moe/gptqmodel-qwen3moe-4bit-g32-sym: a tiny Qwen3-MoE quantized
by GPTQModel 7.7.0 (experts quantized one by one, the router kept in float), with GPTQModel's
own dequantized weights and float32 logits.

Needs the oracle environment of tools/make_quant_fixtures.py (its docstring has the install;
AutoAWQ is not needed here), then:
    GPTQMODEL_CPU_WORKERS=2 python tools/make_moe_gptq_fixture.py

The source: Qwen3-MoE, hidden 64, 2 layers, 4 heads / 2 KV heads, head_dim 32, 4 experts of
width 64 with 2 active, norm_topk_prob, vocabulary 320, tied; random weights (N(0, 0.1)).
GPTQModel quantizes it with 4 bits, group 32, sym, desc_act off, calibrating on the same text
as the dense fixtures with the model's own top-2 routing (every expert gets calibration
tokens: GPTQModel's quant_log lists each); it writes each expert's gate/up/down as its own
GPTQ module (qweight/qzeros/scales/g_idx) and the router mlp.gate as bfloat16.
The reference (<name>.reference.npz) holds `ids`, `logits` (GPTQModel's float32 forward
pass, loaded by tools/make_quant_fixtures.gptqmodel_reference as the dense ones are) and
`dequant.<module>` (float32 [out, in]) for layer 0's attention and every expert of layer 0,
and one expert of layer 1.
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
sys.path.insert(0, HERE)
import make_quant_fixtures as dense  # noqa: E402
import transformers_oracle as oracle  # noqa: E402

NAME = "gptqmodel-qwen3moe-4bit-g32-sym"
OUT = os.path.join(ROOT, "tests", "fixtures", "moe")
IDS = dense.IDS
REFERENCE_MODULES = (
    [f"model.layers.0.self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj", "o_proj")]
    + [f"model.layers.0.mlp.experts.{e}.{p}" for e in range(4)
       for p in ("gate_proj", "up_proj", "down_proj")]
    + ["model.layers.1.mlp.experts.3.down_proj"])


def make_source(path: str):
    from transformers import PreTrainedTokenizerFast
    cfg = oracle.make_config("qwen3_moe", hidden=64, heads=4, kv_heads=2, head_dim=32,
                             intermediate=128, vocab=320, tied=True,
                             moe=dict(num_experts=4, num_experts_per_tok=2,
                                      moe_intermediate_size=64, norm_topk_prob=True,
                                      decoder_sparse_step=1, mlp_only_layers=[]))
    model = oracle.random_model(cfg, seed=11, std=0.1)
    tok = oracle.train_tiny_tokenizer(vocab_size=300)
    oracle.save_model(model, tok, path, "float32", shard=False)
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>",
                            pad_token="<|endoftext|>").save_pretrained(path)


def float32_twin_logits(qdir: str, weights: dict) -> np.ndarray:
    """A plain float32 transformers model of GPTQModel's dequantized weights (written per
    expert and loaded with from_pretrained, which stacks the experts): a sanity check."""
    from safetensors import safe_open
    from safetensors.torch import save_file
    twin = tempfile.mkdtemp(prefix="qwen-np-twin-")
    sd = {}
    with safe_open(os.path.join(qdir, "model.safetensors"), "pt") as f:
        for k in f.keys():
            if not k.endswith((".qweight", ".qzeros", ".scales", ".g_idx")):
                sd[k] = f.get_tensor(k).float()
    sd.update({n + ".weight": w.contiguous() for n, w in weights.items()})
    save_file(sd, os.path.join(twin, "model.safetensors"), metadata={"format": "pt"})
    cfg = json.load(open(os.path.join(qdir, "config.json")))
    del cfg["quantization_config"]
    cfg["dtype"] = "float32"
    json.dump(cfg, open(os.path.join(twin, "config.json"), "w"))
    model = oracle.load_reference(twin, "float32")
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([IDS])).logits[0].numpy()
    shutil.rmtree(twin)
    return logits


def main():
    os.chdir(tempfile.mkdtemp(prefix="qwen-np-quant-logs-"))   # GPTQModel writes logs/ into the cwd
    d = os.path.join(OUT, NAME)
    shutil.rmtree(d, ignore_errors=True)
    src = tempfile.mkdtemp(prefix="qwen-np-src-")
    make_source(src)
    dense.gptqmodel_quantize(src, d, bits=4, group=32, desc_act=False, sym=True)
    ref = dense.gptqmodel_reference(d, REFERENCE_MODULES, float32_twin_logits)
    dense.keep_only_needed(d, src)
    np.savez_compressed(os.path.join(OUT, f"{NAME}.reference.npz"), ids=np.array(IDS), **ref)
    size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
    print(f"{NAME}: {size // 1024} KiB")
    shutil.rmtree(src)


if __name__ == "__main__":
    main()
