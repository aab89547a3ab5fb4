"""Regenerate tests/fixtures/gguf_output/: what llama.cpp makes of the GGUF files that
`qwen-np quantize --type T` writes, and llama.cpp's own quantizer on the same weights.

    .venv/bin/python tools/make_gguf_output_fixtures.py --llama-python /work/lcpvenv/bin/python

The project's Python (numpy, gguf 0.19.0, torch for tests/gguf_writer.py) writes the files;
PATH is a Python with llama-cpp-python (0.3.36 here), run in a child process (llama.cpp
aborts the process on some bad files). The float models are tests/gguf_output_models.py's
(the same bytes on every machine), and the all-sparse MoE fixtures of tests/fixtures/moe/
(Q8_0 and Q4_K_M only: their rows of 32 make every K type fall back).

<model>.llama_cpp.npz, for each --type T (T below with its name, e.g. sha256_Q4_K_M):
    ids             the prompt's token ids
    sha256_T        the hash of the file qwen-np wrote and llama.cpp read (the test writes the
                    file again and checks it is the same file)
    logits_T        llama.cpp's float32 logits [T, V] for the ids (F32 KV cache)
    greedy_T        llama.cpp's 8 greedy tokens after the ids
<model>.llama_quantize.npz, llama.cpp's own quantizer (llama_model_quantize, no imatrix) run
on the float model (an F32 GGUF written by tests/gguf_writer.py), for each type P:
    names           the quantized tensors' GGUF names
    rmse_P          per tensor, the root-mean-square error of its dequantized weights
    sha256_P        per tensor, the hash of its bytes (the legacy types are deterministic:
                    ours must be the same bytes)
    types_Q4_K_M    per tensor, the type llama.cpp's Q4_K_M mix chose
(pure types: `--pure`, every matrix that type, as `qwen-np quantize --type` writes them).

With --real [TYPE ...]: real_model.llama_cpp.npz instead (those types added to what it holds):
the real Qwen2.5-Coder-0.5B-Instruct Q4_K_M GGUF (`qwen-np fetch`) dequantized and written at
each type (one to two minutes each on 2 free cores), and llama.cpp's run of each file on the
prompt "def fibonacci(n):":
    ids, prompt          the prompt (llama.cpp's tokens, no BOS)
    sha256_T             the file's hash
    greedy_T             32 greedy tokens
    top_ids_T, top_logits_T   [32, 16]: the 16 largest logits at each generated position
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
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
from gguf_output_models import MODELS, write_model  # noqa: E402

FIXTURES = os.path.join(HERE, "..", "tests", "fixtures", "gguf_output")
TYPES = ["Q4_0", "Q5_0", "Q8_0", "Q4_K", "Q5_K", "Q6_K", "Q4_K_M"]
# the all-sparse MoE fixtures (llama.cpp's qwen2moe / qwen3moe graphs have no dense layers):
# hidden 32, so every K type falls back; Q4_K_M's 8-expert rules still choose per tensor
MOE = ["qwen2moe-allsparse-bf16", "qwen3moe-allsparse-bf16"]
MOE_TYPES = ["Q8_0", "Q4_K_M"]
# llama_ftype of each type for llama_model_quantize (pure K types: their _S mix with --pure)
FTYPES = {"Q4_0": 2, "Q5_0": 8, "Q8_0": 7, "Q4_K": 14, "Q5_K": 16, "Q6_K": 18, "Q4_K_M": 15}
IDS = [5, 77, 301, 12, 9, 140, 266, 31, 3, 199, 58, 120]
GREEDY = 8

RUN = r"""
import sys, json
import numpy as np
import llama_cpp
path, ids, n_new, out = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
llm = llama_cpp.Llama(model_path=path, n_ctx=64, n_batch=64, logits_all=True, n_threads=2,
                      verbose=False, n_gpu_layers=0, type_k=0, type_v=0)   # 0: GGML_TYPE_F32
llm.eval(ids)
logits = np.array(llm.scores[:len(ids)], dtype=np.float32)
greedy = []
for _ in range(n_new):
    greedy.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
    llm.eval([greedy[-1]])
