"""KL divergence of a model from a saved base over the tokens `qwen-np ppl` scores, with the
statistics llama.cpp's `llama-perplexity --kl-divergence` prints (ggml-org/llama.cpp,
tools/perplexity/perplexity.cpp: `kl_divergence()` and the `log_softmax()` that reads the
base's log-probs).

Per scored token t, predicting the text's next token y from the same context (the windows of
oracle/perplexity.py, so base and new see the same contexts):

    KLD_t  = sum_i p_base(i) * (log p_base(i) - log p_new(i))       over the vocabulary
    Δp_t   = p_new(y) - p_base(y)                                    the next token's probability
    same_t = argmax_i p_new(i) == argmax_i p_base(i)                 ties go to the smaller id

Over the T tokens, as llama.cpp defines them:

    mean KLD ± std(KLD_t, ddof=1) / sqrt(T)   the standard error; llama.cpp writes it
                                              sqrt((mean(x^2) - mean(x)^2) / (T - 1)), the same
    median, 99%, 99.9%, maximum KLD_t         percentiles interpolate linearly between sorted
                                              values at fraction * (T - 1): np.percentile's default,
                                              llama.cpp's `percentile` lambda
    RMS Δp = sqrt(mean(Δp_t^2)) ± 0.5 / RMS * (standard error of Δp_t^2), in %
    same top p = share of tokens with same_t ± sqrt(p (1 - p) / (T - 1)), in %
    PPL(new), PPL(base), mean ln(PPL(new) / PPL(base)) ± std(nll_new - nll_base, ddof=1) / sqrt(T)
                                              (= llama.cpp's error with the covariance term)

Where this differs from llama.cpp: every number is float64, and the KLD sums every stored term
(llama.cpp skips base log-probs below -16 and stores them as uint16 steps of 1/65535 of the
row's range); llama.cpp prints an uncertainty of 0 under 11 tokens and no summary under 100,
here both are given from 2 tokens; llama.cpp scores the second half of each --ctx chunk, here
the tokens are ppl's sliding windows (--ctx, --stride), and those must match the base's.

The base file (.safetensors, formats/safetensors.py), T = N - 1 scored tokens, k = the top-k kept:

    token_ids       int32   [N]      the text's tokens
    top_ids         int32   [T, k]   the base's k most likely next tokens, most likely first
    top_logprobs    float64 [T, k]   their log-probabilities
    rest_logprob    float64 [T]      log of the total probability of every other token
                                     (-inf when k = V: nothing is left out)
    token_logprobs  float64 [T]      log p_base(y) of the token that follows (Δp, PPL(base))
    __metadata__ "qwen_np.kl_base": JSON {model, backend, dtype, text, ctx, stride, top_k, vocab}

Cost: 12 k + 16 bytes a token: k = 128 is 1,552 bytes, 3.1 MB for 2,000 tokens, where a full
row of float16 (or llama.cpp's uint16) log-probs is 2 V bytes: 297 KiB a token for Qwen's
V = 151,936, 594 MB for 2,000 tokens. The log-probs stay float64 so that a float64 base from the
reference keeps its precision and a file against its own model gives exactly 0: float16 rounds
a log-prob near -1 by up to 2.4e-4 nats (4.9e-4 near -2), which moves a token's KLD by as
much, the order of a good 8-bit quantization's whole KLD and far above float32's against
float64 (about 1e-13 on the test model).

With k < V the base's rest is one outcome:

    KLD_k = sum_{i in top k} p_b(i) (log p_b(i) - log p_n(i))
            + P_b(rest) (log P_b(rest) - log P_n(rest))

By the log-sum inequality KLD_k <= KLD (never above the full sum); it falls short by exactly
P_b(rest) * KL(base's rest renormalised || new's rest renormalised): 0 when k >= V (every token
kept, exact) or when the two tails are proportional, and small while P_b(rest) is, unless the
tails themselves diverge widely. The report gives the mean and maximum P_b(rest), so the
weight of what was left out shows.
"""

