"""`qwen-np quantize --method gptq`: runtime/calibration.py + apps/quantize.py, end to end."""

import importlib.util
import json
import os
import textwrap
import time

import numpy as np
import pytest

import qwen_np
from conftest import fixture_path, rel_err
from qwen_np.apps.cli import main
from qwen_np.apps.quantize import DEFAULT_CALIBRATION, quantize_folder
from qwen_np.errors import FormatError, InputError
from qwen_np.formats.safetensors import open_safetensors
from qwen_np.tensors.quantized import dequantize

SRC = fixture_path("qwen2-tied-f32")
FAST = dict(method="gptq", group_size=16, samples=4, seq_len=32)


def dequantized_twin(m):
    import copy
    twin = copy.deepcopy(m.weights)
    for layer in twin.layers:
        for name in ("q", "k", "v", "o", "gate", "up", "down"):
            setattr(layer, name, dequantize(getattr(layer, name)))
    return twin


@pytest.mark.parametrize("act_order,static", [(False, False), (True, False), (True, True)])
def test_gptq_checkpoint_loads_and_tracks_the_float_model(tmp_path, act_order, static):
    from qwen_np.model.forward import forward
    dst = str(tmp_path / "g")
    stats = quantize_folder(SRC, dst, act_order=act_order, static_groups=static, **FAST)
    assert stats["quantized"] == 14 and stats["samples"] == 4
    with open(os.path.join(dst, "config.json")) as f:
        qcfg = json.load(f)["quantization_config"]
    assert qcfg["desc_act"] == act_order and qcfg["static_groups"] == static
    assert qcfg["meta"]["method"] == "gptq"
    g_idx = open_safetensors(os.path.join(dst, "model.safetensors"))[
        "model.layers.0.mlp.down_proj.g_idx"]
    assert np.array_equal(np.sort(np.asarray(g_idx)), np.arange(len(g_idx)) // 16)
    ids = np.load(fixture_path("qwen2-tied-f32") + ".reference.npz")["ids_1"]
    m = qwen_np.load(dst, prepared_cache=False)
    assert rel_err(m.logits(ids), forward(m.config, dequantized_twin(m), m.backend, ids)) < 1e-5
    # a tiny random model at 4 bits g16 (RTN: 0.52): tracks, loosely; the real test is below
    assert rel_err(m.logits(ids), qwen_np.load(SRC, prepared_cache=False).logits(ids)) < 1.0


def test_gptq_layer_output_error_below_rtn_on_the_fixture(tmp_path):
    """The first layer's q_proj output on the calibration inputs: GPTQ's error below RTN's."""
    from qwen_np.apps.quantize import calibration_ids
    from qwen_np.runtime.calibration import calibration_samples
    from qwen_np.backends import get_backend
    quantize_folder(SRC, str(tmp_path / "g"), **FAST)
    quantize_folder(SRC, str(tmp_path / "r"), group_size=16)
    src = qwen_np.load(SRC, prepared_cache=False)
    samples = calibration_samples(calibration_ids(SRC, None), 4, 32, "text")
    be = get_backend("numpy")
    x = np.concatenate([be.rms_norm(be.embed(src.weights.embed, s),
                                    src.weights.layers[0].attn_norm, src.config.rms_norm_eps)
                        for s in samples])
    w = src.weights.layers[0].q
    errs = [np.linalg.norm(x @ (w - dequantize(qwen_np.load(str(tmp_path / k), prepared_cache=False)
                                               .weights.layers[0].q)).T) for k in "gr"]
    assert errs[0] < errs[1]


def test_errors_are_one_line(tmp_path, capsys):
    short = tmp_path / "short.txt"
    short.write_text("def f(): pass\n")
    with pytest.raises(InputError, match="shorter than one sample of --seq-len 512"):
        quantize_folder(SRC, str(tmp_path / "a"), method="gptq", calibration=str(short))
    with pytest.raises(InputError, match="apply to --method gptq"):
        quantize_folder(SRC, str(tmp_path / "b"), act_order=True)
    quantize_folder(SRC, str(tmp_path / "q"), group_size=16)
    with pytest.raises(FormatError, match="already quantized"):
        quantize_folder(str(tmp_path / "q"), str(tmp_path / "c"), **FAST)
    assert main(["quantize", SRC, str(tmp_path / "e"), "--method", "gptq",
                 "--calibration", str(short)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("qwen-np: error:") and "\n" not in err


def test_cli_gptq(tmp_path, capsys):
    assert main(["quantize", SRC, str(tmp_path / "g"), "--method", "gptq", "--group-size", "16",
                 "--samples", "2", "--seq-len", "16", "--asym", "--act-order",
                 "--damp", "0.05"]) == 0
    assert "by gptq" in capsys.readouterr().out
    with open(tmp_path / "g" / "quantize_config.json") as f:
        assert json.load(f)["damp_percent"] == 0.05


def test_builtin_calibration_text_states_its_licence():
    with open(DEFAULT_CALIBRATION, encoding="utf-8") as f:
        assert "Apache-2.0" in f.readline() + f.readline() + f.readline()


# --- GPTQ beats RTN where the paper says it should: 4 bits, g128, a real model's weights ---
# A real model cut to 2 layers has no meaningful perplexity (about 2.5 million: the final norm
# and LM head follow layer 24, not layer 2). So the first 2 layers are quantized from the
# GGUF's float32 dequantization (the float source), by RTN and by GPTQ, and put back into the
# whole 24-layer model (the other 22 layers: the GGUF's own weights, the same in all three);
# the held-out text's perplexity is reported, and the KL divergence from the float model's
# next-token distributions, which is what quantizing 2 layers of 24 moves measurably
# (perplexity moves by less than its noise on a few hundred tokens), must be lower for GPTQ.
#
# Why perplexity is not asserted, and why this stays out of CI (measured with 4 layers
# quantized, calibration 8 x 256 tokens, 511 scored tokens of textwrap.py and of
# statistics.py, the numba backend; perplexity float / RTN / GPTQ, mean KL RTN / GPTQ):
#   sym   textwrap    6.832 / 6.832 / 6.859   KL 0.0133 / 0.0160
#   sym   statistics  4.401 / 4.455 / 4.420   KL 0.0143 / 0.0116
#   asym  textwrap    6.832 / 6.878 / 6.915   KL 0.0081 / 0.0079
#   asym  statistics  4.401 / 4.438 / 4.450   KL 0.0074 / 0.0082
# The sign flips with the text and with sym/asym (the per-token NLL difference is within
# 0.8 standard errors in every case), and 4 layers already cost ~4.5 CPU-minutes (GPTQ
# ~30 CPU-seconds a layer, mostly down_proj's 4864-wide solve; scoring ~20 CPU-seconds per
# model per 512 tokens). A cause, seen layer by layer: a few samples are the first windows
# of the calibration text (README.md's prose), and GPTQ fits them at the held-out code's
# expense: layer 0's up_proj output error on textwrap.py, RTN 24.3, GPTQ 29.1 (on the
# calibration windows 24.8 vs 5.4; with damp 0.1, 19.9); down_proj 0.44 vs 0.56 (0.40 with
# damp 0.1); q_proj 4.1 vs 2.0. This test as it stands (2 layers, 16 x 256, 255 scored tokens):
# perplexity 8.657 / 8.540 / 8.721, KL mean 0.00707 / 0.00514, median 0.00216 / 0.00169;
# 180 CPU-seconds.

REAL = os.path.expanduser("~/.cache/qwen-np/Qwen2.5-Coder-0.5B-Instruct-Q4_K_M.gguf")
LAYERS = 2


def truncated_float_folder(dst: str, layers: int = 2) -> str:
    """The real GGUF's first `layers` decoder layers, dequantized to float32, as a Hugging
    Face folder (its real embeddings, weights and tokenizer)."""
    from qwen_np.formats.safetensors import write_safetensors
    from qwen_np.model.config import config_to_hf_dict
    from qwen_np.runtime.load import read_model
    from qwen_np.tensors.mapped import MappedQuantizedRows
    from qwen_np.tensors.quantized import QuantizedTensor
    cfg, tensors, make_tokenizer = read_model(REAL)
    keep = {}
    for name, t in tensors.items():
        if name.startswith("model.layers.") and int(name.split(".")[2]) >= layers:
            continue
        if isinstance(t, MappedQuantizedRows):          # an embedding table left in the file
            t = t.rows(np.arange(t.shape[0]))
        t = dequantize(t) if isinstance(t, QuantizedTensor) else np.asarray(t, np.float32)
        keep[name] = np.ascontiguousarray(t, np.float32)
    os.makedirs(dst)
    write_safetensors(os.path.join(dst, "model.safetensors"), keep, {"format": "pt"})
    config = dict(config_to_hf_dict(cfg), num_hidden_layers=layers, torch_dtype="float32")
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(config, f)
    make_tokenizer().save(os.path.join(dst, "tokenizer.json"))
    return dst


def log_softmax(z):
    z = np.asarray(z, np.float64)
    z = z - z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


@pytest.mark.real_model
@pytest.mark.skipif(not os.path.isfile(REAL), reason="run `qwen-np fetch` first")
@pytest.mark.skipif(os.environ.get("QWEN_NP_SLOW_TESTS") != "1",
                    reason="3 minutes on 2 cores: set QWEN_NP_SLOW_TESTS=1 (not in .ci/run)")
def test_gptq_beats_rtn_on_held_out_text(tmp_path):
    t0 = time.time()
    src = truncated_float_folder(str(tmp_path / "float"), LAYERS)
    t1 = time.time()
    quantize_folder(src, str(tmp_path / "rtn"), bits=4, group_size=128)
    t2 = time.time()
    stats = quantize_folder(src, str(tmp_path / "gptq"), bits=4, group_size=128, method="gptq",
                            samples=16, seq_len=256)       # the built-in calibration text
    t3 = time.time()
    backend = "numba" if importlib.util.find_spec("numba") else "numpy"
    full = qwen_np.load(REAL, backend=backend, prepared_cache=False)
    # held out: Python's own textwrap module (PSF licence), not in the calibration text
    with open(textwrap.__file__, encoding="utf-8") as f:
        ids = full.tokenizer.encode(f.read())[:256]
    logp, ppl = {}, {}
    for k in ("float", "rtn", "gptq"):
        part = qwen_np.load(str(tmp_path / k), backend="numpy", prepared_cache=False)
        for i in range(LAYERS):
            for n in ("q", "k", "v", "o", "gate", "up", "down"):
                w = getattr(part.weights.layers[i], n)
                w = np.asarray(w, np.float32) if isinstance(w, np.ndarray) else dequantize(w)
                setattr(full.weights.layers[i], n, full.backend.prepare(w))
        logp[k] = log_softmax(full.logits(ids))                          # [T, V]
        ppl[k] = float(np.exp(-logp[k][np.arange(len(ids) - 1), ids[1:]].mean()))
    kl = {k: (np.exp(logp["float"]) * (logp["float"] - logp[k])).sum(1) for k in ("rtn", "gptq")}
    t4 = time.time()
    print(f"\nperplexity {ppl}; KL mean {[float(kl[k].mean()) for k in kl]}, median "
          f"{[float(np.median(kl[k])) for k in kl]}; {stats['samples']} samples; seconds: "
          f"float folder {t1 - t0:.1f}, rtn {t2 - t1:.1f}, gptq {t3 - t2:.1f}, "
          f"evaluation {t4 - t3:.1f}")
    assert kl["gptq"].mean() < kl["rtn"].mean()
    assert np.median(kl["gptq"]) < np.median(kl["rtn"])


def test_calibration_is_true_sequential():
    """Each stage's inputs are those of the model with the earlier layers and stages already
    quantized: recomputed here with whole forward passes, the weights swapped in one by one."""
    from qwen_np.apps.quantize import calibration_ids, read_float_source
    from qwen_np.model.config import config_from_hf_dict
    from qwen_np.model.forward import forward
    from qwen_np.runtime.calibration import (STAGES, GPTQSettings, calibrate_gptq,
                                             calibration_samples)
    from qwen_np.tensors.gptq_solver import HessianSum, quantize_gptq
    config_json, tensors, _ = read_float_source(SRC)
    cfg = config_from_hf_dict(config_json, SRC)
    samples = calibration_samples(calibration_ids(SRC, None), 3, 16, "text")
    got, unreached = calibrate_gptq(cfg, dict(tensors), samples, GPTQSettings(group_size=16), SRC)
    assert unreached == 0
    m = qwen_np.load(SRC, prepared_cache=False)
    w = m.weights
    for i in range(cfg.num_hidden_layers):
        for traced, modules in STAGES:
            hs = None
            for ids in samples:
                rec = {}
                forward(m.config, w, m.backend, ids,
                        record=lambda n, x: rec.__setitem__(n, np.array(x)))
                x = rec[f"model.layers.{i}.{traced}"].reshape(len(ids), -1)
                hs = hs or HessianSum.zeros(x.shape[1])
                hs.add(x)
            for module, field in modules:
                r = quantize_gptq(np.asarray(getattr(w.layers[i], field), np.float32),
                                  hs.hessian(), 4, 16)
                mine = got[f"model.layers.{i}.{module}.weight"]
                assert np.array_equal(r.q, mine.q) and np.array_equal(r.scale, mine.scale)
                setattr(w.layers[i], field, r.solved())


@pytest.mark.parametrize("fixture", ["qwen2moe-step2-f32", "qwen3moe-allsparse-bf16"])
def test_moe_experts_calibrated_by_their_tokens(tmp_path, fixture):
    """Each expert from the tokens routed to it; one that no token reaches is rounded to
    nearest (counted); the checkpoint loads and tracks the float model."""
    from qwen_np.apps.quantize import read_float_source
    from qwen_np.tensors.rtn import quantize_rtn
    src = fixture_path(os.path.join("moe", fixture))
    few = quantize_folder(src, str(tmp_path / "few"), method="gptq", group_size=16, samples=1,
                          seq_len=2)
    assert few["rtn_experts"] > 0                   # 2 tokens reach at most a few experts
    many = quantize_folder(src, str(tmp_path / "many"), method="gptq", group_size=16,
                           samples=8, seq_len=64)
    assert many["rtn_experts"] < few["rtn_experts"]
    # an expert no token reached holds RTN's codes
    _, tensors, _ = read_float_source(src)
    q4 = open_safetensors(os.path.join(tmp_path, "few", "model.safetensors"))
    from qwen_np.formats.gptq import canonical_codes_to_gptq
    from qwen_np.tensors.dense import as_compute
    matches = 0
    for name in (n for n in tensors if ".experts." in n and n.endswith("up_proj.weight")):
        rtn = canonical_codes_to_gptq(*quantize_rtn(as_compute(tensors[name], "float32"), 4, 16),
                                      4, 16)
        matches += np.array_equal(np.asarray(q4[name[:-len("weight")] + "qweight"]),
                                  rtn["qweight"])
    assert matches >= few["rtn_experts"]
    ids = np.load(src + ".reference.npz")["ids_1"]
    m = qwen_np.load(str(tmp_path / "many"), prepared_cache=False)
    assert np.all(np.isfinite(m.logits(ids)))
    assert rel_err(m.logits(ids), qwen_np.load(src, prepared_cache=False).logits(ids)) < 1.0


def test_calibration_windows_spread_over_the_text():
    from qwen_np.runtime.calibration import calibration_samples
    ids = np.arange(1000)
    starts = [int(w[0]) for w in calibration_samples(ids, 4, 100, "t")]
    assert starts == [0, 300, 600, 900]                  # first at the start, last at the end
    assert [len(w) for w in calibration_samples(ids, 4, 100, "t")] == [100] * 4
    assert [int(w[0]) for w in calibration_samples(ids, 50, 100, "t")] == \
        list(range(0, 1000, 100))                        # as many as fit: back to back
    assert [int(w[0]) for w in calibration_samples(ids, 1, 100, "t")] == [0]
    with pytest.raises(InputError, match="t: the calibration text is 99 tokens"):
        calibration_samples(ids[:99], 1, 100, "t")
