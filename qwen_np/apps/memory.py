"""Where the bytes go: the memory of a model in qwen-np, component by component.

For a loaded model every figure is read off the tensors it holds (packed codes, scales and
offsets, float matrices, vectors); for a preset (the published shapes of a Qwen model) the
same figures are computed from the shapes. Weights are memory-mapped, and generation reads
every matrix each token, so all of them end up resident (an untied embedding table is the
exception: only looked-up rows are read, so its figure is an upper bound).
"""

from __future__ import annotations

import numpy as np

from qwen_np.errors import FormatError, InputError, QwenNpError
from qwen_np.model.config import QwenConfig
from qwen_np.model.kv_cache import kv_cache_bytes
from qwen_np.runtime.process_memory import reset_peak_rss, rss_bytes
from qwen_np.tensors.mapped import MappedQuantizedRows, MappedRows
from qwen_np.tensors.quantized import QuantizedTensor

GiB = 1 << 30
MiB = 1 << 20

# Published shapes (config.json of each model; Qwen-7B from its v1 config: 4096 hidden,
# 32 layers, 32 heads without GQA, SwiGLU width 11008 = intermediate_size / 2, untied head).
PRESETS = {
    "Qwen-7B": dict(model_type="qwen", vocab_size=151936, hidden_size=4096, intermediate_size=11008,
                    num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                    head_dim=128, tie_word_embeddings=False, qkv_bias=True),
    "Qwen2.5-0.5B": dict(model_type="qwen2", vocab_size=151936, hidden_size=896,
                         intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, head_dim=64, tie_word_embeddings=True, qkv_bias=True),
    "Qwen2.5-1.5B": dict(model_type="qwen2", vocab_size=151936, hidden_size=1536,
                         intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, head_dim=128, tie_word_embeddings=True, qkv_bias=True),
    "Qwen2.5-7B": dict(model_type="qwen2", vocab_size=152064, hidden_size=3584,
                       intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                       num_key_value_heads=4, head_dim=128, tie_word_embeddings=False, qkv_bias=True),
    "Qwen3-0.6B": dict(model_type="qwen3", vocab_size=151936, hidden_size=1024,
                       intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                       num_key_value_heads=8, head_dim=128, tie_word_embeddings=True, qkv_bias=False,
                       qk_norm=True),
    "Qwen3-8B": dict(model_type="qwen3", vocab_size=151936, hidden_size=4096,
                     intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
                     num_key_value_heads=8, head_dim=128, tie_word_embeddings=False, qkv_bias=False,
                     qk_norm=True),
    # mixture of experts (config.json of each; every layer sparse)
    "Qwen1.5-MoE-A2.7B": dict(model_type="qwen2_moe", vocab_size=151936, hidden_size=2048,
                              intermediate_size=5632, num_hidden_layers=24, num_attention_heads=16,
                              num_key_value_heads=16, head_dim=128, tie_word_embeddings=False,
                              qkv_bias=True, num_experts=60, num_experts_per_tok=4,
                              moe_intermediate_size=1408, shared_expert_intermediate_size=5632,
                              sparse_layers=tuple(range(24))),
    "Qwen3-30B-A3B": dict(model_type="qwen3_moe", vocab_size=151936, hidden_size=2048,
                          intermediate_size=6144, num_hidden_layers=48, num_attention_heads=32,
                          num_key_value_heads=4, head_dim=128, tie_word_embeddings=False,
                          qkv_bias=False, qk_norm=True, num_experts=128, num_experts_per_tok=8,
                          moe_intermediate_size=768, norm_topk_prob=True,
                          sparse_layers=tuple(range(48))),
}


def preset_config(name: str) -> QwenConfig:
    d = dict(rms_norm_eps=1e-6, rope_theta=1e6, max_position_embeddings=32768, o_bias=False,
             qk_norm=False)
    d.update(PRESETS[name])
    return QwenConfig(**d)


