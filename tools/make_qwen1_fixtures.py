"""Regenerate tests/fixtures/qwen1: tiny random Qwen (v1, `model_type: "qwen"`,
`QWenLMHeadModel`) checkpoints, the outputs of Qwen's own modeling code for them, and Qwen's own
chat prompts (`make_context`) and token ids for the real `qwen.tiktoken`.

The original Qwen has no class in transformers: it ships its code beside its weights
(`trust_remote_code`). That code is the reference here. It is imported, never copied: get
modeling_qwen.py, configuration_qwen.py, qwen_generation_utils.py and tokenization_qwen.py from
the Hugging Face repository Qwen/Qwen-7B (a GitHub mirror: zhangningboo/Qwen-7B; these fixtures
were made with modeling_qwen.py as of commit d4efd21e) and pass their folder as --qwen-source,
either a folder that holds them as a package `qwen_v1/` (with an empty __init__.py), or the folder
of the four files itself (the script then makes it the package `qwen_v1`).

Offline oracle environment (not a test dependency). Qwen's code needs an older transformers than
the rest of the project, so it goes into a separate --target folder beside a venv that holds
torch==2.13.0 (CPU), numpy, safetensors and tiktoken:
    pip install --target /tmp/qwen1-oracle --no-deps transformers==4.40.2 tokenizers==0.19.1 \\
        huggingface-hub==0.23.4 einops transformers_stream_generator
    PYTHONPATH=/tmp/qwen1-oracle python tools/make_qwen1_fixtures.py --qwen-source DIR \\
        [--tiktoken ~/.cache/qwen-np/qwen.tiktoken]
(With --no-deps, transformers 4.40.2 still imports packaging, pyyaml, regex, requests, tqdm and
filelock: torch and tiktoken bring filelock, regex and requests into the venv; add packaging,
pyyaml and tqdm there if they are missing.)

Written for each model in MODELS: tests/fixtures/qwen1/<name>/ (config.json, model.safetensors)
and tests/fixtures/qwen1/<name>.reference.npz with
    ids_0, ids_1          random ids, 5 (< seq_length 8) and 19 long (> 2 * seq_length: the
                          dynamic-NTK alpha of that prefill is 7)
    logits32_<k>          Qwen's code in float32 on the stored weights (bfloat16 / float16 read
                          back as float32)                                  [T, V] float32
    logits64_<k>          the same in float64                              [T, V] float64
    prompt, greedy        a 5-token prompt and 16 greedy tokens (the decode crosses seq_length:
                          logn scaling acts while the alpha of the prefill, 1, is kept)
    greedy_logits         the float32 logits that chose each greedy token   [16, V]
    prompt_long,          a 12-token prompt (prefill alpha 3) and 8 greedy tokens
    greedy_long, greedy_long_logits
    chunk_a, chunk_b      6 and 5 ids
    chunk_logits          the logits of chunk_b after a prefill of chunk_a, fed one token at a
                          time on its cache: what a causal forward over the chunk on that cache
                          computes, with Qwen's dynamic-NTK alpha kept from the prefill of
                          chunk_a (1, though the 11 keys exceed seq_length)          [5, V]
    chunk_last_logits     its last row
    chunk_unmasked_last_logits  the last row of Qwen's own forward over all of chunk_b at once
                          on that cache. Qwen applies no causal mask when a chunk of several
                          tokens meets a non-empty cache, so the chunk's tokens see later ones
                          in every layer; from the second layer on even the last row differs
                          from a causal forward (kept to show that; not a value to match)
    chunk_full_last_logits  the last row of one prefill of chunk_a + chunk_b (alpha 3)
    dequant.<module>      (GPTQ model only) the dequantized weight [out, in], float32

Models (all: vocabulary 320, hidden 48, 4 heads, kv_channels 12, 2 layers, MLP width 80
(`intermediate_size` 160: Qwen's config holds twice the width), seq_length 8,
max_position_embeddings 64, untied head, random weights: matrices N(0, 0.2), norms
1 + N(0, 0.1), the c_attn bias N(0, 0.1); the GPTQ model's projections are random 4-bit codes
with float16 scales of about 0.2 / 4.6, so weights of about the same size):
  qwen1-f32-ntk-logn       float32, dynamic NTK and logn attention on
  qwen1-bf16-rotary-half   bfloat16, rotary_pct 0.5 (RoPE on the first 6 of 12 dims), NTK + logn
  qwen1-f16-early-keys     float16, the config key names of the first (Aug 2023) Qwen-7B-Chat
                           release (n_embd, n_head, n_layer, ffn_hidden_size, padded_vocab_size,
                           n_positions), NTK and logn off
  qwen1-f32-cache-int8     float32, NTK + logn, use_cache_quantization. Qwen quantizes every
                           key and value to uint8 as soon as it is computed (after RoPE), so a
                           plain forward pass is affected too: one scale and zero point per head
                           over all positions and dims of the tokens of that forward call
                           (scale = (max - min) / 255, zero = -min / scale, code = truncation of
                           x / scale + zero to uint8, not rounding); a prompt's keys share one
                           scale per head, each decoded token has its own. The largest value of
                           each block lands on 254.99.. or 255.0.. by rounding, so on code 254 or
                           255: float64 and float32 logits differ by about 2e-3 here
  qwen1-gptq-int4          the Qwen-7B-Chat-Int4 layout: AutoGPTQ v1 4-bit, group 16, sym,
                           desc_act off, float16 scales, NTK + logn; its reference runs the
                           dequantized weights through Qwen's code in float32 (and float64)

float64: Qwen's RMSNorm and rotary code call `.float()`, so `model.double()` alone still rounds
the norms, RoPE's inv_freq / cos / sin and the rotation to float32. The float64 reference runs
inside `float64_everywhere()`, which rebinds `torch.Tensor.float` to `.double()` (and makes
float64 the default dtype while the model is built, so the logn table is float64 too), then
restores both. The script checks that this took effect: the result differs from an unpatched
`model.double()` run, and from the float32 logits by about 1e-7..1e-6 relative.

Also written: tests/fixtures/qwen1/make_context.json: Qwen's QWenTokenizer on the real
qwen.tiktoken (its sha256 recorded): chat prompts from qwen_generation_utils.make_context
(chatml, max_window_size 6144) with their raw text and ids, get_stop_words_ids("chatml"), and
`tokenizer.encode` ids (allowed_special "all", NFC: Qwen's defaults) and decoded text for a
list of strings.

Also written: tests/fixtures/qwen1/kv-quantizer.npz: modeling_qwen.py's own quantize_cache_v
(float32, qmin 0, qmax 255) on fixed random chunks, so that the quantizer is compared exactly,
apart from the float rounding upstream that moves a model's keys across its truncation steps:
    x_<k>                 a chunk of keys or values [T, heads, head_dim] float32 (T = 1, 7, 64)
    codes_<k>             uint8 [T, heads, head_dim]
    scale_<k>, zero_<k>   float32 [T, heads] (one value per head, repeated over the chunk)

Greedy continuations use a plain loop (prefill with use_cache, then one token at a time with
past_key_values, argmax, no stopping), not Qwen's `generate`/`chat`, which add stop words.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import sys
import types

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from qwen1_chat_fixture import make_context_fixture
from qwen1_gptq_fixture import GPTQ_GROUP, gptq_tensors, stored_state

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "tests", "fixtures", "qwen1")
DEFAULT_TIKTOKEN = os.path.join(os.path.expanduser("~"), ".cache", "qwen-np", "qwen.tiktoken")

VOCAB, HIDDEN, HEADS, KV_CHANNELS, LAYERS, MLP = 320, 48, 4, 12, 2, 80
SEQ_LENGTH = 8
# The config keys of the current Qwen-7B config.json, shared by every model.
BASE = dict(vocab_size=VOCAB, hidden_size=HIDDEN, num_attention_heads=HEADS,
            num_hidden_layers=LAYERS, intermediate_size=2 * MLP, kv_channels=KV_CHANNELS,
            seq_length=SEQ_LENGTH, max_position_embeddings=64, layer_norm_epsilon=1e-6,
            rotary_emb_base=10000, rotary_pct=1.0, use_dynamic_ntk=True, use_logn_attn=True,
            no_bias=True, tie_word_embeddings=False, scale_attn_weights=True,
            use_cache_quantization=False, use_cache_kernel=False, softmax_in_fp32=False)
GPTQ_CONFIG = {"bits": 4, "group_size": GPTQ_GROUP, "damp_percent": 0.01, "desc_act": False,
               "static_groups": False, "sym": True, "true_sequential": True,
               "model_name_or_path": None, "model_file_base_name": "model",
               "quant_method": "gptq"}

# name: (storage dtype, config overrides, config.json style: "current", "early" or "gptq")
MODELS = {
    "qwen1-f32-ntk-logn": ("float32", {}, "current"),
    "qwen1-bf16-rotary-half": ("bfloat16", dict(rotary_pct=0.5), "current"),
    "qwen1-f16-early-keys": ("float16", dict(use_dynamic_ntk=False, use_logn_attn=False), "early"),
    "qwen1-f32-cache-int8": ("float32", dict(use_cache_quantization=True), "current"),
    "qwen1-gptq-int4": ("gptq", {}, "gptq"),
}
INPUT_LENGTHS = (5, 19)
PROMPT_LENGTH, GREEDY_TOKENS = 5, 16
PROMPT_LONG_LENGTH, GREEDY_LONG_TOKENS = 12, 8
CHUNK_A, CHUNK_B = 6, 5
MAX_FOLDER_BYTES = 300_000  # a float32 model of these shapes is 291 KB
DEQUANT_SAVED = ("transformer.h.0.attn.c_attn", "transformer.h.1.mlp.w2")
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


# ---------------------------------------------------------------- Qwen's code

def import_qwen(source: str | None):
    """Import Qwen's files as the package `qwen_v1`: from `source`/qwen_v1/, or from `source`
    itself when it holds the four .py files, or from sys.path when no source is given."""
    if source:
        source = os.path.abspath(source)
        if os.path.isfile(os.path.join(source, "qwen_v1", "modeling_qwen.py")):
            sys.path.insert(0, source)
        elif os.path.isfile(os.path.join(source, "modeling_qwen.py")):
            package = types.ModuleType("qwen_v1")
            package.__path__ = [source]  # the files' relative imports resolve inside it
            sys.modules["qwen_v1"] = package
        else:
            sys.exit(f"--qwen-source {source}: neither qwen_v1/modeling_qwen.py nor "
                     "modeling_qwen.py is there")
    try:
        from qwen_v1 import configuration_qwen, modeling_qwen, qwen_generation_utils
        from qwen_v1 import tokenization_qwen
    except ImportError as e:
        sys.exit(f"cannot import Qwen's code ({e}); pass --qwen-source and put the oracle's "
                 "transformers 4.40.2 on PYTHONPATH (see this script's docstring)")
    return types.SimpleNamespace(config=configuration_qwen, modeling=modeling_qwen,
                                 gen=qwen_generation_utils, tok=tokenization_qwen)


@contextlib.contextmanager
def float64_everywhere():
    """Within this block `Tensor.float()` returns float64 and new tensors default to float64,
    so Qwen's RMSNorm, RoPE (inv_freq, cos, sin, the rotation) and logn table, which call
    `.float()` or `torch.tensor(list)`, compute in float64 like the rest of a double model."""
    saved_float, saved_default = torch.Tensor.float, torch.get_default_dtype()
    torch.Tensor.float = lambda self, *args, **kwargs: self.double()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.Tensor.float = saved_float
        torch.set_default_dtype(saved_default)


def new_model(qwen, config_keys: dict):
    """QWenLMHeadModel with fp32=True (bf16 and fp16 off: Qwen then leaves the weights in
    float32) and no flash attention, on the CPU."""
    config = qwen.config.QWenConfig(**config_keys, fp32=True, bf16=False, fp16=False,
                                    use_flash_attn=False)
    return qwen.modeling.QWenLMHeadModel(config)


def build_model(qwen, config_keys: dict, state: dict, dtype: torch.dtype):
    """A fresh model (no rotary cache or NTK state carried over) in `dtype` with `state`."""
    model = new_model(qwen, config_keys)
    model.to(dtype).eval()
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True)
    return model


def random_state(qwen, config_keys: dict, seed: int, std: float = 0.2) -> dict:
    """Every weight random: matrices N(0, std), norms 1 + N(0, 0.1), biases N(0, 0.1)."""
    model = new_model(qwen, config_keys)
    torch.manual_seed(seed)
    state = {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2:
                p.normal_(0.0, std)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.1)
            else:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            state[name] = p.detach().clone()
    return state


def full_logits(model, ids) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([list(ids)]), use_cache=False).logits[0].numpy()


def greedy(model, prompt, n: int):
    """Prefill `prompt`, then feed back the argmax one token at a time on the cache."""
    tokens, rows = [], []
    with torch.no_grad():
        out = model(torch.tensor([list(prompt)]), use_cache=True)
        for step in range(n):
            row = out.logits[0, -1]
            tokens.append(int(row.argmax()))
            rows.append(row.numpy().copy())
            if step + 1 < n:
                out = model(torch.tensor([[tokens[-1]]]), past_key_values=out.past_key_values,
                            use_cache=True)
    return np.array(tokens), np.stack(rows)


def chunk_after_prefill(model, chunk_a, chunk_b):
    """Prefill chunk_a; then chunk_b one token at a time (causal, the alpha of the prefill
    kept: rows [len(chunk_b), V]) and, from the same prefill, all of chunk_b in one forward
    pass (Qwen's unmasked chunk: its last row)."""
    rows = []
    with torch.no_grad():
        prefill = model(torch.tensor([list(chunk_a)]), use_cache=True).past_key_values
        past = prefill
        for t in chunk_b:
            out = model(torch.tensor([[int(t)]]), past_key_values=past, use_cache=True)
            past = out.past_key_values
            rows.append(out.logits[0, -1].numpy().copy())
        model(torch.tensor([list(chunk_a)]), use_cache=True)  # the NTK state of that prefill
        unmasked = model(torch.tensor([list(chunk_b)]), past_key_values=prefill, use_cache=True)
    return np.stack(rows), unmasked.logits[0, -1].numpy()


# ---------------------------------------------------------------- config.json

def config_keys(overrides: dict) -> dict:
    return {**BASE, **overrides}


def config_json(keys: dict, style: str) -> dict:
    common = {"architectures": ["QWenLMHeadModel"], "model_type": "qwen",
              "auto_map": {"AutoConfig": "configuration_qwen.QWenConfig",
                           "AutoModelForCausalLM": "modeling_qwen.QWenLMHeadModel"},
              "bf16": False, "fp16": False, "fp32": False, "use_flash_attn": "auto",
              "use_cache": True, "initializer_range": 0.02, "tokenizer_class": "QWenTokenizer"}
    if style == "early":
        # Names of the first Qwen-7B-Chat config.json (Aug 2023): hidden_size was n_embd,
        # intermediate_size ffn_hidden_size (also twice the MLP width), the embedding rows
        # padded_vocab_size, max_position_embeddings n_positions.
        early = {"n_embd": keys["hidden_size"], "n_head": keys["num_attention_heads"],
                 "n_layer": keys["num_hidden_layers"], "ffn_hidden_size": keys["intermediate_size"],
                 "padded_vocab_size": keys["vocab_size"], "vocab_size": keys["vocab_size"],
                 "n_positions": keys["max_position_embeddings"],
                 "activation": "swiglu", "pos_emb": "rotary", "params_dtype": "torch.float16",
                 "apply_residual_connection_post_layernorm": False, "embd_pdrop": 0.0,
                 "attn_pdrop": 0.0}
        for k in ("kv_channels", "seq_length", "rotary_emb_base", "rotary_pct",
                  "layer_norm_epsilon", "no_bias", "use_dynamic_ntk", "use_logn_attn",
                  "scale_attn_weights", "tie_word_embeddings"):
            early[k] = keys[k]
        common["tokenizer_type"] = common.pop("tokenizer_class")
        return {**common, **early}
    current = dict(keys)
    current.update(emb_dropout_prob=0.0, attn_dropout_prob=0.0)
    if not current["use_cache_quantization"]:
        for k in ("use_cache_quantization", "use_cache_kernel", "softmax_in_fp32"):
            del current[k]
    out = {**common, **current}
    if style == "gptq":
        out["torch_dtype"] = "float16"
        out["quantization_config"] = dict(GPTQ_CONFIG)
    return out


def check_config_reads_back(qwen, path: str, keys: dict):
    """Qwen's QWenConfig reads the written config.json to the config the reference used."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    data.pop("quantization_config", None)
    config = qwen.config.QWenConfig(**data)
    for k, v in keys.items():
        assert getattr(config, k) == v, (path, k, getattr(config, k), v)


# ---------------------------------------------------------------- one model

def make_model(qwen, name: str, seed: int) -> dict:
    storage, overrides, style = MODELS[name]
    keys = config_keys(overrides)
    out_dir = os.path.join(OUT, name)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.makedirs(out_dir)

    state = random_state(qwen, keys, seed)
    deq = {}
    if storage == "gptq":
        tensors, deq = gptq_tensors(state, seed)
    else:
        tensors = {k: v.to(TORCH_DTYPES[storage]).contiguous() for k, v in state.items()}
    path = os.path.join(out_dir, "model.safetensors")
    save_file(tensors, path, metadata={"format": "pt"})
    with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config_json(keys, style), f, indent=2)
        f.write("\n")
    if style != "early":
        check_config_reads_back(qwen, os.path.join(out_dir, "config.json"), keys)

    stored = stored_state(load_file(path), deq)
    m32 = build_model(qwen, keys, stored, torch.float32)
    with float64_everywhere():
        m64 = build_model(qwen, keys, stored, torch.float64)
    assert m64.transformer.h[0].attn.logn_tensor.dtype == torch.float64
    if keys["use_dynamic_ntk"]:  # the alpha Qwen picks for a prefill of n tokens
        for n, alpha in ((5, 1), (11, 3), (12, 3), (19, 7)):
            full_logits(m32, [1] * n)
            assert m32.transformer.rotary_emb._ntk_alpha_cached_list == [alpha], (n, alpha)

    rng = np.random.default_rng(2000 + seed)
    ref = {}
    for k, n in enumerate(INPUT_LENGTHS):
        ids = rng.integers(0, VOCAB, size=n)
        ref[f"ids_{k}"] = ids
        ref[f"logits32_{k}"] = full_logits(m32, ids)
        with float64_everywhere():
            ref[f"logits64_{k}"] = full_logits(m64, ids)
        assert ref[f"logits32_{k}"].dtype == np.float32
        assert ref[f"logits64_{k}"].dtype == np.float64
    ref["prompt"] = rng.integers(0, VOCAB, size=PROMPT_LENGTH)
    ref["greedy"], ref["greedy_logits"] = greedy(m32, ref["prompt"], GREEDY_TOKENS)
    ref["prompt_long"] = rng.integers(0, VOCAB, size=PROMPT_LONG_LENGTH)
    ref["greedy_long"], ref["greedy_long_logits"] = greedy(m32, ref["prompt_long"],
                                                           GREEDY_LONG_TOKENS)
    ref["chunk_a"] = rng.integers(0, VOCAB, size=CHUNK_A)
    ref["chunk_b"] = rng.integers(0, VOCAB, size=CHUNK_B)
    ref["chunk_logits"], ref["chunk_unmasked_last_logits"] = chunk_after_prefill(
        m32, ref["chunk_a"], ref["chunk_b"])
    ref["chunk_last_logits"] = ref["chunk_logits"][-1]
    ref["chunk_full_last_logits"] = full_logits(
        m32, np.concatenate([ref["chunk_a"], ref["chunk_b"]]))[-1]
    for module in DEQUANT_SAVED:
        if module in deq:
            ref[f"dequant.{module}"] = deq[module]

    with float64_everywhere():
        greedy64 = (greedy(m64, ref["prompt"], GREEDY_TOKENS)[0],
                    greedy(m64, ref["prompt_long"], GREEDY_LONG_TOKENS)[0])
    # the greedy tokens are not decided by rounding: float64 picks the same ones
    assert (greedy64[0] == ref["greedy"]).all() and (greedy64[1] == ref["greedy_long"]).all()
    check_model(qwen, name, keys, stored, ref, m32)
    np.savez_compressed(os.path.join(OUT, f"{name}.reference.npz"), **ref)
    return ref


def check_model(qwen, name, keys, stored, ref, m32):
    """The fixture is not flat, float64 really is float64, and the cases differ as designed."""
    for k in range(len(INPUT_LENGTHS)):
        assert ref[f"logits32_{k}"].std() > 0.5, (name, ref[f"logits32_{k}"].std())
    l32, l64 = ref["logits32_1"], ref["logits64_1"]
    rel64 = np.abs(l32 - l64).max() / np.abs(l64).max()
    # float64 with Qwen's `.float()` calls left alone: norms and RoPE in float32
    plain = build_model(qwen, keys, stored, torch.float64)
    rel_plain = np.abs(full_logits(plain, ref["ids_1"]) - l64).max() / np.abs(l64).max()
    assert rel_plain > 1e-12, f"{name}: the float64 patch changed nothing"
    # uint8 cache codes are truncated, not rounded: the largest value of each head's block
    # comes out as 254.99.. or 255.0.., so code 254 or 255, by rounding, and the two precisions
    # (and any implementation whose keys differ by an ulp) part by about 1e-3 there
    limit = 1e-2 if keys["use_cache_quantization"] else 1e-5
    assert 0 < rel64 < limit, (name, rel64)
    # the greedy logits are Qwen's cached decoding; their first row is the prefill's last row
    prefill = full_logits(m32, ref["prompt"])[-1]
    assert np.abs(ref["greedy_logits"][0] - prefill).max() < 1e-5 * np.abs(prefill).max()
    margins = []
    for rows in (ref["greedy_logits"], ref["greedy_long_logits"]):
        top = np.sort(rows, axis=1)
        margins.append(float((top[:, -1] - top[:, -2]).min()))
    scale = np.abs(ref["chunk_full_last_logits"]).max()
    chunk_gap = np.abs(ref["chunk_last_logits"] - ref["chunk_full_last_logits"]).max()
    if keys["use_dynamic_ntk"]:
        assert chunk_gap > 1e-3, (name, chunk_gap)  # alpha 1 (kept) against alpha 3
    elif not keys["use_cache_quantization"]:
        assert chunk_gap < 1e-5 * scale, (name, chunk_gap)
    unmasked_gap = np.abs(ref["chunk_unmasked_last_logits"] - ref["chunk_last_logits"]).max()
    assert unmasked_gap > 1e-3, (name, unmasked_gap)
    print(f"  float64 vs float32 {rel64:.1e}, vs unpatched float64 {rel_plain:.1e}; "
          f"smallest greedy top-2 margin {min(margins):.3f}; chunked vs one prefill "
          f"{chunk_gap:.2e}, unmasked chunk vs causal {unmasked_gap:.2e}")


# ---------------------------------------------------------------- main

def json_with_flat_id_lists(obj) -> str:
    """Indented JSON with each list of integers on one line."""
    def flat(m):
        return "[" + ", ".join(x.strip() for x in m.group(0)[1:-1].split(",") if x.strip()) + "]"
    text = re.sub(r"\[[\d,\s]*\]", flat, json.dumps(obj, ensure_ascii=False, indent=1))
    assert json.loads(text) == json.loads(json.dumps(obj))  # only id lists were folded
    return text


def folder_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))


def kv_quantizer_fixture(qwen) -> dict:
    """Qwen's quantize_cache_v on random chunks [T, heads, head_dim], in our layout."""
    rng = np.random.default_rng(77)
    qmin, qmax = torch.tensor(0.0), torch.tensor(255.0)
    out = {}
    for k, (T, spread) in enumerate(((1, 1.0), (7, 3.0), (64, 0.05))):
        x = (rng.standard_normal((T, 4, 12)) * spread + rng.standard_normal(4)[None, :, None])
        x = x.astype(np.float32)
        # modeling_qwen.py: quantize_cache_v(key.permute(0, 2, 1, 3), ...) on [b, s, heads, d]
        codes, scale, zero = qwen.modeling.quantize_cache_v(
            torch.from_numpy(x)[None].permute(0, 2, 1, 3), bits=8, qmin=qmin, qmax=qmax)
        out[f"x_{k}"] = x
        out[f"codes_{k}"] = codes[0].permute(1, 0, 2).numpy()              # [T, heads, d]
        out[f"scale_{k}"] = scale[0, :, :, 0].T.numpy()                     # [T, heads]
        out[f"zero_{k}"] = zero[0, :, :, 0].T.numpy()
        assert out[f"codes_{k}"].dtype == np.uint8 and out[f"scale_{k}"].dtype == np.float32
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--qwen-source", help="folder holding the package qwen_v1/, or the "
                        "folder of Qwen's four .py files (default: import qwen_v1 from sys.path)")
    parser.add_argument("--tiktoken", default=DEFAULT_TIKTOKEN,
                        help="the real qwen.tiktoken (default: %(default)s)")
    args = parser.parse_args()
    qwen = import_qwen(args.qwen_source)
    torch.set_num_threads(1)  # the same float32 sums on every machine
    os.makedirs(OUT, exist_ok=True)

    for seed, name in enumerate(MODELS):
        print(name)
        ref = make_model(qwen, name, seed)
        size = folder_bytes(os.path.join(OUT, name))
        npz = os.path.getsize(os.path.join(OUT, f"{name}.reference.npz"))
        assert size < MAX_FOLDER_BYTES, (name, size)
        print(f"  folder {size / 1024:.0f} KiB, reference {npz / 1024:.0f} KiB; "
              f"greedy {ref['greedy'].tolist()}, greedy_long {ref['greedy_long'].tolist()}")

    kvq = kv_quantizer_fixture(qwen)
    np.savez_compressed(os.path.join(OUT, "kv-quantizer.npz"), **kvq)
    print(f"kv-quantizer.npz: {len(kvq) // 4} chunks")

    context = make_context_fixture(qwen, args.tiktoken)
    path = os.path.join(OUT, "make_context.json")
    text = json_with_flat_id_lists(context)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text + "\n")
    print(f"make_context.json: {len(context['cases'])} chat prompts, "
          f"{len(context['encode'])} encodings, {os.path.getsize(path) / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
