"""Traces and their diff: qwen-np's float64 trace against one recorded from transformers in
float64 (tools/trace_transformers.py), a perturbed weight found in its layer, the real GGUF's
float32 trace against its float64 one, and the files and filters."""

import os
import subprocess
import sys

import numpy as np
import pytest

import qwen_np
from conftest import FIXTURE_MODELS, FIXTURES, HAVE_TRANSFORMERS, fixture_path
from qwen_np.apps.cli import main
from qwen_np.oracle.trace import compare_traces, load_trace, save_trace, trace

TOOLS = os.path.join(os.path.dirname(FIXTURES), "..", "tools")
IDS = [1, 17, 42, 99, 5, 64, 7, 11, 200]
LAYER_NAMES = ["input_layernorm", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
               "self_attn.q_rope", "self_attn.k_rope", "self_attn.o_proj.input",
               "self_attn.o_proj", "attn_residual", "post_attention_layernorm",
               "mlp.gate_proj", "mlp.up_proj", "mlp.act", "mlp.down_proj"]


def expected_names(n_layers, qk_norm=False):
    names = ["model.embed_tokens"]
    for i in range(n_layers):
        layer = list(LAYER_NAMES)
        if qk_norm:
            layer[4:4] = ["self_attn.q_norm", "self_attn.k_norm"]
        names += [f"model.layers.{i}.{n}" for n in layer] + [f"model.layers.{i}"]
    return names + ["model.norm", "lm_head"]


@pytest.mark.parametrize("name", FIXTURE_MODELS + ["qwen1/qwen1-f32-ntk-logn"])
def test_names_and_order_are_the_documented_ones(name):
    model = qwen_np.load(fixture_path(name))
    t = trace(model, IDS)
    assert list(t) == expected_names(model.config.num_hidden_layers, model.config.qk_norm)
    assert np.array_equal(t["lm_head"], model.logits(IDS))
    T, H, Dh = len(IDS), model.config.num_attention_heads, model.config.head_dim
    assert t["model.layers.0.self_attn.q_rope"].shape == (T, H, Dh)
    assert t["model.layers.0.mlp.act"].shape == (T, model.config.intermediate_size)


@pytest.mark.skipif(not HAVE_TRANSFORMERS, reason="torch and transformers are not installed")
@pytest.mark.parametrize("name", FIXTURE_MODELS)
def test_float64_trace_equals_transformers_in_float64(name):
    sys.path.insert(0, TOOLS)
    import transformers_oracle as oracle
    from trace_transformers import trace_transformers
    reference = oracle.load_reference(fixture_path(name), "float64")
    with oracle.exact_float64():
        theirs = trace_transformers(reference, IDS)
    ours = trace(qwen_np.load(fixture_path(name), dtype="float64"), IDS)
    assert set(theirs) == set(ours)
    rows = compare_traces(ours, theirs, rtol=1e-10)
    assert len(rows) == len(ours) and all(r["ok"] for r in rows), \
        [(r["name"], r["max_rel"]) for r in rows if not r["ok"]]


def test_a_perturbed_weight_is_found_in_its_layer(tmp_path, capsys):
    model = qwen_np.load(fixture_path("qwen2-tied-f32"))
    base = trace(model, IDS)
    up = np.array(model.weights.layers[1].up)
    up[3, 5] += 0.5
    model.weights.layers[1].up = up
    bent = trace(model, IDS)
    a, b = str(tmp_path / "a.npz"), str(tmp_path / "b.safetensors")
    save_trace(a, bent, {"ids": IDS})
    save_trace(b, base, {"ids": IDS})
    assert main(["compare", a, b]) == 1
    out = capsys.readouterr().out
    assert "diverges at model.layers.1.mlp.up_proj (position 0)" in out
    assert main(["compare", b, b]) == 0
    assert "all 33 tensors within" in capsys.readouterr().out


def test_trace_files_keep_names_order_and_identity(tmp_path, capsys):
    out = str(tmp_path / "t.safetensors")
    assert main(["trace", "-m", fixture_path("qwen2-untied-f16"), "-p", "def f(x):", "-o", out,
                 "--layers", "-1", "--tensors", "*.mlp.*"]) == 0
    tensors, meta = load_trace(out)
    assert list(tensors) == [f"model.layers.1.mlp.{n}" for n in
                             ("gate_proj", "up_proj", "act", "down_proj")]
    tok = qwen_np.load_tokenizer(fixture_path("qwen2-untied-f16"))
    assert meta["ids"] == tok.encode("def f(x):")
    assert "model.safetensors" in meta["model"]["sha256"] and \
        len(meta["model"]["sha256"]["model.safetensors"]) == 64
    assert meta["model"]["config"]["num_hidden_layers"] == 2


