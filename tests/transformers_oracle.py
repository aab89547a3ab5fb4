"""Independent reference: tiny random Qwen models built and run with transformers (torch).

Used by tools/make_fixtures.py (committed fixtures) and by the live tests (fresh models, when
torch and transformers are importable). Nothing here imports qwen_np.

float64 oracle: transformers computes RMSNorm, RoPE's cos/sin, the eager softmax and (MoE) the
router's softmax in float32 even when the model is float64. `exact_float64()` patches those
places to compute in the input's dtype, so that "transformers in float64" is float64
throughout; the math is unchanged. (Its RoPE is the plain one: not for YaRN models.)
"""

from __future__ import annotations

import contextlib
import json
import os

import numpy as np
import torch
import transformers
from transformers.models.qwen2 import modeling_qwen2
from transformers.models.qwen2_moe import modeling_qwen2_moe
from transformers.models.qwen3 import modeling_qwen3
from transformers.models.qwen3_moe import modeling_qwen3_moe

# A fixed corpus for the tiny byte-level BPE tokenizer.
CORPUS = [
    "def fibonacci(n):\n    if n <= 1:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "The capital of France is Paris. Paris is located in the north of France.",
    "Hello, world! How are you today? I am fine, thank you.",
    "import numpy as np\nx = np.zeros((3, 4), dtype=np.float32)\nprint(x.shape)\n",
    "for i in range(10):\n\tprint(i * i)\n",
    "Qwen is a family of large language models. 你好，世界！ 数字 12345 and emoji 🙂.",
    "The quick brown fox jumps over the lazy dog. 0123456789",
]
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Qwen2's pre-tokenizer split (transformers' Qwen2Converter / tokenization_qwen2.PRETOKENIZE_REGEX)
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def train_tiny_tokenizer(vocab_size: int = 300):
    """A Qwen2-style byte-level BPE (NFC, Qwen2 split regex, ByteLevel) trained on CORPUS."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from tokenizers import processors, trainers
    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(CORPUS * 4, trainer)
    return tok


def make_config(model_type: str, hidden: int, heads: int, kv_heads: int, layers: int = 2,
                intermediate: int = 80, vocab: int = 384, head_dim: int | None = None,
                tied: bool = True, attention_bias: bool = False, eos=None, moe=None,
                rope_parameters=None, max_positions: int = 256):
    """A Qwen2 / Qwen3 config, or (model_type qwen2_moe / qwen3_moe) an MoE one with the
    `moe` dict's keys (num_experts, num_experts_per_tok, moe_intermediate_size, ...);
    `rope_parameters` replaces the default RoPE's (e.g. YaRN's)."""
    rope = {"rope_type": "default", "rope_theta": 10000.0, **(rope_parameters or {})}
    common = dict(hidden_size=hidden, num_attention_heads=heads, num_key_value_heads=kv_heads,
                  num_hidden_layers=layers, intermediate_size=intermediate, vocab_size=vocab,
                  max_position_embeddings=max_positions, rms_norm_eps=1e-6,
                  tie_word_embeddings=tied, rope_parameters=rope, eos_token_id=eos,
                  bos_token_id=None, pad_token_id=None)
    if model_type in ("qwen2", "qwen2_moe"):
        if head_dim is not None:
            common["head_dim"] = head_dim
        if model_type == "qwen2_moe":
            return transformers.Qwen2MoeConfig(**common, **moe)
        return transformers.Qwen2Config(**common)
    cls = transformers.Qwen3MoeConfig if model_type == "qwen3_moe" else transformers.Qwen3Config
    return cls(head_dim=head_dim or hidden // heads, attention_bias=attention_bias, **common,
               **(moe or {}))


def random_model(config, seed: int, std: float = 0.2):
    """A model whose every weight is random: matrices N(0, std), norms 1 + N(0, 0.1),
    biases N(0, 0.1). Large enough that logits are far from flat."""
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:      # matrices, and stacked experts [E, out, in]
                p.normal_(0.0, std)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.1)
            else:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
    return model


def _rms_norm_in_input_dtype(self, hidden_states):
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))


def _rotary_in_float64(self, x, position_ids):
    cfg = self.config
    dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    base = cfg.rope_parameters["rope_theta"]
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    freqs = position_ids[..., None].to(torch.float64) * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


def _router_in_input_dtype(self, hidden_states):
    """Qwen2MoeTopKRouter.forward (and Qwen3-MoE's, the same) with the softmax in the input's
    dtype instead of float32."""
    hidden_states = hidden_states.reshape(-1, self.hidden_dim)
    router_logits = torch.nn.functional.linear(hidden_states, self.weight)
    router_probs = torch.nn.functional.softmax(router_logits, dim=-1)
    top_value, top_index = torch.topk(router_probs, self.top_k, dim=-1)
    if self.norm_topk_prob:
        top_value /= top_value.sum(dim=-1, keepdim=True)
    return router_logits, top_value.to(router_logits.dtype), top_index


@contextlib.contextmanager
def exact_float64():
    """Within this block, float64 transformers models compute every op in float64."""
    saved = []
    for mod, prefix in ((modeling_qwen2, "Qwen2"), (modeling_qwen3, "Qwen3"),
                        (modeling_qwen2_moe, "Qwen2Moe"), (modeling_qwen3_moe, "Qwen3Moe")):
        norm, rot = getattr(mod, prefix + "RMSNorm"), getattr(mod, prefix + "RotaryEmbedding")
        saved += [(norm, "forward", norm.forward), (rot, "forward", rot.forward)]
        norm.forward = _rms_norm_in_input_dtype
        rot.forward = _rotary_in_float64
        router = getattr(mod, prefix + "TopKRouter", None)
        if router is not None:
            saved.append((router, "forward", router.forward))
            router.forward = _router_in_input_dtype
    try:
        yield
    finally:
        for cls, attr, fn in saved:
            setattr(cls, attr, fn)


def load_reference(model_dir: str, dtype: str):
    """Load a saved folder with transformers in float32 or float64 (sdpa attention, which
    computes in the tensors' dtype; MoE experts run by the eager loop over experts, the
    definition, which also runs in float64)."""
    torch_dtype = {"float32": torch.float32, "float64": torch.float64}[dtype]
    moe = transformers.AutoConfig.from_pretrained(model_dir).model_type.endswith("_moe")
    model = transformers.AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch_dtype, attn_implementation="sdpa",
        **({"experts_implementation": "eager"} if moe else {}))
    model.eval()
    return model


def reference_logits(model, ids) -> np.ndarray:
    with torch.no_grad():
        if model.dtype == torch.float64:
            with exact_float64():
                out = model(torch.tensor([ids])).logits
        else:
            out = model(torch.tensor([ids])).logits
    return out[0].numpy()


def reference_greedy(model, ids, max_new_tokens: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False,
                             attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             pad_token_id=0)
    return out[0, len(ids):].tolist()


def save_model(model, tokenizer, out_dir: str, dtype: str, shard: bool):
    """save_pretrained in the given storage dtype (float32, float16, bfloat16)."""
    torch_dtype = {"float32": torch.float32, "float16": torch.float16,
                   "bfloat16": torch.bfloat16}[dtype]
    os.makedirs(out_dir, exist_ok=True)
    model.to(torch_dtype).save_pretrained(out_dir, max_shard_size="40KB" if shard else "5GB")
    model.to(torch.float32)
    if tokenizer is not None:
        tokenizer.save(os.path.join(out_dir, "tokenizer.json"))
    with open(os.path.join(out_dir, "config.json"), encoding="utf-8") as f:
        return json.load(f)


def write_reference_fixture(out_dir: str, config, seed: int, tokenizer, dtype: str, shard: bool,
                            rng, input_lengths, prompt_length: int, greedy_tokens: int,
                            float64: bool = True) -> dict:
    """A random model of `config` saved into out_dir (tools/make_*fixtures.py), and beside it
    out_dir + ".reference.npz": for inputs of `input_lengths` random ids (drawn from `rng`),
    transformers' float32 logits (and float64, every op in float64), then a prompt and its
    greedy continuation. Returns the reference."""
    import shutil
    shutil.rmtree(out_dir, ignore_errors=True)
    model = random_model(config, seed=seed)
    save_model(model, tokenizer, out_dir, dtype, shard)
    ref = {}
    m32 = load_reference(out_dir, "float32")
    m64 = load_reference(out_dir, "float64") if float64 else None
    for k, n in enumerate(input_lengths):
        ids = rng.integers(0, config.vocab_size, size=n)
        ref[f"ids_{k}"] = ids
        ref[f"logits32_{k}"] = reference_logits(m32, ids.tolist()).astype(np.float32)
        if float64:
            ref[f"logits64_{k}"] = reference_logits(m64, ids.tolist())
    prompt = rng.integers(3, config.vocab_size, size=prompt_length)
    ref["prompt"] = prompt
    ref["greedy"] = np.array(reference_greedy(m32, prompt.tolist(), greedy_tokens))
    np.savez_compressed(out_dir + ".reference.npz", **ref)
    size = sum(os.path.getsize(os.path.join(out_dir, f)) for f in os.listdir(out_dir))
    print(f"{os.path.basename(out_dir)}: {size / 1024:.0f} KiB, greedy {ref['greedy'].tolist()}")
    return ref

