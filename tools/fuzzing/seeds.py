"""The seeds every input is mutated from: copies of the test fixtures, a quantize_config.json
variant, a qwen.tiktoken folder, and GGUF files written at start-up; the published chat
templates given to some of them; which files of each a format's mutations may target."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass

from fuzzing.locations import FIXTURES, REPO
from fuzzing.mutate_chat_template import GGUF_TEMPLATE_KEY
from fuzzing.mutate_gguf import walk_gguf


FORMATS = ("gguf", "safetensors", "index", "config", "generation_config", "quant_config",
           "tokenizer", "tiktoken", "tokenizer_config", "chat_template")
JSON_FILES = {"config": "config.json", "generation_config": "generation_config.json",
              "index": "model.safetensors.index.json", "quant_config": "quantize_config.json",
              "tokenizer": "tokenizer.json", "tokenizer_config": "tokenizer_config.json"}

# name -> fixture folder
HF_SEEDS = {
    "qwen2-tied-f32": "qwen2-tied-f32",
    "qwen2-untied-bf16-sharded": "qwen2-untied-bf16-sharded",
    "gptq-4bit-g32-sym": "quant/gptqmodel-4bit-g32-sym",
    "gptq-4bit-g32-descact-asym": "quant/gptqmodel-4bit-g32-descact-asym",
    "gptq-8bit-g64-sym": "quant/gptqmodel-8bit-g64-sym",
    "awq-4bit-g32-gemm": "quant/autoawq-4bit-g32-gemm",
    "qwen1-f32-ntk-logn": "qwen1/qwen1-f32-ntk-logn",
    "qwen1-gptq-int4": "qwen1/qwen1-gptq-int4",
    "qwen2moe-step2-f32": "moe/qwen2moe-step2-f32",
    "gptq-qwen3moe": "moe/gptqmodel-qwen3moe-4bit-g32-sym",
    "qwen3-yarn": "yarn/qwen3-yarn2-betas",
}
# the original Qwen's fixtures hold no tokenizer: they get qwen2-tied-f32's (300 ids < 320 rows)
TOKENIZER_FROM = "qwen2-tied-f32"
# qwen2-tied-f32 with a qwen.tiktoken made from its tokenizer.json in place of that file
TIKTOKEN_SEED = "qwen2-tied-f32-tiktoken"

# the published chat templates (tests/fixtures/chat_templates/) and where the seeds hold them:
# each place a checkpoint may keep one (formats/chat_templates.py), a named list among them
CHAT_TEMPLATES = os.path.join(FIXTURES, "chat_templates")
QWEN25_TEMPLATE, QWEN3_TEMPLATE = "qwen2.5-instruct.jinja", "qwen3.jinja"
JINJA_SEEDS = {"qwen2-tied-f32": QWEN25_TEMPLATE}                  # chat_template.jinja
TOKENIZER_CONFIG_SEEDS = {"qwen3-yarn": QWEN3_TEMPLATE,           # tokenizer_config.json
                          "gptq-4bit-g32-sym": [("default", QWEN25_TEMPLATE),
                                                ("tool_use", QWEN25_TEMPLATE)]}
CHAT_TEMPLATE_JSON_SEEDS = {"qwen2-untied-bf16-sharded": QWEN25_TEMPLATE}  # chat_template.json
# GGUF seeds: tokenizer.chat_template (the MoE ones keep none, as a GGUF may)
GGUF_TEMPLATES = {"qwen2-f32": QWEN25_TEMPLATE, "qwen2-f16": QWEN25_TEMPLATE,
                  "qwen2-q8_0": QWEN25_TEMPLATE, "qwen2-q4_0": QWEN25_TEMPLATE,
                  "qwen3-f32": QWEN3_TEMPLATE}

# Run in a separate Python: gguf_writer reads safetensors through torch, which the fuzzing
# parent should not carry into every forked child. The Q4_0 and F16 files need matrices whose
# rows are whole 32-element blocks, so they come from a random float model of the quant
# fixtures' shape (hidden 64, MLP 128). gguf-py's own add_chat_template writes each file's
# tokenizer.chat_template (argv[4]: {file name: template text}), as llama.cpp's converter does.
GGUF_SEED_SCRIPT = r"""
import json, os, shutil, sys
import numpy as np
tests, fixtures, out, templates = sys.argv[1:5]
sys.path.insert(0, tests)
import gguf
from gguf import GGMLQuantizationType as T
from gguf_writer import write_gguf_from_hf
from safetensors.numpy import save_file

templates = json.loads(templates)


class WriterWithTemplate(gguf.GGUFWriter):
    def write_header_to_file(self, *args, **kwargs):
        template = templates.get(os.path.basename(str(self.path)))
        if template:
            self.add_chat_template(template)
        super().write_header_to_file(*args, **kwargs)


gguf.GGUFWriter = WriterWithTemplate    # what write_gguf_from_hf makes