def test_a_callback_streams_and_keeps_nothing():
    model = qwen_np.load(fixture_path("qwen2-tied-f32"))
    seen = []
    kept = trace(model, IDS, layers=[0], callback=lambda n, a: seen.append((n, a.shape)))
    assert kept == {}
    assert [n for n, _ in seen] == [n for n in expected_names(2) if not n.startswith(
        "model.layers.1")]


def test_bad_arguments_are_one_line_errors(tmp_path, capsys):
    assert main(["compare", str(tmp_path / "missing.npz"), str(tmp_path / "x.npz")]) == 1
    assert "missing.npz: no such file" in capsys.readouterr().err
    assert main(["trace", "-m", fixture_path("qwen2-tied-f32"), "-p", "hi", "-o",
                 str(tmp_path / "t.txt")]) == 1
    assert "a trace is written as .npz or .safetensors" in capsys.readouterr().err
    assert main(["trace", "-m", fixture_path("qwen2-tied-f32"), "-p", "hi", "-o",
                 str(tmp_path / "t.npz"), "--layers", "0,7"]) == 1
    assert "the model has 2" in capsys.readouterr().err


def test_the_real_gguf_float32_and_float64_traces():
    """rtol 1e-3 holds between the float32 and float64 traces of the real model, every
    tensor of every layer; at 1e-12 they are reported as diverging."""
    from qwen_np.apps.fetch import default_model_path, is_fetched
    if not is_fetched():
        pytest.skip("run `qwen-np fetch` first")
    ids = qwen_np.load_tokenizer(default_model_path()).encode("def fibonacci(n):")
    t32 = trace(qwen_np.load(default_model_path()), ids)
    t64 = trace(qwen_np.load(default_model_path(), dtype="float64"), ids)
    assert all(r["ok"] for r in compare_traces(t32, t64, rtol=1e-3))
    strict = compare_traces(t32, t64, rtol=1e-12)
    assert not all(r["ok"] for r in strict)
    assert set(t32) == set(t64) and len(t32) == 1 + 24 * 15 + 2


def test_trace_transformers_command_line(tmp_path):
    if not HAVE_TRANSFORMERS:
        pytest.skip("torch and transformers are not installed")
    out = str(tmp_path / "hf.npz")
    r = subprocess.run([sys.executable, os.path.join(TOOLS, "trace_transformers.py"), "-m",
                        fixture_path("qwen2-tied-f32"), "-p", "def f(x):", "-o", out],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    theirs, meta = load_trace(out)
    assert meta["dtype"] == "float32" and len(theirs) == 33
    ours = str(tmp_path / "ours.npz")
    assert main(["trace", "-m", fixture_path("qwen2-tied-f32"), "-p", "def f(x):", "-o", ours]) == 0
    assert main(["compare", ours, out, "--rtol", "1e-4"]) == 0


def test_files_with_odd_contents_compare_without_a_traceback(tmp_path, capsys):
    """Another tool's trace may hold scalars, strings or empty arrays under a name."""
    a, b = str(tmp_path / "a.npz"), str(tmp_path / "b.npz")
    np.savez(a, s=np.float32(1.0), t=np.array(["x"]), e=np.zeros((0, 3)), v=np.ones((2, 3)),
             **{"qwen_np.trace": np.array("{not json")})
    np.savez(b, s=np.float32(1.5), t=np.array(["x"]), e=np.zeros((0, 3)), v=np.ones((2, 3)))
    assert main(["compare", a, b]) == 1
    out = capsys.readouterr().out
    assert "diverges at s (position 0)" in out and "not numbers" in out
    assert load_trace(a)[1] == {}
    with open(str(tmp_path / "c.npz"), "wb") as f:
        f.write(b"PK\x03\x04 not a zip")
    assert main(["compare", str(tmp_path / "c.npz"), b]) == 1
    assert "not a readable .npz" in capsys.readouterr().err
