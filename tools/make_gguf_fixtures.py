"""Regenerate tests/fixtures/gguf: what transformers makes of the real Qwen2.5-Coder-0.5B GGUF.

    pip install torch==2.13.0 transformers==5.24.0 gguf
    qwen-np fetch                                   # the file, into the cache
    python tools/make_gguf_fixtures.py [PATH.gguf]

Writes
  tokenizer_ids.json      {text: ids} from transformers' tokenizer loaded from the GGUF
                          (AutoTokenizer.from_pretrained(dir, gguf_file=...))
  real_model_logits.npz   for each prompt: its ids, and transformers' float32 last-position
                          logits (the model loaded from the GGUF, dequantized to float32) at the
                          64 largest entries and 512 random vocabulary positions
  real_model_greedy.json  transformers' greedy 48 tokens after "def fibonacci(n):"
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import torch
import transformers

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "tests", "fixtures", "gguf")
TEXTS = [
    "def fibonacci(n):",
    "The capital of France is",
    "Hello, world! How are you?",
    "你好，世界！这是一个测试。",
    "\tif x  ==   1:\n\t\treturn    'a'\n\n\n    pass",
    "emoji 🙂👍🏽 and digits 1234567 3.14159 0x1F",
    "<|im_start|>system\nYou are Qwen.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|><|fim_prefix|>def f():<|fim_suffix|>\n<|fim_middle|>",
    "don't I'LL we've THEY'RE",
    "   leading spaces and trailing   ",
]
PROMPTS = ["def fibonacci(n):", "The capital of France is",
           "<|im_start|>user\nWrite a haiku about numpy.<|im_end|>\n<|im_start|>assistant\n"]


def main():
    sys.path.insert(0, os.path.join(HERE, ".."))
    from qwen_np.apps.fetch import default_model_path
    path = sys.argv[1] if len(sys.argv) > 1 else default_model_path()
    folder, name = os.path.split(os.path.abspath(path))
    os.makedirs(OUT, exist_ok=True)
    tok = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    ids = {t: tok.encode(t, add_special_tokens=False) for t in TEXTS}
    with open(os.path.join(OUT, "tokenizer_ids.json"), "w", encoding="utf-8") as f:
        json.dump(ids, f, ensure_ascii=False, indent=1)

    model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name,
                                                              dtype=torch.float32)
    model.eval()
    rng = np.random.default_rng(0)
    ref = {}
    for k, p in enumerate(PROMPTS):
        pid = tok.encode(p, add_special_tokens=False)
        with torch.no_grad():
            last = model(torch.tensor([pid])).logits[0, -1].float().numpy()
        top = np.argsort(-last)[:64]
        rand = rng.choice(last.size, 512, replace=False)
        idx = np.concatenate([top, rand])
        ref[f"ids_{k}"] = np.array(pid)
        ref[f"index_{k}"] = idx
        ref[f"logits_{k}"] = last[idx]
        print(p[:30], "top tokens", top[:5].tolist())
    np.savez_compressed(os.path.join(OUT, "real_model_logits.npz"), **ref)

    pid = tok.encode("def fibonacci(n):", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(torch.tensor([pid]), max_new_tokens=48, do_sample=False,
                             attention_mask=torch.ones(1, len(pid), dtype=torch.long))
    new = out[0, len(pid):].tolist()
    with open(os.path.join(OUT, "real_model_greedy.json"), "w") as f:
        json.dump({"prompt": "def fibonacci(n):", "prompt_ids": pid, "new_ids": new,
                   "text": tok.decode(pid + new)}, f, indent=1)
    print(tok.decode(pid + new))


if __name__ == "__main__":
    main()