h64 = os.path.join(out, "float-h64")
os.makedirs(h64)
cfg = json.load(open(os.path.join(fixtures, "quant/gptqmodel-4bit-g32-sym/config.json")))
del cfg["quantization_config"]
cfg["dtype"] = "float32"
json.dump(cfg, open(os.path.join(h64, "config.json"), "w"), indent=2)
shutil.copy(os.path.join(fixtures, "quant/gptqmodel-4bit-g32-sym/tokenizer.json"), h64)
D, F, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
Dh = D // cfg["num_attention_heads"]
Dkv = Dh * cfg["num_key_value_heads"]
shapes = {"model.embed_tokens.weight": (V, D), "model.norm.weight": (D,)}
for i in range(cfg["num_hidden_layers"]):
    p = f"model.layers.{i}."
    shapes.update({p + "input_layernorm.weight": (D,), p + "post_attention_layernorm.weight": (D,),
                   p + "self_attn.q_proj.weight": (D, D), p + "self_attn.q_proj.bias": (D,),
                   p + "self_attn.k_proj.weight": (Dkv, D), p + "self_attn.k_proj.bias": (Dkv,),
                   p + "self_attn.v_proj.weight": (Dkv, D), p + "self_attn.v_proj.bias": (Dkv,),
                   p + "self_attn.o_proj.weight": (D, D), p + "mlp.gate_proj.weight": (F, D),
                   p + "mlp.up_proj.weight": (F, D), p + "mlp.down_proj.weight": (D, F)})
rng = np.random.default_rng(0)
tensors = {n: (1.0 + 0.1 * rng.standard_normal(s) if n.endswith("norm.weight")
               else 0.05 * rng.standard_normal(s)).astype(np.float32) for n, s in shapes.items()}
save_file(tensors, os.path.join(h64, "model.safetensors"))

write_gguf_from_hf(os.path.join(fixtures, "qwen2-tied-f32"), os.path.join(out, "qwen2-f32.gguf"), T.F32)
write_gguf_from_hf(os.path.join(fixtures, "qwen3-headdim12-f32"), os.path.join(out, "qwen3-f32.gguf"), T.F32)
for name, qtype in (("f16", T.F16), ("q8_0", T.Q8_0), ("q4_0", T.Q4_0)):
    write_gguf_from_hf(h64, os.path.join(out, f"qwen2-{name}.gguf"), qtype)
# stacked experts (and a shared expert); stacked experts with YaRN metadata
write_gguf_from_hf(os.path.join(fixtures, "moe/qwen2moe-allsparse-bf16"),
                   os.path.join(out, "qwen2moe-q8_0.gguf"), T.Q8_0)
write_gguf_from_hf(os.path.join(fixtures, "yarn/qwen3moe-yarn4"),
                   os.path.join(out, "qwen3moe-yarn-f32.gguf"), T.F32)