np.savez(out, logits=logits, greedy=np.array(greedy))
print(llama_cpp.__version__)
"""

QUANTIZE = r"""
import sys
import llama_cpp
src, dst, ftype, pure = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
params = llama_cpp.llama_model_quantize_default_params()
params.ftype = ftype
params.pure = pure
params.nthread = 2
rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), params)
sys.exit(rc)
"""


def child(python: str, code: str, *args) -> str:
    r = subprocess.run([python, "-c", code, *map(str, args)], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"llama.cpp failed ({args[0]}): {r.stderr.strip()[-800:]}")
    return r.stdout.strip()


def sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def llama_cpp_runs(python: str, folder: str, name: str, tmp: str, types: list[str]) -> dict:
    from qwen_np.apps.quantize_gguf import quantize_to_gguf
    out = {"ids": np.array(IDS)}
    for t in types:
        path = os.path.join(tmp, f"{name}-{t}.gguf")
        quantize_to_gguf(folder, path, t)
        npz = os.path.join(tmp, f"{name}-{t}.npz")
        version = child(python, RUN, path, json.dumps(IDS), GREEDY, npz)
        got = np.load(npz)
        out[f"sha256_{t}"] = np.array(sha256(path))
        out[f"logits_{t}"] = got["logits"]
        out[f"greedy_{t}"] = got["greedy"]
        print(f"{name} {t}: llama-cpp-python {version}, greedy {got['greedy'].tolist()}")
    return out


def llama_quantizer(python: str, folder: str, name: str, tmp: str, types: list[str]) -> dict:
    import gguf
    from gguf import GGMLQuantizationType as T
    from gguf_writer import write_gguf_from_hf
    f32 = os.path.join(tmp, f"{name}-F32.gguf")
    weights = write_gguf_from_hf(folder, f32, T.F32)           # {gguf name: float32 array}
    out = {}
    for t in types:
        dst = os.path.join(tmp, f"{name}-llama-{t}.gguf")
        child(python, QUANTIZE, f32, dst, FTYPES[t], "0" if t == "Q4_K_M" else "1")
        reader = gguf.GGUFReader(dst)
        quantized = [x for x in reader.tensors if x.tensor_type not in (T.F32, T.F16)]
        out["names"] = np.array([x.name for x in quantized])
        rmse, shas, types = [], [], []
        for x in quantized:
            w = gguf.quants.dequantize(np.asarray(x.data), x.tensor_type)
            rmse.append(np.sqrt(np.mean((w.reshape(weights[x.name].shape) - weights[x.name]) ** 2,
                                        dtype=np.float64)))
            shas.append(hashlib.sha256(np.asarray(x.data).tobytes()).hexdigest())
            types.append(x.tensor_type.name)
        out[f"rmse_{t}"] = np.array(rmse)
        out[f"sha256_{t}"] = np.array(shas)
        if t == "Q4_K_M":
            out["types_Q4_K_M"] = np.array(types)
        print(f"{name} llama.cpp {t}: rmse {np.round(rmse, 5).tolist()}")
    return out


RUN_REAL = r"""
import sys, json
import numpy as np
import llama_cpp
path, prompt, out = sys.argv[1], sys.argv[2], sys.argv[5]
n_new, top = int(sys.argv[3]), int(sys.argv[4])
llm = llama_cpp.Llama(model_path=path, n_ctx=128, n_batch=128, logits_all=True, n_threads=2,
                      verbose=False, n_gpu_layers=0, type_k=0, type_v=0)
ids = llm.tokenize(prompt.encode(), add_bos=False, special=False)
llm.eval(ids)
greedy = []
for _ in range(n_new):
    greedy.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
    llm.eval([greedy[-1]])
rows = np.array(llm.scores[len(ids) - 1:len(ids) - 1 + n_new], dtype=np.float32)
top_ids = np.argsort(-rows, axis=1)[:, :top]
np.savez(out, ids=np.array(ids), greedy=np.array(greedy), top_ids=top_ids,
         top_logits=np.take_along_axis(rows, top_ids, 1))
print(llama_cpp.__version__)
"""
REAL_PROMPT = "def fibonacci(n):"
REAL_NEW, REAL_TOP = 32, 16


def real_model_runs(python: str, types: list[str], tmp: str, npz_path: str) -> None:
    """The real GGUF, dequantized and written again at each type: llama.cpp's greedy tokens
    and top logits at each generated position, saved after each type (into what npz_path
    already holds for other types)."""
    from qwen_np.apps.fetch import default_model_path
    from qwen_np.apps.quantize_gguf import quantize_to_gguf
    out = dict(np.load(npz_path)) if os.path.exists(npz_path) else {}
    out["prompt"] = np.array(REAL_PROMPT)
    for t in types:
        path = os.path.join(tmp, f"real-{t}.gguf")
        stats = quantize_to_gguf(default_model_path(), path, t)
        npz = os.path.join(tmp, f"real-{t}.npz")
        version = child(python, RUN_REAL, path, REAL_PROMPT, REAL_NEW, REAL_TOP, npz)
        got = np.load(npz)
        out["ids"] = got["ids"]
        out[f"sha256_{t}"] = np.array(sha256(path))
        for k in ("greedy", "top_ids", "top_logits"):
            out[f"{k}_{t}"] = got[k]
        print(f"real {t}: {stats['bytes'] / 1e6:.1f} MB in {stats['seconds']:.0f} s; "
              f"llama-cpp-python {version}; greedy {got['greedy'].tolist()}", flush=True)
        os.remove(path)
        np.savez_compressed(npz_path, **out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama-python", default=os.environ.get("LLAMA_PYTHON", "python3"))
    ap.add_argument("--real", nargs="*", metavar="TYPE", default=None,
                    help="only the real model (`qwen-np fetch`), at these types (default all): "
                         "real_model.llama_cpp.npz")
    args = ap.parse_args()
    os.makedirs(FIXTURES, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="qwen-np-gguf-output-") as tmp:
        if args.real is not None:
            real_model_runs(args.llama_python, args.real or TYPES, tmp,
                            os.path.join(FIXTURES, "real_model.llama_cpp.npz"))
            return
        folders = {name: (write_model(name, os.path.join(tmp, name)), TYPES) for name in MODELS}
        folders.update({name: (os.path.join(HERE, "..", "tests", "fixtures", "moe", name),
                               MOE_TYPES) for name in MOE})
        for name, (folder, types) in folders.items():
            np.savez_compressed(os.path.join(FIXTURES, f"{name}.llama_cpp.npz"),
                                **llama_cpp_runs(args.llama_python, folder, name, tmp, types))
            np.savez_compressed(os.path.join(FIXTURES, f"{name}.llama_quantize.npz"),
                                **llama_quantizer(args.llama_python, folder, name, tmp, types))


if __name__ == "__main__":
    main()