def linear_shapes(cfg: QwenConfig, layer: int = 0) -> list[tuple[int, int]]:
    """[out, in] of the projections of one layer: attention's four, then the dense MLP's
    three, or (a sparse layer) the shared expert's three and its [1, D] gate."""
    D, F, Dh = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    q, kv = cfg.num_attention_heads * Dh, cfg.num_key_value_heads * Dh
    attention = [(q, D), (kv, D), (kv, D), (D, q)]
    if not cfg.is_sparse(layer):
        return attention + [(F, D), (F, D), (D, F)]
    Fs = cfg.shared_expert_intermediate_size
    return attention + ([(Fs, D), (Fs, D), (D, Fs), (1, D)] if Fs else [])


def expert_shapes(cfg: QwenConfig, layer: int) -> list[tuple[int, int]]:
    """[out, in] of a sparse layer's routed experts (E x gate, up, down); none in a dense one."""
    if not cfg.is_sparse(layer):
        return []
    D, Fe = cfg.hidden_size, cfg.moe_intermediate_size
    return [(Fe, D), (Fe, D), (D, Fe)] * cfg.num_experts


def vector_params(cfg: QwenConfig) -> int:
    """Norm weights and biases, all layers."""
    D, Dh = cfg.hidden_size, cfg.head_dim
    q, kv = cfg.num_attention_heads * Dh, cfg.num_key_value_heads * Dh
    per_layer = 2 * D + (q + 2 * kv if cfg.qkv_bias else 0) + (D if cfg.o_bias else 0) \
        + (2 * Dh if cfg.qk_norm else 0)
    return cfg.num_hidden_layers * per_layer + D




def working_bytes(cfg: QwenConfig, tokens: int, context: int, itemsize: int,
                  tile_elements: int) -> int:
    # tile_elements: the largest float tile a tiled product makes (0 if none is tiled)
    """Transient arrays of one forward pass over `tokens` new tokens with `context` cached
    positions: the residual stream and its copies, q/k/v, the MLP's [T, F] arrays, the
    attention scores (three [H, T, S] arrays: scores, exp, probabilities), a few dequantized
    tiles, and the sampler's float64 copies of one logits row."""
    D, F, V = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    H, Hkv, Dh = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    T = tokens
    acts = T * (6 * D + 2 * (H + 2 * Hkv) * Dh + 4 * F) * itemsize
    scores = 3 * H * T * context * itemsize
    tiles = 6 * tile_elements * itemsize
    return acts + scores + tiles + 4 * V * 8


