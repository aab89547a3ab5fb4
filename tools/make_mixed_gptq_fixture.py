"""Regenerate tests/fixtures/mixed/qwen-np-mixed-4bit-g32: a `qwen-np quantize --keep` file
(mixed precision written as GPTQModel's `dynamic` overrides, a quantized LM head) loaded and
run by GPTQModel, so that the test can check that GPTQModel reads each module's width as
qwen-np wrote it.

Environment: the offline oracle environment of tools/make_quant_fixtures.py (GPTQModel 7.7.0
on torch 2.13.0 CPU); then

    GPTQMODEL_CPU_WORKERS=2 python tools/make_mixed_gptq_fixture.py

Writes tests/fixtures/mixed/qwen-np-mixed-4bit-g32/ and its .reference.npz: `ids`, `logits`
(GPTQModel's forward pass, float32), `dequant.<module>` (GPTQModel's dequantized weights
[out, in]) for the modules in MODULES, and `sha256` of the model.safetensors GPTQModel ran.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import make_quant_fixtures as mq  # noqa: E402

NAME = "qwen-np-mixed-4bit-g32"
KEEP = ["16:layers.0.self_attn.q_proj", "8:lm_head,down_proj"]
MODULES = ["lm_head", "model.layers.0.self_attn.k_proj", "model.layers.0.mlp.down_proj",
           "model.layers.1.self_attn.q_proj", "model.layers.1.mlp.down_proj"]


def main():
    import numpy as np
    from qwen_np.apps.quantize import quantize_folder
    os.chdir(tempfile.mkdtemp(prefix="qwen-np-quant-logs-"))   # GPTQModel writes logs/ here
    src = tempfile.mkdtemp(prefix="qwen-np-src-")
    mq.make_source(src)
    mq.OUT = os.path.join(os.path.dirname(mq.OUT), "mixed")         # mq.save writes there
    d = os.path.join(mq.OUT, NAME)
    shutil.rmtree(d, ignore_errors=True)
    quantize_folder(src, d, bits=4, group_size=32, keep=KEEP)
    with open(os.path.join(d, "model.safetensors"), "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    ref = mq.gptqmodel_reference(d, MODULES)
    ref["sha256"] = np.array(sha)
    mq.save(NAME, d, ref, src)
    shutil.rmtree(src)


if __name__ == "__main__":
    main()
