"""Regenerate tests/fixtures/moe/<name>.llama_cpp.npz: what llama.cpp itself computes for MoE
GGUF files (qwen2moe, qwen3moe) written from the all-sparse tiny fixtures.

    pip install torch==2.13.0 transformers==5.24.0 gguf==0.19.0 tokenizers safetensors
    python tools/make_moe_gguf_fixtures.py [--llama-python PATH]

PATH is a Python with llama-cpp-python (tools/README.md; 0.3.36 here), run in a child
process: llama.cpp aborts the process (GGML_ASSERT) on some bad files.

For each fixture the GGUF is written by tests/gguf_writer.write_gguf_from_hf (gguf-py's
GGUFWriter, experts stacked as convert_hf_to_gguf.py stacks them) with F32 weights, into a
temporary folder; llama.cpp evaluates fixed ids with logits for every position and an F32
KV cache (its default F16 cache rounds keys and values). The npz holds
    ids           the ids
    logits        llama.cpp's float32 logits [T, V]
    gguf_sha256   the hash of the file llama.cpp read: the test writes the file again and
                  checks it is the same file
Only F32 files: with quantized weights llama.cpp also rounds each product's input to 8-bit
blocks (ggml's CPU vec_dot for Q8_0 and Q4_0), which no float reference does.
Only all-sparse models: llama.cpp's qwen2moe / qwen3moe graphs have no dense layers.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
from gguf_writer import write_gguf_from_hf  # noqa: E402

FIXTURES = os.path.join(HERE, "..", "tests", "fixtures", "moe")
NAMES = ["qwen2moe-allsparse-bf16", "qwen3moe-allsparse-bf16"]
IDS = [5, 77, 301, 12, 9, 140, 266, 31, 3, 199, 58]

RUNNER = r"""
import sys, json
import numpy as np
import llama_cpp
path, ids, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
llm = llama_cpp.Llama(model_path=path, n_ctx=64, n_batch=64, logits_all=True, n_threads=2,
                      verbose=False, n_gpu_layers=0, type_k=0, type_v=0)   # 0: GGML_TYPE_F32
llm.eval(ids)
np.save(out, np.array(llm.scores[:len(ids)], dtype=np.float32))
print(llama_cpp.__version__)
"""


def main():
    from gguf import GGMLQuantizationType as T
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama-python", default=os.environ.get("LLAMA_PYTHON", "python3"))
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="qwen-np-moe-gguf-")
    for name in NAMES:
        path = os.path.join(tmp, name + ".gguf")
        write_gguf_from_hf(os.path.join(FIXTURES, name), path, T.F32)
        out = os.path.join(tmp, name + ".npy")
        r = subprocess.run([args.llama_python, "-c", RUNNER, path, json.dumps(IDS), out],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"llama.cpp failed on {name}: {r.stderr.strip()[-500:]}")
        with open(path, "rb") as f:
            sha = hashlib.sha256(f.read()).hexdigest()
        logits = np.load(out)
        np.savez_compressed(os.path.join(FIXTURES, name + ".llama_cpp.npz"), ids=np.array(IDS),
                            logits=logits, gguf_sha256=np.array(sha))
        print(f"{name}: llama-cpp-python {r.stdout.strip()}, logits {logits.shape}, "
              f"file sha256 {sha[:16]}")


if __name__ == "__main__":
    main()