shutil.rmtree(h64)
"""


@dataclass
class Seed:
    name: str
    path: str                    # a model folder, or a .gguf file
    targets: dict                # format -> files it can mutate (relative; "" is the GGUF itself)


def build_seeds(root: str, with_gguf: bool = True) -> list[Seed]:
    """Copies of the fixtures, the quantize_config.json variant, and (with_gguf) GGUF files,
    all under root/seeds."""
    seeds_dir = os.path.join(root, "seeds")
    os.makedirs(seeds_dir)
    for name, fixture in HF_SEEDS.items():
        shutil.copytree(os.path.join(FIXTURES, fixture), os.path.join(seeds_dir, name))
        if name.startswith("qwen1"):
            shutil.copy(os.path.join(FIXTURES, TOKENIZER_FROM, "tokenizer.json"),
                        os.path.join(seeds_dir, name))
    # older AutoGPTQ checkpoints keep the settings in quantize_config.json, not in config.json
    legacy = os.path.join(seeds_dir, "gptq-4bit-g32-quantize-config-json")
    shutil.copytree(os.path.join(seeds_dir, "gptq-4bit-g32-sym"), legacy)
    with open(os.path.join(legacy, "config.json")) as f:
        cfg = json.load(f)
    with open(os.path.join(legacy, "quantize_config.json"), "w") as f:
        json.dump(cfg.pop("quantization_config"), f, indent=2)
    with open(os.path.join(legacy, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    # the original Qwen's tokenizer file in place of tokenizer.json
    tiktoken = os.path.join(seeds_dir, TIKTOKEN_SEED)
    shutil.copytree(os.path.join(seeds_dir, "qwen2-tied-f32"), tiktoken)
    with open(os.path.join(tiktoken, "qwen.tiktoken"), "wb") as f:
        f.write(tiktoken_from_tokenizer_json(os.path.join(tiktoken, "tokenizer.json")))
    os.unlink(os.path.join(tiktoken, "tokenizer.json"))
    add_chat_templates(seeds_dir)
    if with_gguf:
        gguf_templates = {f"{name}.gguf": published_template(t)
                          for name, t in GGUF_TEMPLATES.items()}
        subprocess.run([sys.executable, "-c", GGUF_SEED_SCRIPT, os.path.join(REPO, "tests"),
                        FIXTURES, seeds_dir, json.dumps(gguf_templates)], check=True)
    seeds = []
    for name in sorted(os.listdir(seeds_dir)):
        path = os.path.join(seeds_dir, name)
        seeds.append(Seed(name.removesuffix(".gguf"), path, seed_targets(path)))
    return seeds


def published_template(name: str) -> str:
    """The text of tests/fixtures/chat_templates/<name>."""
    with open(os.path.join(CHAT_TEMPLATES, name), encoding="utf-8") as f:
        return f.read()


def add_chat_templates(seeds_dir: str) -> None:
    """The published templates, each in the place JINJA_SEEDS and the like say;
    tokenizer_config.json with the special tokens as Qwen's checkpoints write them (eos a
    string, pad an AddedToken object, bos null)."""
    for name, template in JINJA_SEEDS.items():
        with open(os.path.join(seeds_dir, name, "chat_template.jinja"), "w", encoding="utf-8") as f:
            f.write(published_template(template))
    for name, template in TOKENIZER_CONFIG_SEEDS.items():
        value = published_template(template) if isinstance(template, str) else \
            [{"name": n, "template": published_template(t)} for n, t in template]
        config = {"bos_token": None, "eos_token": "<|im_end|>",
                  "pad_token": {"content": "<|endoftext|>", "special": True},
                  "model_max_length": 131072, "chat_template": value}
        with open(os.path.join(seeds_dir, name, "tokenizer_config.json"), "w",
                  encoding="utf-8") as f:
            json.dump(config, f, indent=2, ensure_ascii=False)
    for name, template in CHAT_TEMPLATE_JSON_SEEDS.items():
        with open(os.path.join(seeds_dir, name, "chat_template.json"), "w", encoding="utf-8") as f:
            json.dump({"chat_template": published_template(template)}, f, indent=2,
                      ensure_ascii=False)


def seed_targets(path: str) -> dict:
    if path.endswith(".gguf"):
        with open(path, "rb") as f:
            keys = {k for _, _, k in walk_gguf(f.read()).kvs}
        return {"gguf": [""], **({"chat_template": [""]} if GGUF_TEMPLATE_KEY in keys else {})}
    files = set(os.listdir(path))
    targets = {fmt: [name] for fmt, name in JSON_FILES.items() if name in files}
    # the template the folder's model uses: chat_template.jinja first (formats/chat_templates.py)
    if "chat_template.jinja" in files:
        targets["chat_template"] = ["chat_template.jinja"]
    elif "chat_template.json" in files:
        targets["chat_template"] = ["chat_template.json#chat_template"]
    elif "tokenizer_config.json" in files:
        with open(os.path.join(path, "tokenizer_config.json"), encoding="utf-8") as f:
            if "chat_template" in json.load(f):
                targets["chat_template"] = ["tokenizer_config.json#chat_template"]
    if "qwen.tiktoken" in files:
        targets["tiktoken"] = ["qwen.tiktoken"]
    with open(os.path.join(path, "config.json")) as f:
        if "quantization_config" in json.load(f):
            # config.json's quantization_config wins over quantize_config.json (as in
            # transformers), so that object is the target: a JSON-only one
            targets["quant_config"] = ["config.json#quantization_config"]
    targets["safetensors"] = sorted(f for f in files if f.endswith(".safetensors"))
    return targets


def tiktoken_from_tokenizer_json(path: str) -> bytes:
    """A qwen.tiktoken (`base64(token bytes) rank` per line) with a byte-level BPE
    tokenizer.json's vocabulary: each token's characters mapped back to bytes through GPT-2's
    byte-to-unicode table, added tokens left out (qwen.tiktoken has none: the library adds
    its special tokens after the ranks), ranks 0, 1, 2 ... in the order of the ids."""
    with open(path, encoding="utf-8") as f:
        tok = json.load(f)
    added = {t["id"] for t in tok.get("added_tokens", [])}
    to_byte = {c: b for b, c in gpt2_byte_to_unicode().items()}
    vocab = sorted((i, t) for t, i in tok["model"]["vocab"].items() if i not in added)
    lines = [base64.b64encode(bytes(to_byte[c] for c in t)) + b" %d" % rank
             for rank, (_, t) in enumerate(vocab)]
    return b"".join(line + b"\n" for line in lines)


def gpt2_byte_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in for each byte (its encoder.py bytes_to_unicode): printable
    Latin-1 bytes stand for themselves, the other 68 become U+0100, U+0101, ... in order.
    Written out here rather than imported: the parent must not import NumPy (which
    qwen_np.runtime.tokenizer does) before import_libraries sets the thread counts."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1),
            *range(ord("\u00ae"), ord("\u00ff") + 1)]
    moved = [b for b in range(256) if b not in keep]
    return {**{b: chr(b) for b in keep}, **{b: chr(256 + i) for i, b in enumerate(moved)}}
