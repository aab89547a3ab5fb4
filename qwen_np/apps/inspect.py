"""`qwen-np inspect`: a model's config and its tensors by dtype, read without loading it."""

from __future__ import annotations

import os
from collections import defaultdict

import numpy as np


def cmd_inspect(args) -> int:
    from qwen_np.formats.open import model_kind
    from qwen_np.tensors.dense import dtype_name
    path = args.path
    kind = model_kind(path)
    print(path)
    if kind == "folder":
        from qwen_np.formats.hf_dir import read_hf_dir
        config, tensors, tok = read_hf_dir(path)
        rows = [(name, dtype_name(t), tuple(t.shape), int(t.nbytes)) for name, t in tensors.items()]
        print(f"tokenizer: {tok or 'none'}")
    else:
        from qwen_np.formats.gguf import read_gguf
        from qwen_np.formats.gguf_qwen import config_from_gguf
        meta, tensors = read_gguf(path)
        for key in ("general.name", "general.architecture", "general.file_type",
                    "general.quantization_version", "tokenizer.ggml.model", "tokenizer.ggml.pre"):
            if key in meta:
                print(f"  {key:<30} {meta[key]}")
        print(f"  {'tokenizer tokens':<30} {len(meta.get('tokenizer.ggml.tokens', []))}")
        config = config_from_gguf(meta, tensors, path)
        rows = [(name, t.type_name, t.shape, int(t.data.nbytes)) for name, t in tensors.items()]
    print("config:")
    for k, v in config.__dict__.items():
        print(f"  {k:<26} {v}")
    by_dtype = defaultdict(lambda: [0, 0, 0])
    for _, dt, shape, nbytes in rows:
        d = by_dtype[dt]
        d[0] += 1
        d[1] += nbytes
        d[2] += int(np.prod(shape))
    print("tensors by dtype (as stored in the file" + (
        "; the original Qwen's c_attn counted as its q, k and v" if config.model_type == "qwen"
        and os.path.isdir(path) else "") + "):")
    print(f"  {'dtype':<10} {'count':>6} {'params':>14} {'bytes':>14}")
    for dt, (n, b, p) in sorted(by_dtype.items()):
        print(f"  {dt:<10} {n:>6} {p:>14,} {b:>14,}")
    print(f"  {'total':<10} {len(rows):>6} {sum(v[2] for v in by_dtype.values()):>14,} "
          f"{sum(v[1] for v in by_dtype.values()):>14,}")
    if args.tensors:
        for name, dt, shape, _ in sorted(rows):
            print(f"  {name:<60} {dt:<9} {list(shape)}")
    return 0
