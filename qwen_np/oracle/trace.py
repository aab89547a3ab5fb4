"""Traces: every intermediate of one forward pass, saved under the Hugging Face module names so
that another implementation's tensors line up with them, and the diff of two traces.

Names (the same for every architecture qwen-np runs; T tokens, D hidden, H and Hkv heads of Dh,
F the MLP width, V the vocabulary):

    model.embed_tokens                            [T, D]
    model.layers.{i}.input_layernorm              [T, D]
    model.layers.{i}.self_attn.q_proj             [T, H*Dh]    (its bias included)
    model.layers.{i}.self_attn.k_proj             [T, Hkv*Dh]
    model.layers.{i}.self_attn.v_proj             [T, Hkv*Dh]
    model.layers.{i}.self_attn.q_norm             [T, H, Dh]   (Qwen3 only)
    model.layers.{i}.self_attn.k_norm             [T, Hkv, Dh] (Qwen3 only)
    model.layers.{i}.self_attn.q_rope             [T, H, Dh]   q after RoPE (before the
                                                               original Qwen's logn factor)
    model.layers.{i}.self_attn.k_rope             [T, Hkv, Dh] k after RoPE
    model.layers.{i}.self_attn.o_proj.input       [T, H*Dh]    attention's output
    model.layers.{i}.self_attn.o_proj             [T, D]
    model.layers.{i}.attn_residual                [T, D]       the residual stream after
                                                               attention
    model.layers.{i}.post_attention_layernorm     [T, D]
    model.layers.{i}.mlp.gate_proj                [T, F]
    model.layers.{i}.mlp.up_proj                  [T, F]
    model.layers.{i}.mlp.act                      [T, F]       silu(gate) * up
    model.layers.{i}.mlp.down_proj                [T, D]
      (a sparse layer of an MoE model, instead of the four above:)
    model.layers.{i}.mlp.gate                     [T, E]       the router's logits
    model.layers.{i}.mlp.experts                  [T, D]       the chosen experts' weighted sum
    model.layers.{i}.mlp.shared_expert            [T, D]       Qwen2-MoE: before its gate
    model.layers.{i}                              [T, D]       the layer's output (the residual
                                                               stream after the MLP)
    model.norm                                    [T, D]
    lm_head                                       [T, V]

The original Qwen's modules are named as Qwen2's (its c_attn split into q_proj, k_proj and
v_proj; w2 is gate_proj, w1 up_proj). A trace file is .npz or .safetensors (by its extension):
the tensors under those names, in the order above, plus the metadata "qwen_np.trace" (JSON:
token ids, dtype, backend, model path, the sha256 of each model file, the config).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import zipfile
from dataclasses import asdict

import numpy as np

from qwen_np.errors import FormatError, InputError
from qwen_np.model.forward import forward

META_KEY = "qwen_np.trace"


def trace(model, ids, layers=None, tensors=None, callback=None) -> dict[str, np.ndarray]:
    """One forward pass of `model` (a qwen_np.load result) over ids from position 0, with its
    intermediates {name: array} in the order they were computed.

    layers: layer indices to keep (negative counts from the end; default all); tensors: a
    glob pattern, or a list of them, over the names (default all). callback(name, array),
    when given, receives each kept tensor as it is computed and nothing is kept (a large
    trace streamed to disk or compared on the fly).
    """
    ids = model._check_ids(ids)
    n_layers = model.config.num_hidden_layers
    keep_layers = None if layers is None else {i % n_layers for i in layers
                                                if -n_layers <= i < n_layers}
    if layers is not None and len(keep_layers) != len(set(layers)):
        raise InputError(f"layers {list(layers)}: the model has {n_layers} (0..{n_layers - 1})")
    patterns = [tensors] if isinstance(tensors, str) else tensors
    kept: dict[str, np.ndarray] = {}

    def record(name, x):
        if not wanted(name, keep_layers, patterns):
            return
        a = model.backend.to_numpy(x)
        if callback is not None:
            callback(name, a)
        else:
            kept[name] = np.array(a)           # a copy: the backend may reuse its buffers
    forward(model.config, model.weights, model.backend, ids, model.new_cache(len(ids)),
            record=record)
    return kept


def wanted(name: str, layers, patterns) -> bool:
    if layers is not None and name.startswith("model.layers."):
        if int(name.split(".")[2]) not in layers:
            return False
    return patterns is None or any(fnmatch.fnmatchcase(name, p) for p in patterns)


def model_identity(model) -> dict:
    """The files the model came from (a GGUF, or a folder's weight files) with their sha256,
    and its config."""
    path = model.source
    files = [path] if os.path.isfile(path) else sorted(
        os.path.join(path, f) for f in os.listdir(path)
        if f.endswith((".safetensors", ".gguf", ".json", ".tiktoken"))
        and os.path.isfile(os.path.join(path, f)))      # regular files only: a FIFO would block
    return {"path": os.path.abspath(path),
            "sha256": {os.path.basename(f): file_sha256(f) for f in files},
            "config": {k: v for k, v in asdict(model.config).items()}}


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def save_trace(path: str, tensors: dict, meta: dict) -> None:
    """Write a trace as .npz or .safetensors (by the extension)."""
    text = json.dumps(meta, default=str)
    if path.endswith(".npz"):
        np.savez(path, **{META_KEY: np.array(text)}, **tensors)
    elif path.endswith(".safetensors"):
        from qwen_np.formats.safetensors import write_safetensors
        write_safetensors(path, {k: np.ascontiguousarray(v) for k, v in tensors.items()},
                          {META_KEY: text})
    else:
        raise InputError(f"{path}: a trace is written as .npz or .safetensors")


def load_trace(path: str) -> tuple[dict[str, np.ndarray], dict]:
    """(tensors in their saved order, metadata) of a trace file."""
    if not os.path.isfile(path):
        raise FormatError(f"{path}: no such file")
    if path.endswith(".npz"):
        try:
            with np.load(path, allow_pickle=False) as z:
                tensors = {k: z[k] for k in z.files}
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
            raise FormatError(f"{path}: not a readable .npz ({e})") from None
        return tensors, parse_meta(tensors.pop(META_KEY, None))
    if path.endswith(".safetensors"):
        from qwen_np.formats.safetensors import open_safetensors, read_safetensors_header
        tensors = open_safetensors(path)
        meta = read_safetensors_header(path)[2].get(META_KEY)
        return {k: np.asarray(v) for k, v in tensors.items()}, parse_meta(meta)
    raise FormatError(f"{path}: a trace is a .npz or .safetensors file")


def parse_meta(text) -> dict:
    """A trace's metadata; {} when it has none, or none qwen-np wrote (another tool's file)."""
    try:
        meta = json.loads(str(text)) if text is not None else {}
    except ValueError:
        return {}
    return meta if isinstance(meta, dict) else {}


def compare_traces(a: dict, b: dict, rtol: float = 1e-5, atol: float = 0.0) -> list[dict]:
    """Per tensor name both traces hold (in a's order): max |a - b|, that over max |b| (the
    relative error), whether it is within atol + rtol * max |b|, and the first token position
    (first axis) where a row is not."""
    rows = []
    for name, x in a.items():
        if name not in b:
            continue
        y = b[name]
        if not (np.issubdtype(x.dtype, np.number) and np.issubdtype(y.dtype, np.number)):
            rows.append({"name": name, "shape": list(x.shape), "max_abs": float("inf"),
                         "max_rel": float("inf"), "ok": False, "first_position": 0,
                         "note": f"not numbers: {x.dtype} and {y.dtype}"})
            continue
        if x.shape != y.shape:
            rows.append({"name": name, "shape": list(x.shape), "max_abs": float("inf"),
                         "max_rel": float("inf"), "ok": False, "first_position": 0,
                         "note": f"shapes differ: {list(x.shape)} and {list(y.shape)}"})
            continue
        x64 = np.atleast_1d(x).astype(np.float64)
        y64 = np.atleast_1d(y).astype(np.float64)
        diff = np.abs(x64 - y64)
        diff[np.isnan(x64) & np.isnan(y64)] = 0.0            # NaN in both agrees
        diff[np.isnan(diff)] = np.inf
        scale = float(np.max(np.abs(y64))) if y64.size else 0.0
        bound = atol + rtol * scale
        max_abs = float(diff.max()) if diff.size else 0.0
        per_position = diff.reshape(diff.shape[0], -1).max(axis=1) if diff.size else diff
        bad = np.nonzero(per_position > bound)[0]
        rows.append({"name": name, "shape": list(x.shape), "max_abs": max_abs,
                     "max_rel": max_abs / scale if scale else (0.0 if max_abs == 0 else float("inf")),
                     "ok": max_abs <= bound, "first_position": int(bad[0]) if bad.size else None,
                     "note": ""})
    return rows