def preset_components(cfg: QwenConfig, bits: int | None, group_size: int, context: int,
                      kv_kind: str, compute_itemsize: int = 4,
                      embed_itemsize: int = 2, prompt_tokens: int = 16) -> dict[str, int]:
    """Component bytes of a preset: float32 (bits=None) or GPTQ-style int4/int8 (codes, float16
    scales and offsets per group, embedding and head in float16 as GPTQ checkpoints keep them).
    An MoE model's routed experts are one component of their own (quantized as the others);
    its routers stay float32."""
    layers = range(cfg.num_hidden_layers)
    shapes = [s for i in layers for s in linear_shapes(cfg, i)]
    experts = [s for i in layers for s in expert_shapes(cfg, i)]

    def quantized(shapes):        # codes + float16 scale and offset per group
        return sum(o * i * bits // 8 + o * -(-i // group_size) * 4 for o, i in shapes)

    linear = sum(o * i for o, i in shapes)
    groups = sum(o * -(-i // group_size) for o, i in shapes)
    routers = sum(cfg.num_experts * cfg.hidden_size for i in layers if cfg.is_sparse(i)) * 4
    embed_item = 4 if bits is None else embed_itemsize
    embed = cfg.vocab_size * cfg.hidden_size * embed_item
    c = {
        "quantized codes": 0 if bits is None else linear * bits // 8,
        "scales + offsets": 0 if bits is None else groups * 2 * 2,
        "float matrices": (linear * 4 if bits is None else 0) + routers,
        "embedding": embed,
        "LM head": 0 if cfg.tie_word_embeddings else embed,
        "norms + biases": vector_params(cfg) * compute_itemsize,
        "KV cache": kv_cache_bytes(cfg, context, kv_kind, compute_itemsize),
        "working buffers": working_bytes(cfg, prompt_tokens, context, compute_itemsize,
                                         0 if bits is None else 1 << 20),
    }
    if experts:
        c[f"routed experts ({cfg.num_experts_per_tok} of {cfg.num_experts} read)"] = \
            sum(o * i * 4 for o, i in experts) if bits is None else quantized(experts)
    return c


def model_components(cfg: QwenConfig, weights, context: int, kv_kind: str,
                     compute_itemsize: int, prompt_tokens: int, tile_elements: int) -> dict[str, int]:
    """Component bytes of a loaded model, read off the arrays it holds."""
    c = dict.fromkeys(["quantized codes", "scales + offsets", "float matrices", "embedding",
                       "LM head", "norms + biases"], 0)
    largest_tile = 0  # matrices not already in the compute dtype are converted a tile at a time

    def add_matrix(t, key):
        """Projections split into codes and scales; the embedding and the head are listed
        whole under their own names, whatever their form."""
        nonlocal largest_tile
        if isinstance(t, (MappedQuantizedRows, MappedRows)):
            return   # left in the mapped file; a lookup reads one row
        if key != "embedding" and getattr(t, "dtype", None) != np.dtype(
                "float32" if compute_itemsize == 4 else "float64"):
            largest_tile = max(largest_tile, min(tile_elements, t.shape[0] * t.shape[1]))
        if isinstance(t, QuantizedTensor) and key == "float matrices":
            c["quantized codes"] += t.codes.nbytes
            c["scales + offsets"] += t.nbytes - t.codes.nbytes
        elif key == "routed experts":
            c[next(k for k in c if k.startswith(key))] += int(t.nbytes)
        else:
            c[key] += int(t.nbytes)

    if cfg.num_experts:     # listed apart: a decoded token reads k of each layer's E
        c[f"routed experts ({cfg.num_experts_per_tok} of {cfg.num_experts} read)"] = 0
    for layer in weights.layers:
        for name, t in vars(layer).items():
            if t is None:
                continue
            if name == "moe":
                for m in moe_shared_matrices(t):
                    add_matrix(m, "float matrices")
                for m in expert_matrices(t):
                    add_matrix(m, "routed experts")
            elif name in ("q", "k", "v", "o", "gate", "up", "down"):
                add_matrix(t, "float matrices")
            else:
                c["norms + biases"] += int(t.nbytes)
    c["norms + biases"] += int(weights.norm.nbytes)
    add_matrix(weights.embed, "embedding")
    if weights.lm_head is not weights.embed:
        add_matrix(weights.lm_head, "LM head")
    elif getattr(weights.embed, "dtype", None) != np.dtype("float32" if compute_itemsize == 4
                                                          else "float64"):
        largest_tile = max(largest_tile, min(tile_elements, weights.embed.shape[0]
                                             * weights.embed.shape[1]))
    if isinstance(weights.embed, (MappedQuantizedRows, MappedRows)):   # why it shows 0 bytes
        c = {("embedding (file-mapped, read by row)" if k == "embedding" else k): v
             for k, v in c.items()}
    c["KV cache"] = kv_cache_bytes(cfg, context, kv_kind, compute_itemsize)
    c["working buffers"] = working_bytes(cfg, prompt_tokens, context, compute_itemsize, largest_tile)
    return c


def expert_matrices(moe) -> list:
    """The routed experts' matrices of one sparse layer (MoEWeights)."""
    return [m for e in moe.experts for m in (e.gate, e.up, e.down)]


def moe_shared_matrices(moe) -> list:
    """What every token of a sparse layer reads: the router, and the shared expert with its
    gate (Qwen2-MoE)."""
    shared = [] if moe.shared is None else [moe.shared.gate, moe.shared.up, moe.shared.down,
                                             moe.shared_gate]
    return [moe.router] + shared


def decode_bytes_per_token(cfg: QwenConfig, weights) -> int:
    """Weight bytes one decoded token reads: every matrix of every layer, except that a sparse
    layer's routed experts count k / E of their bytes (the token reads k of the E; their
    average size), the LM head, and one row of an untied embedding (a lookup)."""
    read = 0.0
    for layer in weights.layers:
        for name in ("q", "k", "v", "o", "gate", "up", "down"):
            t = getattr(layer, name)
            read += 0 if t is None else t.nbytes
        if layer.moe is not None:
            read += sum(m.nbytes for m in moe_shared_matrices(layer.moe))
            read += sum(m.nbytes for m in expert_matrices(layer.moe)) \
                * cfg.num_experts_per_tok / cfg.num_experts
    read += weights.lm_head.nbytes
    if weights.embed is not weights.lm_head:
        read += weights.embed.nbytes / weights.embed.shape[0]
    return int(read)


def total(components: dict[str, int]) -> int:
    return sum(components.values())


def add_serving(components: dict[str, int], args) -> None:
    """What `qwen-np serve` adds: one KV cache per slot (--max-batch), and at most
    --prefix-cache-bytes of saved prompt prefixes (runtime/prefix_cache.py; what it holds at
    any moment, and what it has evicted, is on the server's /metrics)."""
    components["KV cache"] *= args.max_batch
    if args.prefix_cache_bytes:
        components["prefix cache (at most)"] = args.prefix_cache_bytes


def cmd_memory(args) -> int:
    baseline = rss_bytes() or 0      # this process now: Python, NumPy, qwen_np imported
    item = np.dtype(args.dtype).itemsize
    if args.model in PRESETS:
        if args.measure:
            raise FormatError(f"{args.model}: --measure needs a model folder, not a preset")
        cfg = preset_config(args.model)
        kv = args.kv_cache or args.dtype
        cols = {"float32": preset_components(cfg, None, args.group_size, args.context, kv,
                                                item, prompt_tokens=args.prompt_tokens),
                f"int{args.bits} g{args.group_size}": preset_components(
                    cfg, args.bits, args.group_size, args.context, kv, item,
                    prompt_tokens=args.prompt_tokens)}
        print(f"{args.model} (preset), context {args.context}, KV cache {kv}; "
              f"GiB = 2^30 bytes")
        for c in cols.values():
            add_serving(c, args)
            c["runtime (measured now)"] = baseline
        width = max(24, *(len(k) for k in next(iter(cols.values()))))
        print(f"  {'component':<{width}}" + "".join(f"{k:>18}" for k in cols))
        for comp in next(iter(cols.values())):
            print(f"  {comp:<{width}}" + "".join(f"{c[comp] / GiB:>14.3f} GiB"
                                                 for c in cols.values()))
        print(f"  {'predicted peak':<{width}}" + "".join(f"{total(c) / GiB:>14.3f} GiB"
                                                        for c in cols.values()))
        return 0

    from qwen_np.runtime.load import load
    from qwen_np.backends.numpy.backend import TILE_ELEMENTS
    model = load(args.model, dtype=args.dtype, kv_cache=args.kv_cache,
                 prepared_cache=args.prepared_cache)
    cfg = model.config
    comps = model_components(cfg, model.weights, args.context, model.kv_cache, item,
                                args.prompt_tokens, TILE_ELEMENTS)
    add_serving(comps, args)
    comps["runtime (measured now)"] = baseline
    predicted = total(comps)
    print(f"{args.model}: context {args.context}, KV cache {model.kv_cache}, "
          f"compute {args.dtype}")
    width = max(24, *(len(k) for k in comps))
    for comp, b in comps.items():
        print(f"  {comp:<{width}} {b:>15,} B {b / MiB:>10.1f} MiB")
    print(f"  {'predicted peak':<{width}} {predicted:>15,} B {predicted / MiB:>10.1f} MiB")
    if args.measure:
        if args.prompt_tokens + args.gen_tokens > args.context:
            raise InputError("--prompt-tokens + --gen-tokens exceed --context")
        reset_peak_rss()
        ids = np.random.default_rng(0).integers(0, cfg.vocab_size, args.prompt_tokens).tolist()
        cache = model.new_cache(args.context)
        model.generate(ids, max_new_tokens=args.gen_tokens, stop_ids=[], cache=cache)
        peak = rss_bytes("VmHWM")
        if peak is None:
            raise QwenNpError("cannot read the peak RSS (/proc/self/status) on this system")
        print(f"  {'measured peak RSS':<{width}} {peak:>15,} B {peak / MiB:>10.1f} MiB "
              f"({peak / predicted:.3f} x predicted; {args.prompt_tokens} prompt + "
              f"{args.gen_tokens} generated tokens)")
    return 0
