"""Memory benchmark: a random float32 Qwen2 model (hidden 1024, 8 layers), its int4 GPTQ
version made by `qwen-np quantize`, and for each `qwen-np memory --measure` (predicted vs
measured peak RSS during a short generation), each in a fresh process.

    python tools/bench_memory.py [--workdir /tmp/qwen-np-bench] [--context 512]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

CONFIG = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 1024,
          "intermediate_size": 2816, "num_hidden_layers": 8, "num_attention_heads": 16,
          "num_key_value_heads": 4, "vocab_size": 32000, "max_position_embeddings": 4096,
          "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": True,
          "torch_dtype": "float32"}


def make_float_model(path: str, seed: int = 0):
    from qwen_np.formats.safetensors import write_safetensors
    from qwen_np.model.config import config_from_hf_dict
    from qwen_np.model.weights import expected_shapes
    rng = np.random.default_rng(seed)
    cfg = config_from_hf_dict(CONFIG)
    tensors = {}
    for name, shape in expected_shapes(cfg).items():
        if name.endswith("norm.weight"):
            tensors[name] = (1 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        else:
            tensors[name] = (0.05 * rng.standard_normal(shape)).astype(np.float32)
    os.makedirs(path, exist_ok=True)
    write_safetensors(os.path.join(path, "model.safetensors"), tensors, {"format": "pt"})
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(CONFIG, f, indent=2)


def measure(path: str, context: int) -> tuple[float, float, str]:
    r = subprocess.run([sys.executable, "-m", "qwen_np", "memory", path, "--context", str(context),
                        "--measure"], capture_output=True, text=True, check=True)
    pred = int(re.search(r"predicted peak\s+([\d,]+) B", r.stdout).group(1).replace(",", ""))
    peak = int(re.search(r"measured peak RSS\s+([\d,]+) B", r.stdout).group(1).replace(",", ""))
    return pred / 2**20, peak / 2**20, r.stdout


TRANSFORMERS_PEAK = r"""
import sys, torch, transformers
model = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32)
ids = torch.randint(0, model.config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    model.generate(ids, max_new_tokens=16, do_sample=False, attention_mask=torch.ones_like(ids),
                   pad_token_id=0)
print([l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1])
"""


def transformers_peak(path: str) -> float | None:
    """Peak RSS (MiB) of transformers running the same float32 folder (None if not installed)."""
    r = subprocess.run([sys.executable, "-c", TRANSFORMERS_PEAK, path], capture_output=True,
                       text=True)
    if r.returncode != 0:
        return None
    return int(r.stdout.strip().splitlines()[-1]) / 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default="/tmp/qwen-np-bench")
    ap.add_argument("--context", type=int, default=512)
    args = ap.parse_args()
    f32, q4 = os.path.join(args.workdir, "f32"), os.path.join(args.workdir, "int4-g128")
    if not os.path.isfile(os.path.join(f32, "model.safetensors")):
        make_float_model(f32)
    if not os.path.isfile(os.path.join(q4, "model.safetensors")):
        subprocess.run([sys.executable, "-m", "qwen_np", "quantize", f32, q4, "--bits", "4",
                        "--group-size", "128", "--sym"], check=True)
    rows = {}
    for name, path in (("float32", f32), ("int4 g128 (GPTQ, RTN)", q4)):
        pred, peak, out = measure(path, args.context)
        rows[name] = (pred, peak)
        print(out)
    print(f"| model | predicted peak (MiB) | measured peak RSS (MiB) | measured / predicted |")
    print(f"| --- | --- | --- | --- |")
    for name, (pred, peak) in rows.items():
        print(f"| {name} | {pred:.1f} | {peak:.1f} | {peak / pred:.3f} |")
    (pf, mf), (pq, mq) = rows.values()
    print(f"\nint4 measured peak / float32 measured peak = {mq / mf:.3f}")
    tf = transformers_peak(f32)
    if tf is not None:
        print(f"transformers (torch) float32, same folder, 16 + 16 tokens: peak RSS {tf:.1f} MiB; "
              f"qwen-np float32 / transformers = {mf / tf:.3f}, qwen-np int4 / transformers = "
              f"{mq / tf:.3f}")


if __name__ == "__main__":
    main()