from __future__ import annotations

import json
import math
import os
from typing import Callable

import numpy as np

from qwen_np.errors import FormatError, InputError
from qwen_np.model.logprobs import log_normalizers
from qwen_np.oracle.perplexity import perplexity

META_KEY = "qwen_np.kl_base"
BASE_TENSORS = {"token_ids": (np.int32, 1), "top_ids": (np.int32, 2),
                "top_logprobs": (np.float64, 2), "rest_logprob": (np.float64, 1),
                "token_logprobs": (np.float64, 1)}


# ---- saving a base ---------------------------------------------------------------------------

def save_base(path: str, logits_of: Callable[[list[int]], np.ndarray], ids, ctx: int,
              stride: int, top_k: int, meta: dict,
              progress: Callable[[int, int], None] | None = None, per_token: bool = False) -> dict:
    """Run ppl's windows over ids, keep each scored token's top_k log-probs (all of them when
    top_k >= V) and write the base file at path; returns perplexity()'s result with
    "logprobs_top_k" (the k kept) and "vocab" (V)."""
    parts: list[dict] = []
    vocab = []

    def each_window(logits, targets):
        vocab.append(logits.shape[1])
        parts.append(base_rows(logits, targets, top_k))
    result = perplexity(logits_of, ids, ctx, stride, progress, per_token, each_window)
    rows = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
    tensors = {"token_ids": np.asarray(ids, np.int32), "top_ids": rows["top_ids"],
               "top_logprobs": rows["top_logprobs"], "rest_logprob": rows["rest_logprob"],
               "token_logprobs": rows["token_logprobs"]}
    meta = dict(meta, ctx=ctx, stride=stride, top_k=int(rows["top_ids"].shape[1]),
                vocab=int(vocab[0]))
    from qwen_np.formats.safetensors import write_safetensors
    try:
        write_safetensors(path, tensors, {META_KEY: json.dumps(meta)})
    except OSError as e:
        raise InputError(f"{path}: cannot write ({e.strerror})") from None
    result.update(logprobs_file=os.fspath(path), logprobs_top_k=meta["top_k"], vocab=meta["vocab"])
    return result


def base_rows(logits: np.ndarray, targets, top_k: int) -> dict:
    """One window's rows of the base file from its logits [T, V]: the top_k most likely tokens
    (most likely first, ties by the smaller id), their log-probs, the rest's log-probability and
    the target's log-prob."""
    lp = log_softmax(logits)                                              # [T, V] float64
    top = top_ids(lp, min(top_k, lp.shape[1]))                            # [T, k]
    rows = np.arange(len(lp))
    return {"top_ids": top.astype(np.int32),
            "top_logprobs": np.take_along_axis(lp, top, axis=1),
            "rest_logprob": rest_logprob(lp, top),
            "token_logprobs": lp[rows, np.asarray(targets, np.intp)]}


