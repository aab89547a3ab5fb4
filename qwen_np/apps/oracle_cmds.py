"""The oracle's commands: `qwen-np trace` (every intermediate of one forward pass, saved),
`qwen-np compare` (two traces, tensor by tensor) and `qwen-np ppl` (perplexity of a text; with
--save-logprobs it keeps the base's distributions, with --kl-divergence it compares a model
with them: oracle/kl_divergence.py)."""

from __future__ import annotations

from qwen_np.apps.loading import load_model, progress_bar
from qwen_np.errors import InputError


def cmd_trace(args) -> int:
    from qwen_np.oracle.trace import model_identity, save_trace, trace
    layers = None
    if args.layers is not None:
        try:
            layers = [int(v) for v in args.layers.split(",") if v.strip()]
        except ValueError:
            raise InputError(f"--layers {args.layers!r}: comma-separated integers") from None
    model = load_model(args)
    ids = model.tokenizer.encode(args.prompt)
    tensors = trace(model, ids, layers=layers, tensors=args.tensors)
    meta = {"ids": ids, "prompt": args.prompt, "dtype": args.dtype, "backend": args.backend,
            "kv_cache": model.kv_cache, "model": model_identity(model)}
    save_trace(args.output, tensors, meta)
    print(f"{args.output}: {len(tensors)} tensors, {len(ids)} tokens, "
          f"{sum(t.nbytes for t in tensors.values()):,} bytes")
    return 0


def cmd_compare(args) -> int:
    from qwen_np.oracle.trace import compare_traces, load_trace
    a, _ = load_trace(args.a)
    b, _ = load_trace(args.b)
    rows = compare_traces(a, b, args.rtol, args.atol)
    if not rows:
        raise InputError(f"{args.a} and {args.b} have no tensor name in common")
    width = max(len(r["name"]) for r in rows)
    print(f"{'tensor':<{width}}  {'max abs':>10}  {'max rel':>10}  first position past tolerance")
    for r in rows:
        where = "" if r["first_position"] is None else str(r["first_position"])
        print(f"{r['name']:<{width}}  {r['max_abs']:>10.3e}  {r['max_rel']:>10.3e}  "
              f"{'ok' if r['ok'] else 'PAST ' + where} {r['note']}".rstrip())
    for side, this, other in (("a", a, b), ("b", b, a)):
        only = [n for n in this if n not in other]
        if only:
            print(f"only in {side}: {', '.join(only[:8])}{' ...' if len(only) > 8 else ''}")
    bad = [r for r in rows if not r["ok"]]
    if bad:
        print(f"diverges at {bad[0]['name']} (position {bad[0]['first_position']}); "
              f"{len(bad)} of {len(rows)} tensors past rtol {args.rtol}, atol {args.atol}")
        return 1
    print(f"all {len(rows)} tensors within rtol {args.rtol}, atol {args.atol}")
    return 0


def cmd_ppl(args) -> int:
    import json
    import os
    from qwen_np.oracle.perplexity import perplexity
    if os.path.exists(args.text) and not os.path.isfile(args.text):     # a FIFO would block
        raise InputError(f"{args.text}: not a regular file (a UTF-8 text file is expected)")
    try:
        with open(args.text, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise InputError(f"{args.text}: cannot read ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise InputError(f"{args.text}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    base = args.kl_divergence
    if base is not None:
        from qwen_np.oracle.kl_divergence import read_base
        read_base(base)                  # a bad base file fails before the model is loaded
    model = load_model(args)
    ids = model.tokenizer.encode(text)
    stats = None
    if base is not None:
        from qwen_np.oracle.kl_divergence import kl_against
        result, stats, per_token = kl_against(base, model.logits, ids, args.ctx, args.stride,
                                              progress_bar("ppl"), per_token=args.per_token)
        result["kl_divergence"] = stats
        if args.per_token:
            result["token_kld"] = per_token["kld"].tolist()
            result["token_p_diff"] = per_token["p_diff"].tolist()
    elif args.save_logprobs is not None:
        from qwen_np.oracle.kl_divergence import save_base
        meta = {"model": model.source, "backend": args.backend, "dtype": args.dtype,
                "text": args.text}
        result = save_base(args.save_logprobs, model.logits, ids, args.ctx, args.stride,
                           args.save_top_k, meta, progress_bar("ppl"), per_token=args.per_token)
    else:
        result = perplexity(model.logits, ids, args.ctx, args.stride, progress_bar("ppl"),
                            per_token=args.per_token)
    if args.per_token:
        result["token_ids"] = ids
    result.update(text=args.text, model=model.source, backend=args.backend, dtype=args.dtype)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"perplexity {result['perplexity']:.4f} (mean NLL {result['nll']:.5f} nats over "
          f"{result['tokens']} tokens, {result['windows']} windows of {args.ctx}, "
          f"stride {args.stride})")
    if args.save_logprobs is not None:
        print(f"{args.save_logprobs}: the base's log-probs of {result['tokens']} tokens, top "
              f"{result['logprobs_top_k']} of {result['vocab']} each, "
              f"{os.path.getsize(args.save_logprobs):,} bytes")
    if stats is not None:
        from qwen_np.oracle.kl_divergence import format_statistics
        print(format_statistics(stats))
    return 0
