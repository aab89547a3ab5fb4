"""KL divergence against a saved base (qwen_np/oracle/kl_divergence.py): a hand computation on a
4-token vocabulary, a model against its own base, the statistics against plain NumPy from the
saved file, float32 against a float64 base, and the one-line errors."""

import json
import math

import numpy as np
import pytest

import qwen_np
from conftest import fixture_path
from qwen_np.apps.cli import main
from qwen_np.formats.safetensors import open_safetensors
from qwen_np.oracle.kl_divergence import kl_against, save_base, top_ids

MODEL = fixture_path("qwen2-tied-f32")      # V = 384
TEXT = ("def fibonacci(n):\n    if n <= 1:\n        return n\n    return fibonacci(n - 1) + "
        "fibonacci(n - 2)\nThe capital of France is Paris. Hello, world! 0123456789 ") * 2

# Three scored tokens over a vocabulary of 4: ids [0, 1, 2, 3], one window, row t predicts t + 1.
BASE = [[1 / 2, 1 / 4, 1 / 8, 1 / 8],
        [1 / 4, 1 / 4, 1 / 4, 1 / 4],
        [0.7, 0.1, 0.1, 0.1]]
NEW = [[1 / 8, 1 / 2, 1 / 4, 1 / 8],
       [1 / 2, 1 / 6, 1 / 6, 1 / 6],
       [0.7, 0.1, 0.1, 0.1]]
# KLD, every token kept (sum p log(p / q)):
#   row 0: 1/2 ln 4 + 1/4 ln(1/2) + 1/8 ln(1/2) + 0     = 5/8 ln 2        = 0.4332169878
#   row 1: 1/4 ln(1/2) + 3 * 1/4 ln(3/2)                = 3/4 ln 3 - ln 2 = 0.1308120...
#   row 2: identical rows                               = 0
# KLD, top 1 kept (the top token and the rest as one outcome):
#   row 0: top {0}: 1/2 ln(1/2 / 1/8) + 1/2 ln(1/2 / 7/8) = 1/2 ln(16/7)   = 0.4133392  (< full)
#   row 1: top {0} (a tie: the smaller id): 1/4 ln(1/2) + 3/4 ln(3/4 / 1/2)
#          = 3/4 ln 3 - ln 2, the full value: the tails (1/4 each, 1/6 each) are proportional
#   row 2: 0
# Δp (new minus base, the correct token): row 0 token 1: 1/2 - 1/4 = 1/4; row 1 token 2:
#   1/6 - 1/4 = -1/12; row 2 token 3: 0. RMS Δp = sqrt((1/16 + 1/144 + 0) / 3) = sqrt(10/432)
#   = 0.1521452 -> 15.21452 %.
# Same top token: row 0 base 0, new 1: no; row 1 base 0 (tie), new 0: yes; row 2: yes -> 2/3.
FULL_KLD = [5 / 8 * math.log(2), 3 / 4 * math.log(3) - math.log(2), 0.0]
TOP1_KLD = [1 / 2 * math.log(16 / 7), 3 / 4 * math.log(3) - math.log(2), 0.0]


def table_model(rows):
    def logits_of(window):
        return np.log(np.array(rows[:len(window)] + [rows[0]] * (len(window) - len(rows))))
    return logits_of


@pytest.mark.parametrize("k,want", [(4, FULL_KLD), (1, TOP1_KLD)])
def test_a_hand_computation(tmp_path, k, want):
    path = str(tmp_path / "base.safetensors")
    save_base(path, table_model(BASE), [0, 1, 2, 3], 4, 4, k, {"model": "hand"})
    _, stats, per = kl_against(path, table_model(NEW), [0, 1, 2, 3], 4, 4)
    assert np.allclose(per["kld"], want, rtol=0, atol=1e-12), (per["kld"], want)
    assert np.allclose(per["p_diff"], [1 / 4, -1 / 12, 0], rtol=0, atol=1e-12)
    assert per["same_top"].tolist() == [False, True, True]
    assert abs(stats["dp_rms_pct"] - 100 * math.sqrt(10 / 432)) < 1e-9
    assert abs(stats["same_top_pct"] - 200 / 3) < 1e-9
    assert abs(stats["kld_mean"] - sum(want) / 3) < 1e-12
    assert stats["kld_median"] == per["kld"][1]
    assert (stats["base_rest_mass_max"] == 0) == (k == 4)


