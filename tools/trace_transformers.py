"""Record a trace with transformers under qwen-np's names (qwen_np/oracle/trace.py lists them), so that
transformers and qwen-np are diffed in two commands:

    python tools/trace_transformers.py -m MODEL_DIR -p "some text" -o hf.npz [--dtype float64]
    qwen-np trace -m MODEL_DIR -p "some text" -o ours.npz --dtype float64
    qwen-np compare ours.npz hf.npz --rtol 1e-10

MODEL_DIR is a Qwen2/Qwen3 Hugging Face folder (transformers' Qwen2ForCausalLM or
Qwen3ForCausalLM). Forward hooks record module outputs (and o_proj's and down_proj's inputs:
the attention output and the SwiGLU product; post_attention_layernorm's input: the residual
stream after attention); q and k after RoPE are recorded by wrapping the modeling module's
apply_rotary_pos_emb. The token ids come from qwen-np's tokenizer for the folder, the same ids
`qwen-np trace` uses. With --dtype float64 the model runs in float64 throughout
(tests/transformers_oracle.py's exact_float64: transformers otherwise computes RMSNorm, RoPE's
cos/sin and the softmax in float32).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))


def trace_transformers(model, ids) -> dict[str, np.ndarray]:
    """{qwen-np name: array} of one transformers forward pass over ids (batch of one)."""
    import torch
    from transformers.models.qwen2 import modeling_qwen2
    from transformers.models.qwen3 import modeling_qwen3

    out: dict[str, np.ndarray] = {}
    hooks = []

    def keep(name, t, heads_first=False):
        t = t[0] if isinstance(t, tuple) else t
        a = t.detach()[0]                                 # drop the batch
        if heads_first:                                   # [H, T, Dh] -> [T, H, Dh]
            a = a.transpose(0, 1)
        out[name] = a.contiguous().numpy().copy()

    def on_output(name, **kw):
        return lambda mod, args, result: keep(name, result, **kw)

    def on_input(name):
        return lambda mod, args: keep(name, args[0])

    m = model.model
    hooks.append(m.embed_tokens.register_forward_hook(on_output("model.embed_tokens")))
    for i, layer in enumerate(m.layers):
        p = f"model.layers.{i}."
        a = layer.self_attn
        hooks += [
            layer.input_layernorm.register_forward_hook(on_output(p + "input_layernorm")),
            a.q_proj.register_forward_hook(on_output(p + "self_attn.q_proj")),
            a.k_proj.register_forward_hook(on_output(p + "self_attn.k_proj")),
            a.v_proj.register_forward_hook(on_output(p + "self_attn.v_proj")),
            a.o_proj.register_forward_pre_hook(on_input(p + "self_attn.o_proj.input")),
            a.o_proj.register_forward_hook(on_output(p + "self_attn.o_proj")),
            layer.post_attention_layernorm.register_forward_pre_hook(on_input(p + "attn_residual")),
            layer.post_attention_layernorm.register_forward_hook(
                on_output(p + "post_attention_layernorm")),
            layer.mlp.gate_proj.register_forward_hook(on_output(p + "mlp.gate_proj")),
            layer.mlp.up_proj.register_forward_hook(on_output(p + "mlp.up_proj")),
            layer.mlp.down_proj.register_forward_pre_hook(on_input(p + "mlp.act")),
            layer.mlp.down_proj.register_forward_hook(on_output(p + "mlp.down_proj")),
            layer.register_forward_hook(on_output(p.rstrip("."))),
        ]
        if hasattr(a, "q_norm"):                          # Qwen3: [B, T, H, Dh]
            hooks += [a.q_norm.register_forward_hook(on_output(p + "self_attn.q_norm")),
                      a.k_norm.register_forward_hook(on_output(p + "self_attn.k_norm"))]
    hooks.append(m.norm.register_forward_hook(on_output("model.norm")))
    hooks.append(model.lm_head.register_forward_hook(on_output("lm_head")))

    layer_of_call = iter(range(len(m.layers)))

    @contextlib.contextmanager
    def rope_recorded():
        saved = []
        for mod in (modeling_qwen2, modeling_qwen3):
            original = mod.apply_rotary_pos_emb

            def wrapped(q, k, *args, _original=original, **kwargs):
                q_embed, k_embed = _original(q, k, *args, **kwargs)
                i = next(layer_of_call)
                keep(f"model.layers.{i}.self_attn.q_rope", q_embed, heads_first=True)
                keep(f"model.layers.{i}.self_attn.k_rope", k_embed, heads_first=True)
                return q_embed, k_embed
            saved.append((mod, original))
            mod.apply_rotary_pos_emb = wrapped
        try:
            yield
        finally:
            for mod, original in saved:
                mod.apply_rotary_pos_emb = original

    try:
        with torch.no_grad(), rope_recorded():
            model(torch.tensor([list(ids)]))
    finally:
        for h in hooks:
            h.remove()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", required=True, help="a Qwen2/Qwen3 Hugging Face folder")
    ap.add_argument("-p", "--prompt", required=True)
    ap.add_argument("-o", "--output", required=True, help="FILE.npz or FILE.safetensors")
    ap.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    args = ap.parse_args(argv)
    import transformers_oracle as oracle
    from qwen_np.runtime.load import load_tokenizer
    from qwen_np.oracle.trace import save_trace
    ids = load_tokenizer(args.model).encode(args.prompt)
    model = oracle.load_reference(args.model, args.dtype)
    ctx = oracle.exact_float64() if args.dtype == "float64" else contextlib.nullcontext()
    with ctx:
        tensors = trace_transformers(model, ids)
    import transformers
    save_trace(args.output, tensors, {"ids": ids, "prompt": args.prompt, "dtype": args.dtype,
                                      "source": f"transformers {transformers.__version__}",
                                      "model": os.path.abspath(args.model)})
    print(f"{args.output}: {len(tensors)} tensors, {len(ids)} tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main())
