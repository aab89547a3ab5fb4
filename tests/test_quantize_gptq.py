"""`qwen-np quantize --method gptq`: runtime/calibration.py + apps/quantize.py, end to end."""

import importlib.util
import json
import os
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


# --- GPTQ beats RTN where the paper says it should: 4 bits, g128, the real model ---
# The whole real model (the GGUF dequantized to float32: every decoder projection of its 24
# layers) quantized to 4 bits g128 sym by RTN and by GPTQ, and scored by perplexity on
# held-out text. Calibration and held-out text are Python standard-library modules (PSF
# licence; disjoint lists), code both, as the paper calibrates on one corpus (C4) and scores
# on others. Measured (BENCHMARKS.md, "GPTQ against RTN on held-out code"; 4,088 held-out
# tokens, ctx 512 without overlap; z: RTN's per-token NLL above GPTQ's, paired):
#   float 6.710, RTN 7.531 (+12.2%); GPTQ 8 x 512 damp 0.01: 7.382 (z 2.0);
#   16 x 512 damp 0.01: 7.168 (z 5.2); 32 x 512 damp 0.01: 7.197 (z 4.8);
#   8 x 512 damp 0.1: 7.221 (z 4.7), the setting here (the cheapest with a margin).
# This test as it stands (the first 2,044 held-out tokens, all of typing.py): float 7.931,
# RTN 9.0625, GPTQ 8.5494, z 4.4; GPTQ 611 s and scoring 241 s on 2 vCPUs shared with
# another job.
# With few calibration tokens GPTQ fits them too closely (a 4864-wide down_proj from 4,096
# tokens): a larger dampening, or more tokens, is what the margin needs. And the calibration
# text matters: on the built-in text (the project's README prose and source), 8 x 512 tokens,
# GPTQ's perplexity on other stdlib code was above RTN's (9.25 against 9.16 on the quality
# table's text), its KL divergence barely below (0.130 against 0.136).

REAL = os.path.expanduser("~/.cache/qwen-np/Qwen2.5-Coder-0.5B-Instruct-Q4_K_M.gguf")
LAYERS = 2                 # the AWQ test's cut (tests/test_quantize_awq.py)


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


HELD_OUT_MODULES = ["typing.py", "json/decoder.py", "json/encoder.py", "tokenize.py", "ast.py",
                    "inspect.py"]            # none of them in the calibration modules
GPTQ_SAMPLES = 8               # x 512 tokens
GPTQ_DAMP = 0.1
HELD_OUT_TOKENS = 2048


def stdlib_texts():
    """(calibration text, held-out text): tools/quality_table.py's calibration modules (its
    CALIBRATION_FILES), and HELD_OUT_MODULES."""
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tools"))
    from quality_table import CALIBRATION_FILES, STDLIB_FILES, stdlib_text
    assert not set(HELD_OUT_MODULES) & set(CALIBRATION_FILES + STDLIB_FILES)
    return stdlib_text(CALIBRATION_FILES)[0], stdlib_text(HELD_OUT_MODULES)[0]


def real_float_tensors():
    """(config, every tensor of the real GGUF dequantized to float32 under its Hugging Face
    name, tokenizer)."""
    from qwen_np.runtime.load import read_model
    from qwen_np.tensors.mapped import MappedQuantizedRows
    from qwen_np.tensors.quantized import QuantizedTensor
    cfg, tensors, make_tokenizer = read_model(REAL)
    out = {}
    for name, t in tensors.items():
        if isinstance(t, MappedQuantizedRows):          # an embedding table left in the file
            t = t.rows(np.arange(t.shape[0]))
        t = dequantize(t) if isinstance(t, QuantizedTensor) else np.asarray(t, np.float32)
        out[name] = np.ascontiguousarray(t, np.float32)
    return cfg, out, make_tokenizer()


@pytest.mark.real_model
@pytest.mark.skipif(not os.path.isfile(REAL), reason="run `qwen-np fetch` first")
def test_gptq_beats_rtn_perplexity_on_held_out_text():
    from qwen_np.oracle.perplexity import perplexity
    from qwen_np.runtime.calibration import GPTQSettings, calibrate_gptq, calibration_samples
    from qwen_np.tensors.rtn import quantize_rtn, rtn_to_canonical
    t0 = time.time()
    cal_text, held_out = stdlib_texts()
    cfg, tensors, tok = real_float_tensors()
    samples = calibration_samples(tok.encode(cal_text), GPTQ_SAMPLES, 512, "stdlib")
    fields = {"self_attn.q_proj": "q", "self_attn.k_proj": "k", "self_attn.v_proj": "v",
              "self_attn.o_proj": "o", "mlp.gate_proj": "gate", "mlp.up_proj": "up",
              "mlp.down_proj": "down"}
    names = [f"model.layers.{i}.{m}.weight" for i in range(cfg.num_hidden_layers)
             for m in fields]
    rtn = {n: rtn_to_canonical(*quantize_rtn(tensors[n], 4, 128, True), 4, 128) for n in names}
    t1 = time.time()
    settings = GPTQSettings(bits=4, group_size=128, damp_percent=GPTQ_DAMP)
    got, _ = calibrate_gptq(cfg, tensors, samples, settings, "stdlib")
    gptq = {n: r.to_quantized() for n, r in got.items()}
    del tensors, got
    t2 = time.time()
    backend = "numba" if importlib.util.find_spec("numba") else "numpy"
    m = qwen_np.load(REAL, backend=backend, prepared_cache=False)
    ids = m.tokenizer.encode(held_out)[:HELD_OUT_TOKENS]
    nll = {}
    for k, qs in (("rtn", rtn), ("gptq", gptq)):
        for n in names:
            i, module = int(n.split(".")[2]), n.split(".", 3)[3][:-len(".weight")]
            setattr(m.weights.layers[i], fields[module], m.backend.prepare(qs[n]))
        nll[k] = perplexity(m.logits, ids, 512, 512, per_token=True)
    ppl = {k: r["perplexity"] for k, r in nll.items()}
    d = -np.array(nll["rtn"]["token_logprobs"]) + np.array(nll["gptq"]["token_logprobs"])
    z = d.mean() / (d.std() / np.sqrt(len(d)))        # RTN's NLL above GPTQ's, per token
    print(f"\nperplexity over {len(d)} held-out tokens: RTN {ppl['rtn']:.4f}, GPTQ "
          f"{ppl['gptq']:.4f} (paired z {z:.2f}); GPTQ calibrated on "
          f"{len(samples)} x 512 tokens; seconds: read + RTN {t1 - t0:.0f}, GPTQ {t2 - t1:.0f}, "
          f"evaluation {time.time() - t2:.0f}")
    assert ppl["gptq"] < ppl["rtn"]


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
