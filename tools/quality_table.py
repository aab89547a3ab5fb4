"""The quality table: what each quantization costs, as KL divergence from a base and as
perplexity, on the real GGUF (Qwen2.5-Coder-0.5B-Instruct, Q4_K_M mix) and on its float32
dequantization quantized again by `qwen-np quantize` (RTN, GPTQ, AWQ, mixed precision, and the
GGUF block types qwen-np writes).

    python tools/quality_table.py [--out DIR] [--keep] [--ctx 512] [--stride 256]
                                  [--tokens 2048] [--samples 16] [--seq-len 512]
                                  [--calibration stdlib|builtin]
                                  [--only SUBSTRING ...] [--backend numba] [--threads 2]

The base: no float Qwen2.5-Coder-0.5B checkpoint is reachable from these machines (they reach
PyPI and Debian, no model hub), so the base is the float32 dequantization of the shipped GGUF,
exact (every block's dequantized value is a float32 product). Every KLD below is therefore the
cost of quantizing *that* model again: its weights already lie on the Q4_K/Q5_0/Q6_K/Q8_0 grids
of llama.cpp's Q4_K_M mix, so the shipped file itself scores a KLD of about 0 against it (only
the kernels' float32 summation order differs), and a quantizer that found the same grids would
too. It is not the KLD of quantizing the original float model.

The text: Python standard-library modules (PSF license) of the running interpreter, named in
STDLIB_FILES and concatenated in that order; its sha256 and the Python version are printed, as
the files differ between versions. It is tokenized with the GGUF's tokenizer and cut to
--tokens tokens; every model is scored on those same ids (`qwen-np ppl`'s sliding window,
qwen_np/oracle/perplexity.py) against the base's saved top-k log-probs
(qwen_np/oracle/kl_divergence.py, top 256 and the rest's mass).

Each model is made by the `qwen-np quantize` command line in a fresh process (its wall time and
peak RSS are the "quantize" columns; GPTQ and AWQ calibrate on --samples windows of --seq-len
tokens of other standard-library modules, CALIBRATION_FILES, with --calibration stdlib, the
default, or of qwen-np's built-in calibration text with --calibration builtin; one row always
uses the built-in text, as a user who gives no --calibration gets) and scored in another (peak RSS = its VmHWM). Everything
is written under --out (default: a temporary folder), removed at the end unless --keep; with
--keep, a later run into the same --out reuses the base, the models and the scores already
there (so the rows can be made over several runs; the printed table is always the whole).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

STDLIB_FILES = ["textwrap.py", "heapq.py", "bisect.py", "fnmatch.py", "colorsys.py", "shlex.py",
                "graphlib.py", "statistics.py"]
# GPTQ's and AWQ's calibration text (--calibration stdlib): other modules, none of the above
CALIBRATION_FILES = ["argparse.py", "dataclasses.py", "difflib.py", "pprint.py", "string.py",
                     "csv.py", "fractions.py", "functools.py", "contextlib.py", "enum.py",
                     "calendar.py", "configparser.py", "gettext.py", "ipaddress.py"]

SCORE = r"""
import json, sys, time
import qwen_np
from qwen_np.oracle.kl_divergence import kl_against, save_base
path, ids_file, backend, threads, kv, ctx, stride, base = sys.argv[1:9]
ids = json.load(open(ids_file))
t = time.perf_counter()
m = qwen_np.load(path, backend=backend, threads=int(threads), kv_cache=None if kv == "-" else kv)
if sys.argv[9:] == ["--save"]:
    r = save_base(base, m.logits, ids, int(ctx), int(stride), 256, {"model": path})
else:
    r, stats, _ = kl_against(base, m.logits, ids, int(ctx), int(stride))
    r["kl_divergence"] = stats
r["seconds"] = time.perf_counter() - t
for line in open("/proc/self/status"):
    if line.startswith("VmHWM:"):
        r["peak_rss"] = int(line.split()[1]) * 1024
print(json.dumps(r))
"""

QUANTIZE = r"""
import sys, time
from qwen_np.apps.cli import main
t = time.perf_counter()
rc = main(["quantize"] + sys.argv[1:])
for line in open("/proc/self/status"):
    if line.startswith("VmHWM:"):
        print("QUANTIZE", time.perf_counter() - t, int(line.split()[1]) * 1024)