def test_top_ids_is_a_stable_sort_cut_to_k():
    """Ties (many here: log-probs drawn from 5 values) go to the smaller id, as a full stable
    sort would give them."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        T, V = int(rng.integers(1, 6)), int(rng.integers(1, 30))
        k = int(rng.integers(1, V + 1))
        lp = rng.integers(-4, 1, (T, V)).astype(np.float64)
        assert (top_ids(lp, k) == np.argsort(-lp, axis=1, kind="stable")[:, :k]).all()


def ppl(tmp_path, capsys, *args, text=TEXT):
    path = tmp_path / "t.txt"
    path.write_text(text, encoding="utf-8")
    rc = main(["ppl", "-m", MODEL, "--text", str(path), "--ctx", "32", "--stride", "16", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_a_model_against_its_own_base_is_exactly_zero(tmp_path, capsys):
    base = str(tmp_path / "base.safetensors")
    rc, out, _ = ppl(tmp_path, capsys, "--save-logprobs", base, "--save-top-k", "16")
    assert rc == 0 and "base.safetensors: the base's log-probs of" in out
    rc, out, _ = ppl(tmp_path, capsys, "--kl-divergence", base, "--json", "--per-token")
    assert rc == 0
    r = json.loads(out)
    s = r["kl_divergence"]
    assert set(r["token_kld"]) == {0.0} and set(r["token_p_diff"]) == {0.0}
    assert s["kld_mean"] == s["kld_max"] == s["kld_p999"] == s["kld_median"] == 0.0
    assert s["same_top_pct"] == 100.0 and s["dp_rms_pct"] == 0.0 and s["ln_ppl_ratio"] == 0.0
    assert s["tokens"] == r["tokens"] and s["top_k"] == 16 and s["vocab"] == 384
    rc, out, _ = ppl(tmp_path, capsys, "--kl-divergence", base)             # the table
    assert rc == 0 and "Mean    KLD:   0.000000 ±   0.000000" in out
    assert "Same top p: 100.000 ± 0.000 %" in out and "RMS Δp    :   0.000000" in out


def test_the_statistics_against_numpy_from_the_saved_file(tmp_path, capsys):
    """A float64 base with every token kept (so the file holds the full distributions), a
    float32 run against it, and each statistic recomputed here from the file and the float32
    model's logits: llama.cpp's formulas as perplexity.cpp writes them."""
    base = str(tmp_path / "base.safetensors")
    assert ppl(tmp_path, capsys, "--dtype", "float64", "--save-logprobs", base,
               "--save-top-k", "1000")[0] == 0
    rc, out, _ = ppl(tmp_path, capsys, "--kl-divergence", base, "--json")
    assert rc == 0
    s = json.loads(out)["kl_divergence"]

    saved = open_safetensors(base)
    ids = saved["token_ids"].astype(int)
    T, V = saved["top_ids"].shape
    assert T == len(ids) - 1 and V == 384
    lb = np.empty((T, V))
    np.put_along_axis(lb, saved["top_ids"].astype(np.intp), saved["top_logprobs"], axis=1)
    assert np.all(np.isneginf(saved["rest_logprob"]))
    # the float32 model's logits for each scored token, over ppl's windows (ctx 32, stride 16)
    model = qwen_np.load(MODEL)
    rows, prev_end = [], 0
    for begin in range(0, len(ids), 16):
        end = min(begin + 32, len(ids))
        logits = np.asarray(model.logits(ids[begin:end].tolist()), np.float64)
        rows.append(logits[max(prev_end, begin + 1) - 1 - begin: end - 1 - begin])
        prev_end = end
        if end == len(ids):
            break
    x = np.concatenate(rows)
    assert x.shape == (T, V)
    ln = x - (x.max(1, keepdims=True) + np.log(np.exp(x - x.max(1, keepdims=True)).sum(1,
                                                                                   keepdims=True)))
    pb = np.exp(lb)
    kld = np.sum(pb * (lb - ln), axis=1)
    y = ids[1:]
    p_diff = np.exp(ln[np.arange(T), y]) - pb[np.arange(T), y]

    def mean_and_uncertainty(v):            # perplexity.cpp's mean_and_uncertainty
        f = np.sum(v) / len(v)
        return f, math.sqrt((np.sum(v * v) / len(v) - f * f) / (len(v) - 1))
    mean, unc = mean_and_uncertainty(kld)
    assert abs(s["kld_mean"] - mean) <= 1e-9 * mean and abs(s["kld_mean_unc"] - unc) <= 1e-3 * unc
    srt = np.sort(kld)

    def percentile(f):                      # perplexity.cpp's percentile lambda
        p = f * (len(srt) - 1)
        i = int(p)
        return (1 - (p - i)) * srt[i] + (p - i) * srt[min(i + 1, len(srt) - 1)]
    assert abs(s["kld_median"] - np.median(kld)) <= 1e-9 * mean
    assert abs(s["kld_p99"] - percentile(0.99)) <= 1e-9 * srt[-1]
    assert abs(s["kld_p999"] - percentile(0.999)) <= 1e-9 * srt[-1]
    assert abs(s["kld_max"] - srt[-1]) <= 1e-9 * srt[-1]
    mse, mse_unc = mean_and_uncertainty(p_diff ** 2)
    rms = math.sqrt(mse)
    assert abs(s["dp_rms_pct"] - 100 * rms) <= 1e-6 * 100 * rms
    assert abs(s["dp_rms_unc_pct"] - 100 * 0.5 / rms * mse_unc) <= 1e-3 * 100 * 0.5 / rms * mse_unc
    same = np.mean(np.argmax(ln, 1) == np.argmax(lb, 1))
    assert s["same_top_pct"] == 100 * same
    # float32 against the float64 reference: a tiny, positive divergence
    assert 0 < mean < 1e-8 and srt[0] >= 0 and s["same_top_pct"] == 100.0


def test_mismatches_and_bad_files_are_one_line_errors(tmp_path, capsys):
    base = str(tmp_path / "base.safetensors")
    assert ppl(tmp_path, capsys, "--save-logprobs", base, "--save-top-k", "8")[0] == 0
    rc, _, err = ppl(tmp_path, capsys, "--kl-divergence", base, text=TEXT + " more")
    assert rc == 1 and err.count("\n") == 1
    assert f"{base}: saved for other tokens" in err
    path = tmp_path / "t.txt"
    path.write_text(TEXT, encoding="utf-8")
    rc = main(["ppl", "-m", MODEL, "--text", str(path), "--ctx", "32", "--stride", "8",
               "--kl-divergence", base])
    err = capsys.readouterr().err
    assert rc == 1 and f"{base}: saved with --ctx 32 --stride 16, this run has --ctx 32 " \
                       f"--stride 8" in err
    not_base = fixture_path("qwen2-tied-f32/model.safetensors")
    rc, _, err = ppl(tmp_path, capsys, "--kl-divergence", not_base)
    assert rc == 1 and f"{not_base}: not a log-probs file" in err and err.count("\n") == 1
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    rc, _, err = ppl(tmp_path, capsys, "--kl-divergence", str(junk))
    assert rc == 1 and str(junk) in err and err.count("\n") == 1
    rc, _, err = ppl(tmp_path, capsys, "--kl-divergence", str(tmp_path / "none.safetensors"))
    assert rc == 1 and "none.safetensors" in err and err.count("\n") == 1
    with pytest.raises(SystemExit) as e:             # one or the other, not both
        ppl(tmp_path, capsys, "--kl-divergence", base, "--save-logprobs", base)
    assert e.value.code == 2