def top_ids(lp: np.ndarray, k: int) -> np.ndarray:
    """The k largest of each row of lp [T, V], largest first, ties by the smaller id: the same
    as np.argsort(-lp, kind="stable")[:, :k] without sorting all V (a partition finds the k-th
    value; every larger entry is in, and as many of those equal to it as fit, smallest id first)."""
    kth = -np.partition(-lp, k - 1, axis=1)[:, k - 1:k]                   # [T, 1] k-th largest
    above, equal = lp > kth, lp == kth
    room = k - above.sum(axis=1, keepdims=True)
    chosen = above | (equal & (np.cumsum(equal, axis=1) <= room))         # k a row, ids ascending
    ids = np.nonzero(chosen)[1].reshape(len(lp), k)
    order = np.argsort(-np.take_along_axis(lp, ids, axis=1), axis=1, kind="stable")
    return np.take_along_axis(ids, order, axis=1)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log p of every token, rows of logits [T, V] -> [T, V] float64 (model/logprobs.py's log_z)."""
    x = np.asarray(logits, np.float64)
    return x - log_normalizers(x)[:, None]


def rest_logprob(lp: np.ndarray, top_ids: np.ndarray) -> np.ndarray:
    """log of the total probability outside top_ids [T, k] of each row of log-probs [T, V]:
    [T], -inf where nothing is outside."""
    outside = np.ones(lp.shape, bool)
    np.put_along_axis(outside, top_ids.astype(np.intp), False, axis=1)
    x = np.where(outside, lp, -np.inf)
    top = x.max(axis=1)                                                   # [T]
    safe = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        out = safe + np.log(np.exp(x - safe[:, None]).sum(axis=1))
    return np.where(np.isfinite(top), out, -np.inf)


# ---- reading it back -------------------------------------------------------------------------

def read_base(path: str) -> tuple[dict, dict]:
    """(tensors, metadata) of a base file, every tensor's dtype and shape checked."""
    from qwen_np.formats.safetensors import open_safetensors, read_safetensors_header
    _, _, header_meta = read_safetensors_header(path)
    if META_KEY not in header_meta:
        raise FormatError(f"{path}: not a log-probs file from `qwen-np ppl --save-logprobs` "
                          f"(no {META_KEY} metadata)")
    try:
        meta = json.loads(header_meta[META_KEY])
    except ValueError:
        meta = None
    if not isinstance(meta, dict):
        raise FormatError(f"{path}: {META_KEY} metadata is not a JSON object")
    tensors = open_safetensors(path)
    for name, (dtype, ndim) in BASE_TENSORS.items():
        t = tensors.get(name)
        if t is None:
            raise FormatError(f"{path}: no tensor {name} (not a complete log-probs file)")
        if not isinstance(t, np.ndarray) or t.dtype != dtype or t.ndim != ndim:
            raise FormatError(f"{path}: tensor {name} is {getattr(t, 'dtype', '?')} "
                              f"{list(t.shape)}, expected {np.dtype(dtype).name} of {ndim} axes")
    T, k = tensors["top_ids"].shape
    if len(tensors["token_ids"]) != T + 1 or tensors["top_logprobs"].shape != (T, k) \
            or len(tensors["rest_logprob"]) != T or len(tensors["token_logprobs"]) != T:
        raise FormatError(f"{path}: tensor shapes disagree ({len(tensors['token_ids'])} tokens, "
                          f"top_ids {[T, k]}, top_logprobs "
                          f"{list(tensors['top_logprobs'].shape)}, rest_logprob "
                          f"{list(tensors['rest_logprob'].shape)}, token_logprobs "
                          f"{list(tensors['token_logprobs'].shape)})")
    vocab = meta.get("vocab")
    if not isinstance(vocab, int) or k > vocab or (T and (tensors["top_ids"].min() < 0
                                                          or tensors["top_ids"].max() >= vocab)):
        raise FormatError(f"{path}: top_ids outside the vocabulary of {vocab!r} tokens")
    return tensors, meta


def check_same_tokens(path: str, meta: dict, tensors: dict, ids, ctx: int, stride: int) -> None:
    """One-line InputError naming the base file and what differs, unless this run scores the
    same tokens with the same windows."""
    saved = [int(i) for i in tensors["token_ids"]]
    ids = [int(i) for i in ids]
    if saved != ids:
        at = next((j for j, (a, b) in enumerate(zip(saved, ids)) if a != b),
                  min(len(saved), len(ids)))
        there = saved[at] if at < len(saved) else "the end"
        here = ids[at] if at < len(ids) else "the end"
        raise InputError(f"{path}: saved for other tokens ({len(saved)} there, {len(ids)} here; "
                         f"token {at} is {there} there, {here} here): score the same text with "
                         f"the same tokenizer")
    if (meta.get("ctx"), meta.get("stride")) != (ctx, stride):
        raise InputError(f"{path}: saved with --ctx {meta.get('ctx')} --stride "
                         f"{meta.get('stride')}, this run has --ctx {ctx} --stride {stride}")


# ---- comparing with it -----------------------------------------------------------------------

def kl_against(path: str, logits_of: Callable[[list[int]], np.ndarray], ids, ctx: int,
               stride: int, progress: Callable[[int, int], None] | None = None,
               per_token: bool = False) -> tuple[dict, dict, dict]:
    """(perplexity()'s result, kld_statistics(), per-token arrays) of a model against the base
    file at path, over the same tokens and windows."""
    tensors, meta = read_base(path)
    check_same_tokens(path, meta, tensors, ids, ctx, stride)
    parts: list[dict] = []
    done = [0]

    def each_window(logits, targets):
        n = len(targets)
        if logits.shape[1] != meta["vocab"]:
            raise InputError(f"{path}: saved for a vocabulary of {meta['vocab']} tokens, this "
                             f"model has {logits.shape[1]}")
        rows = slice(done[0], done[0] + n)
        parts.append(compare_rows(logits, targets, tensors["top_ids"][rows],
                                  tensors["top_logprobs"][rows], tensors["rest_logprob"][rows],
                                  tensors["token_logprobs"][rows]))
        done[0] += n
    result = perplexity(logits_of, ids, ctx, stride, progress, per_token, each_window)
    token_stats = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
    stats = kld_statistics(**token_stats)
    stats.update(top_k=int(tensors["top_ids"].shape[1]), vocab=meta["vocab"],
                 base={k: meta.get(k) for k in ("model", "backend", "dtype")},
                 base_file=os.fspath(path))
    return result, stats, token_stats


def compare_rows(logits, targets, top_ids, top_logprobs, rest_lp, base_token_lp) -> dict:
    """Per token of one window: kld, p_diff, same_top, nll, nll_base and the base's rest_mass."""
    lp = log_softmax(logits)                                              # [T, V] new log p
    rows = np.arange(len(lp))
    token_lp = lp[rows, np.asarray(targets, np.intp)]
    return {"kld": kld_rows(lp, top_ids, top_logprobs, rest_lp),
            "p_diff": np.exp(token_lp) - np.exp(base_token_lp),
            "same_top": np.argmax(lp, axis=1) == top_ids[:, 0],
            "nll": -token_lp, "nll_base": -np.asarray(base_token_lp, np.float64),
            "rest_mass": np.exp(rest_lp)}


def kld_rows(lp_new: np.ndarray, top_ids, top_logprobs, rest_lp) -> np.ndarray:
    """KLD_k of each row (the module's docstring): new log-probs [T, V] against the base's top
    log-probs [T, k] at top_ids [T, k] and the base's rest log-probability [T]."""
    top_ids = np.asarray(top_ids, np.intp)
    lb = np.asarray(top_logprobs, np.float64)                             # [T, k] base log p
    ln = np.take_along_axis(lp_new, top_ids, axis=1)                      # [T, k] new log p
    kept = np.sum(np.exp(lb) * (lb - ln), axis=1)
    rest_b = np.asarray(rest_lp, np.float64)
    rest_n = rest_logprob(lp_new, top_ids)
    with np.errstate(invalid="ignore"):                                   # 0 * (-inf - -inf)
        rest = np.where(np.isneginf(rest_b), 0.0, np.exp(rest_b) * (rest_b - rest_n))
    return kept + rest


# ---- the statistics --------------------------------------------------------------------------

def kld_statistics(kld, p_diff, same_top, nll, nll_base, rest_mass) -> dict:
    """llama.cpp's summary (the module's docstring) of per-token arrays; percentages as %."""
    kld, p_diff = np.asarray(kld, np.float64), np.asarray(p_diff, np.float64)
    nll, nll_base = np.asarray(nll, np.float64), np.asarray(nll_base, np.float64)
    T = len(kld)
    if T == 0:
        raise InputError("no tokens were scored")
    rms = math.sqrt(float(np.mean(p_diff ** 2)))
    same = float(np.mean(same_top))
    return {
        "tokens": T,
        "ppl": math.exp(float(np.mean(nll))), "ppl_base": math.exp(float(np.mean(nll_base))),
        "ln_ppl_ratio": float(np.mean(nll - nll_base)),
        "ln_ppl_ratio_unc": standard_error(nll - nll_base),
        "kld_mean": float(np.mean(kld)), "kld_mean_unc": standard_error(kld),
        "kld_median": float(np.median(kld)),
        "kld_p99": float(np.percentile(kld, 99.0)), "kld_p999": float(np.percentile(kld, 99.9)),
        "kld_max": float(np.max(kld)),
        "dp_mean_pct": 100 * float(np.mean(p_diff)),
        "dp_mean_unc_pct": 100 * standard_error(p_diff),
        "dp_rms_pct": 100 * rms,
        "dp_rms_unc_pct": 100 * (0.5 / rms * standard_error(p_diff ** 2) if rms > 0 else 0.0),
        "same_top_pct": 100 * same,
        "same_top_unc_pct": 100 * (math.sqrt(same * (1 - same) / (T - 1)) if T > 1 else 0.0),
        "base_rest_mass_mean": float(np.mean(rest_mass)),
        "base_rest_mass_max": float(np.max(rest_mass)),
    }


def standard_error(x) -> float:
    """std(x, ddof=1) / sqrt(len(x)); 0 for fewer than 2 values."""
    x = np.asarray(x, np.float64)
    return float(np.std(x, ddof=1) / math.sqrt(len(x))) if len(x) > 1 else 0.0


def format_statistics(s: dict) -> str:
    """The table `qwen-np ppl --kl-divergence` prints, in llama.cpp's labels and units (numbers
    under 1e-4, as float64 against float32 gives, in scientific notation rather than 0.000000)."""
    base = s.get("base") or {}
    kept = ("every token: exact" if s["top_k"] >= s["vocab"] else
            f"top {s['top_k']} of {s['vocab']} tokens: KLD is a lower bound, short by the rest's "
            f"mass times the tails' own KLD")
    return "\n".join([
        f"KL divergence from {s['base_file']} over {s['tokens']} tokens (base: "
        f"{base.get('model')}, {base.get('dtype')}, {base.get('backend')}; {kept})",
        f"Mean PPL(Q)                   : {s['ppl']:10.6f}",
        f"Mean PPL(base)                : {s['ppl_base']:10.6f}",
        f"Mean ln(PPL(Q)/PPL(base))     : {num(s['ln_ppl_ratio'])} ± {num(s['ln_ppl_ratio_unc'])}",
        f"Mean    KLD: {num(s['kld_mean'])} ± {num(s['kld_mean_unc'])}",
        f"Maximum KLD: {num(s['kld_max'])}",
        f"99.9%   KLD: {num(s['kld_p999'])}",
        f"99.0%   KLD: {num(s['kld_p99'])}",
        f"Median  KLD: {num(s['kld_median'])}",
        f"Mean    Δp: {num(s['dp_mean_pct'])} ± {num(s['dp_mean_unc_pct'])} %",
        f"RMS Δp    : {num(s['dp_rms_pct'])} ± {num(s['dp_rms_unc_pct'])} %",
        f"Same top p: {s['same_top_pct']:6.3f} ± {s['same_top_unc_pct']:5.3f} %",
        f"Base mass outside the stored tokens: mean {s['base_rest_mass_mean']:.3e}, "
        f"max {s['base_rest_mass_max']:.3e}",
    ])


def num(x: float) -> str:
    return f"{x:10.6f}" if x == 0 or abs(x) >= 1e-4 or not math.isfinite(x) else f"{x:10.3e}"