sys.exit(rc)
"""

# (label, output name, `qwen-np quantize` options); "{cal}" stands for the calibration options,
# "{builtin}" for the same on the built-in calibration text
MIX = "8:lm_head,v_proj,down_proj"
ROWS = [(f"{m.upper()} 4-bit g{g} {'sym' if sym else 'asym'}{' act-order' if act else ''}",
         f"{m}{'-act' if act else ''}-g{g}-{'sym' if sym else 'asym'}",
         ["--method", m, "--group-size", str(g)] + ([] if sym else ["--asym"])
         + (["--act-order"] if act else []) + (["{cal}"] if m != "rtn" else []))
        for m, act in (("rtn", False), ("gptq", False), ("gptq", True))
        for g in (128, 32) for sym in (True, False)]
ROWS += [(f"AWQ 4-bit g{g} asym (zero point), 2 x 512 calibration tokens", f"awq-g{g}",
          ["--method", "awq", "--group-size", str(g), "{cal}", "--samples", "2"])
         for g in (128, 32)]             # AWQ's search costs ~10x GPTQ's per token here
ROWS += [("GPTQ 4-bit g128 sym, the built-in calibration text", "gptq-g128-sym-builtin",
          ["--method", "gptq", "{builtin}"]),
         ("RTN 8-bit g128 sym", "rtn8-g128", ["--bits", "8"]),
         ("GPTQ 8-bit g128 sym", "gptq8-g128", ["--bits", "8", "--method", "gptq", "{cal}"]),
         (f"mixed: RTN 4-bit g128 asym, --keep {MIX}", "mixed-rtn",
          ["--asym", "--keep", MIX]),
         (f"mixed: GPTQ 4-bit g128 asym, --keep {MIX}", "mixed-gptq",
          ["--asym", "--method", "gptq", "--keep", MIX, "{cal}"])]
ROWS += [(f"GGUF {t} written by qwen-np", f"{t}.gguf", ["--type", t])
         for t in ("Q4_0", "Q4_K", "Q4_K_M", "Q5_K", "Q6_K", "Q8_0")]


def stdlib_text(files=STDLIB_FILES) -> tuple[str, str]:
    """The named standard-library modules of the running Python, concatenated; its sha256."""
    lib = sysconfig.get_paths()["stdlib"]
    parts = []
    for name in files:
        with open(os.path.join(lib, name), encoding="utf-8") as f:
            parts.append(f.read())
    text = "\n".join(parts)
    return text, hashlib.sha256(text.encode()).hexdigest()


def hf_config(cfg) -> dict:
    return {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu",
            "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
            "intermediate_size": cfg.intermediate_size,
            "num_hidden_layers": cfg.num_hidden_layers,
            "num_attention_heads": cfg.num_attention_heads,
            "num_key_value_heads": cfg.num_key_value_heads, "rms_norm_eps": cfg.rms_norm_eps,
            "rope_theta": cfg.rope_theta, "max_position_embeddings": cfg.max_position_embeddings,
            "tie_word_embeddings": cfg.tie_word_embeddings, "torch_dtype": "float32",
            "eos_token_id": list(cfg.eos_token_ids), "bos_token_id": cfg.bos_token_id}


def export_float32(gguf_path: str, out: str) -> None:
    """The GGUF's tensors dequantized to float32 under Hugging Face names, as a folder with
    its tokenizer (tokenizer.json) and chat template (tokenizer_config.json)."""
    from qwen_np.runtime.load import read_model
    from qwen_np.tensors.dense import as_compute
    from qwen_np.formats.safetensors import write_safetensors
    from qwen_np.tensors.quantized import QuantizedTensor, dequantize
    from qwen_np.tensors.mapped import MappedQuantizedRows
    from qwen_np.formats.chat_templates import read_chat_templates
    config, tensors, make_tokenizer = read_model(gguf_path)
    if config.model_type != "qwen2":
        raise SystemExit(f"{gguf_path}: a qwen2 GGUF is expected")
    floats = {}
    for name, t in tensors.items():
        if isinstance(t, MappedQuantizedRows):
            t = t.rows_to_canonical(t.raw)
        floats[name] = dequantize(t) if isinstance(t, QuantizedTensor) else \
            np.ascontiguousarray(as_compute(t, np.float32))
    os.makedirs(out, exist_ok=True)
    write_safetensors(os.path.join(out, "model.safetensors"), floats)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(hf_config(config), f, indent=1)
    make_tokenizer().save(os.path.join(out, "tokenizer.json"))
    chat = read_chat_templates(gguf_path)          # the chat template and special tokens
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump({"chat_template": chat.templates["default"], **chat.special_tokens}, f,
                  indent=1)


def folder_bytes(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path)
               if f.endswith(".safetensors"))


def score(path, ids_file, args, base, kv="-", save=False) -> dict:
    r = subprocess.run([sys.executable, "-c", SCORE, path, ids_file, args.backend,
                        str(args.threads), kv, str(args.ctx), str(args.stride), base]
                       + (["--save"] if save else []), capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"scoring {path} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def quantize(src, dst, options, args) -> dict:
    """Run `qwen-np quantize src dst options` in a fresh process: its seconds and peak RSS."""
    builtin = ["--samples", str(args.samples), "--seq-len", str(args.seq_len)]
    cal = builtin + (["--calibration", args.calibration_file] if args.calibration_file else [])
    argv = [src, dst] + [a for o in options
                         for a in {"{cal}": cal, "{builtin}": builtin}.get(o, [o])]
    r = subprocess.run([sys.executable, "-c", QUANTIZE] + argv, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"qwen-np quantize {' '.join(argv)} failed:\n{r.stderr[-3000:]}")
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("QUANTIZE"))
    return {"quantize_seconds": float(line.split()[1]), "quantize_rss": int(line.split()[2]),
            "command": "qwen-np quantize " + " ".join(argv)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--stride", type=int, default=256)
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--only", nargs="*", default=None,
                    help="only the rows whose label contains one of these (ending in $: "
                         "ends with it), in this order")
    ap.add_argument("--calibration", choices=("stdlib", "builtin"), default="stdlib",
                    help="GPTQ's and AWQ's calibration text: CALIBRATION_FILES, or the built-in")
    ap.add_argument("--backend", default="numba")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    from qwen_np.runtime.load import load_tokenizer
    from qwen_np.apps.fetch import fetch_default_model
    gguf = fetch_default_model()
    out = args.out or tempfile.mkdtemp(prefix="qwen-np-quality-")
    os.makedirs(out, exist_ok=True)
    text, sha = stdlib_text()
    ids = load_tokenizer(gguf).encode(text)[:args.tokens]
    ids_file = os.path.join(out, "ids.json")
    with open(ids_file, "w") as f:
        json.dump(ids, f)
    args.calibration_file, cal_note = None, "the built-in text"
    if args.calibration == "stdlib":
        cal_text, cal_sha = stdlib_text(CALIBRATION_FILES)
        args.calibration_file = os.path.join(out, "calibration.txt")
        with open(args.calibration_file, "w", encoding="utf-8") as f:
            f.write(cal_text)
        cal_note = f"{', '.join(CALIBRATION_FILES)} (sha256 {cal_sha[:16]}...)"
    print(f"text: {', '.join(STDLIB_FILES)} from Python {sys.version.split()[0]}'s standard "
          f"library, sha256 {sha[:16]}..., {len(ids)} tokens; ctx {args.ctx}, stride "
          f"{args.stride}, backend {args.backend}, {args.threads} threads; calibration "
          f"{args.samples} x {args.seq_len} tokens of {cal_note}", flush=True)

    f32 = os.path.join(out, "float32")
    if not os.path.exists(os.path.join(f32, "model.safetensors")):
        t = time.perf_counter()
        export_float32(gguf, f32)
        print(f"float32 dequantization written in {time.perf_counter() - t:.0f} s", flush=True)
    base = os.path.join(out, "base-logprobs.safetensors")
    if not os.path.exists(base):
        r = score(f32, ids_file, args, base, save=True)
        print(f"base saved: ppl {r['perplexity']:.4f} ({r['seconds']:.0f} s)", flush=True)
    rows = [("GGUF as shipped (Q4_K_M mix)", gguf, None),
            ("float32 dequantization of the GGUF (the base)", f32, None)]
    rows += [(label, os.path.join(out, name), options) for label, name, options in ROWS]
    if args.only:                                  # those rows, in the order asked
        rows = [r for o in args.only for r in rows if o.rstrip("$").lower() in r[0].lower()
                and (not o.endswith("$") or r[0].lower().endswith(o[:-1].lower()))]
        rows = [r for i, r in enumerate(rows) if r not in rows[:i]]
    results = []
    for label, path, options in rows:
        done = os.path.join(out, os.path.basename(path) + ".score.json")
        if os.path.exists(done):                       # scored by an earlier run (--keep)
            with open(done) as f:
                r = json.load(f)
        else:
            made = {}
            if options is not None and not os.path.exists(path):
                made = quantize(f32, path, options, args)
                print(f"  {made['command']}: {made['quantize_seconds']:.0f} s", flush=True)
            r = score(path, ids_file, args, base)
            r.update(made, label=label, bytes=folder_bytes(path))
            with open(done, "w") as f:
                json.dump(r, f)
        results.append(r)
        k = r["kl_divergence"]
        print(f"  {label}: KLD {k['kld_mean']:.5f}, ppl {r['perplexity']:.4f} "
              f"({r['seconds']:.0f} s)", flush=True)
    print("\n| model | size | KLD mean ± unc. | KLD p99 | same top-1 | perplexity "
          "| quantize | its peak RSS |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        k = r["kl_divergence"]
        made = (f"{r['quantize_seconds']:.0f} s | {r['quantize_rss'] / 2**20:,.0f} MiB"
                if "quantize_seconds" in r else "- | -")
        print(f"| {r['label']} | {r['bytes'] / 1e6:,.0f} MB | {k['kld_mean']:.3g} ± "
              f"{k['kld_mean_unc']:.2g} | {k['kld_p99']:.3g} | {k['same_top_pct']:.2f}% | "
              f"{r['perplexity']:.4f} | {made} |")
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    if not args.keep and args.out is None:
        shutil.rmtree(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
