"""Sliding-window perplexity: a hand-worked case, the loop transformers documents run with
transformers itself, and the command line."""

import math

import numpy as np
import pytest

import qwen_np
from conftest import HAVE_TRANSFORMERS, fixture_path
from qwen_np.apps.cli import main
from qwen_np.errors import InputError
from qwen_np.oracle.perplexity import perplexity, windows

TEXT = ("def fibonacci(n):\n    if n <= 1:\n        return n\n    return fibonacci(n - 1) + "
        "fibonacci(n - 2)\nThe capital of France is Paris. Hello, world! 0123456789 ") * 2


def test_a_hand_worked_case():
    """6 tokens, ctx 4, stride 2. A model whose row t (the t-th position of the window) gives
    the next token probability 1 / (t + 2):
        window [0, 4) scores tokens 1, 2, 3 from rows 0, 1, 2: log 2 + log 3 + log 4
        window [2, 6) scores tokens 4, 5 (3 was scored) from rows 1, 2: log 3 + log 4
    and stops (it reached the end): 5 tokens, NLL = (log 2 + 2 log 3 + 2 log 4) / 5."""
    ids = [0, 1, 2, 3, 4, 5]
    V = 8

    def logits_of(window):
        out = np.zeros((len(window), V))
        for t in range(len(window) - 1):
            p = 1.0 / (t + 2)
            rest = (1 - p) / (V - 1)
            out[t] = math.log(rest)
            out[t, window[t + 1]] = math.log(p)
        return out
    assert list(windows(6, 4, 2)) == [(0, 4, 1), (2, 6, 4)]
    r = perplexity(logits_of, ids, ctx=4, stride=2)
    want = (math.log(2) + 2 * math.log(3) + 2 * math.log(4)) / 5
    assert r["tokens"] == 5 and r["windows"] == 2
    assert abs(r["nll"] - want) < 1e-12 and abs(r["perplexity"] - math.exp(want)) < 1e-9


def test_uniform_logits_give_the_vocabulary_size():
    r = perplexity(lambda w: np.zeros((len(w), 50)), list(range(40)), ctx=7, stride=3)
    assert abs(r["perplexity"] - 50) < 1e-9 and r["tokens"] == 39


def test_bad_windows_are_refused():
    for ctx, stride in ((1, 1), (4, 0), (4, 5)):
        with pytest.raises(InputError):
            list(windows(10, ctx, stride))
    with pytest.raises(InputError, match="at least 2 tokens"):
        perplexity(lambda w: np.zeros((len(w), 4)), [3])


@pytest.mark.skipif(not HAVE_TRANSFORMERS, reason="torch and transformers are not installed")
@pytest.mark.parametrize("ctx,stride", [(16, 8), (24, 24), (200, 64)])
def test_equals_transformers_documented_loop(ctx, stride):
    """transformers' "Perplexity of fixed-length models" loop, run with transformers in
    float64: labels masked to -100 before each window's new tokens, the window's mean loss
    weighted by the labels it scored. (The documentation's loop weights it by the unmasked
    labels minus one, which is one too few for every window after the first: their first
    label is masked already, so the shift drops nothing. The loss itself is unaffected.)"""
    import torch
    import transformers_oracle as oracle
    path = fixture_path("qwen3-bias-bf16-sharded")
    ids = qwen_np.load_tokenizer(path).encode(TEXT)
    hf = oracle.load_reference(path, "float64")
    nll_sum, n_tokens, prev_end = 0.0, 0, 0
    with torch.no_grad(), oracle.exact_float64():
        for begin in range(0, len(ids), stride):
            end = min(begin + ctx, len(ids))
            trg_len = end - prev_end
            input_ids = torch.tensor([ids[begin:end]])
            target = input_ids.clone()
            target[:, :-trg_len] = -100
            loss = hf(input_ids, labels=target).loss     # the mean over the labels it scored
            valid = int((target[:, 1:] != -100).sum())   # those: it shifts labels left by one
            nll_sum += float(loss) * valid
            n_tokens += valid
            prev_end = end
            if end == len(ids):
                break
    want = math.exp(nll_sum / n_tokens)
    ours = perplexity(qwen_np.load(path, dtype="float64").logits, ids, ctx, stride)
    assert ours["tokens"] == n_tokens
    assert abs(ours["perplexity"] - want) / want < 1e-6, (ours["perplexity"], want)


def test_the_command_line(tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text(TEXT, encoding="utf-8")
    assert main(["ppl", "-m", fixture_path("qwen2-tied-f32"), "--text", str(text), "--ctx", "16",
                 "--stride", "8", "--json"]) == 0
    import json
    r = json.loads(capsys.readouterr().out)
    model = qwen_np.load(fixture_path("qwen2-tied-f32"))
    want = perplexity(model.logits, model.tokenizer.encode(TEXT), 16, 8)
    assert r["perplexity"] == want["perplexity"] and r["tokens"] == want["tokens"]
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe\x00abc")
    assert main(["ppl", "-m", fixture_path("qwen2-tied-f32"), "--text", str(bad)]) == 1
    assert "not UTF-8 text" in capsys.readouterr().err
    assert main(["ppl", "-m", fixture_path("qwen2-tied-f32"), "--text",
                 str(tmp_path / "none.txt")]) == 1
    assert "none.txt: cannot read" in capsys.readouterr().err
