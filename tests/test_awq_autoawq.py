"""qwen-np's AWQ against AutoAWQ 0.2.9's on the same tiny float models and calibration ids
(tests/fixtures/awq, made by tools/make_awq_fixture.py; no torch here).

Per fixture (group 32, 64 with v -> o scaling, 128; clipping on):
  - the searches: each group of linears' loss curve over the 20 exponents, the exponent chosen
    and the per-channel scales
  - the clipping bounds of v, o, gate, up and down
  - the checkpoint: codes (at least 99% equal; all equal where the clipping bound is), zero
    points, float16 scales, and the RMSNorm weights the scales were folded into
  - each projection's reconstruction error ||X W^T - X W_awq^T|| on the calibration inputs
    (W_awq: the checkpoint's weights brought back to the float model's frame by the scales)
    within 1% of AutoAWQ's
"""

import json
import os

import numpy as np
import pytest

import awq_tiny_model as tiny
from conftest import fixture_path
from qwen_np.formats.awq import unpack_awq
from qwen_np.formats.safetensors import open_safetensors
from qwen_np.model.config import config_from_hf_dict
from qwen_np.runtime.awq_calibration import AWQSettings, calibrate_awq

CASES = {"autoawq-gqa-g32": ("gqa", 32), "autoawq-mha-g64": ("mha", 64),
         "autoawq-gqa-g128": ("gqa", 128)}
MODULES = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj",
           "o": "self_attn.o_proj", "gate": "mlp.gate_proj", "up": "mlp.up_proj",
           "down": "mlp.down_proj"}
# each projection's input scale and output scale: the search (previous op) they come from
IN_SCALE = {"q": "input_layernorm", "k": "input_layernorm", "v": "input_layernorm",
            "o": "self_attn.v_proj", "gate": "post_attention_layernorm",
            "up": "post_attention_layernorm", "down": "mlp.up_proj"}
OUT_SCALE = {"v": "self_attn.v_proj", "up": "mlp.up_proj"}
PREV_OPS = ("input_layernorm", "self_attn.v_proj", "post_attention_layernorm", "mlp.up_proj")


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request):
    name = request.param
    variant, group = CASES[name]
    d = fixture_path(os.path.join("awq", name))
    ref = dict(np.load(d + ".reference.npz"))
    cfg = config_from_hf_dict(tiny.tiny_config(variant), "tiny")
    tensors = tiny.tiny_tensors(variant)
    calib = calibrate_awq(cfg, dict(tensors), list(ref["ids"]), AWQSettings(group), name)
    theirs = open_safetensors(os.path.join(d, "model.safetensors"))
    return name, group, cfg, tensors, ref, calib, theirs, d


def test_fixture_is_autoawqs_gemm_checkpoint(case):
    name, group, _, _, ref, _, theirs, d = case
    with open(os.path.join(d, "config.json")) as f:
        q = json.load(f)["quantization_config"]
    assert (q["quant_method"], q["version"], q["bits"], q["group_size"], q["zero_point"]) == \
        ("awq", "gemm", 4, group, True)
    # our unpacking is AutoAWQ's (unpack_awq + reverse_awq_order, in the generator)
    words = np.asarray(theirs["model.layers.0.self_attn.q_proj.qweight"])
    assert np.array_equal(unpack_awq(words), ref["codes.model.layers.0.self_attn.q_proj"])


def test_scale_searches_match(case):
    name, _, cfg, _, ref, calib, _, _ = case
    searched = 0
    for i in range(cfg.num_hidden_layers):
        for prev in PREV_OPS:
            key = f"{i}.{prev}"
            ours = calib.searches.get(f"model.layers.{i}.{prev}")
            assert (ours is None) == (f"scales.{key}" not in ref), key   # v -> o: same shapes
            if ours is None:
                continue
            searched += 1
            losses = ref[f"losses.{key}"]
            assert np.allclose(ours.losses, losses, rtol=1e-3), (key, ours.losses, losses)
            assert ours.ratio == np.argmin(losses) / 20, key
            assert np.allclose(ours.scales, ref[f"scales.{key}"], rtol=1e-5), key
    assert searched == (8 if "mha" in name else 6)


def same_bounds(case):
    """{module: bool [out, G]}: where our clipping bound is AutoAWQ's (unclipped q, k: all)."""
    _, _, cfg, _, ref, calib, theirs, _ = case
    same = {}
    for i in range(cfg.num_hidden_layers):
        for f, m in MODULES.items():
            mine = calib.clips.get(f"model.layers.{i}.{m}")
            same[(i, f)] = np.ones(calib.results[f"model.layers.{i}.{m}.weight"].zero.shape, bool) \
                if mine is None else np.isclose(mine, ref[f"clip.{i}.{m}"], rtol=1e-5)
    return same


def test_clipping_bounds_match(case):
    """A few groups go the other way: where both ends of a group are clipped, the zero point is
    round(m / (2m / 15)) = round(7.5) in exact arithmetic, so the last bit of float32 decides
    between zero 7 and 8, and with it that bound's error. Our float32 differs from torch's in
    the last bits (the scales, to 5e-7), so those ties need not fall alike."""
    _, _, cfg, _, ref, calib, _, _ = case
    same = total = 0
    for i in range(cfg.num_hidden_layers):
        for f in ("v", "o", "gate", "up", "down"):
            theirs = ref[f"clip.{i}.{MODULES[f]}"]
            ours = calib.clips[f"model.layers.{i}.{MODULES[f]}"]
            assert ours.shape == theirs.shape
            close = np.isclose(ours, theirs, rtol=1e-5)
            assert close.mean() >= 0.95, (i, f)
            same, total = same + close.sum(), total + close.size
    assert same >= 0.98 * total, f"{same} of {total} bounds equal"


def ours_and_theirs(case):
    """{(layer, field): ((q, zero, scale) ours, (q, zero, scale) AutoAWQ's)} as [out, in]."""
    _, _, cfg, _, _, calib, theirs, _ = case
    pairs = {}
    for i in range(cfg.num_hidden_layers):
        for f, m in MODULES.items():
            p = f"model.layers.{i}.{m}."
            r = calib.results[p + "weight"]
            t = (unpack_awq(np.asarray(theirs[p + "qweight"])).T,
                 unpack_awq(np.asarray(theirs[p + "qzeros"])).T,
                 np.asarray(theirs[p + "scales"]).T)
            pairs[(i, f)] = ((r.q, r.zero, r.scale), t)
    return pairs


def test_codes_zeros_and_scales_match(case):
    """At least 99% of the codes equal. In the groups whose clipping bound is AutoAWQ's, codes
    and zero points equal and float16 scales equal or one float16 step apart; the other codes
    lie in the groups a float tie clipped differently (test_clipping_bounds_match)."""
    name, group = case[0], case[1]
    same = same_bounds(case)
    steps = np.zeros(16, int)
    for key, ((q, z, s), (tq, tz, ts)) in ours_and_theirs(case).items():
        d = np.abs(q.astype(int) - tq.astype(int))
        steps += np.bincount(d.ravel(), minlength=16)
        inside = np.repeat(same[key], group, 1)                         # [out, in]
        assert np.mean(d[inside] == 0) >= 0.9999 and d[inside].max(initial=0) <= 1, key
        assert np.array_equal(z[same[key]], tz[same[key]]), key
        ulps = np.abs(s.view(np.int16).astype(int) - ts.view(np.int16).astype(int))
        assert ulps[same[key]].max(initial=0) <= 1 and np.mean(ulps[same[key]] == 0) >= 0.99, key
    total = steps.sum()
    print(f"\n{name}: codes equal {steps[0]}/{total} ({100 * steps[0] / total:.2f}%), "
          f"1 step apart {steps[1]}, 2 steps {steps[2]}, more {steps[3:].sum()}")
    assert steps[0] >= 0.99 * total and steps[3:].sum() == 0


def test_folded_norms_match(case):
    _, _, cfg, _, _, calib, theirs, _ = case
    for i in range(cfg.num_hidden_layers):
        for n in ("input_layernorm", "post_attention_layernorm"):
            name = f"model.layers.{i}.{n}.weight"
            assert np.allclose(calib.folded[name], np.asarray(theirs[name], np.float32),
                               rtol=1e-5), name


def float_inputs(cfg, tensors, ids):
    """{(layer, field): X [N, in]}: the float model's input to each projection on ids."""
    from qwen_np.backends import get_backend
    from qwen_np.model.forward import forward
    from qwen_np.model.weights import build_weights
    be = get_backend("numpy", "float32")
    w = build_weights(cfg, tensors, be.dtype, "tiny")
    traced = {"input_layernorm": ("q", "k", "v"), "self_attn.o_proj.input": ("o",),
              "post_attention_layernorm": ("gate", "up"), "mlp.act": ("down",)}
    xs = {}
    for sample in ids:
        def record(name, x):
            parts = name.split(".", 3)                       # model.layers.<i>.<inside>
            for f in traced.get(parts[-1], ()) if len(parts) == 4 else ():
                xs.setdefault((int(parts[2]), f), []).append(np.asarray(x).reshape(len(sample), -1))
        forward(cfg, w, be, sample, record=record)
    return {k: np.concatenate(v) for k, v in xs.items()}


def in_float_frame(q, zero, scale, scales_of, f):
    """The checkpoint's weight [out, in] brought back to the float model's: its input columns
    divided by the input's AWQ scales, its rows times the output's (v -> o, up -> down)."""
    g = q.shape[1] // scale.shape[1]
    w = np.repeat(scale.astype(np.float32), g, 1) * (q.astype(np.float32) - np.repeat(zero, g, 1))
    if IN_SCALE[f] in scales_of:
        w = w / scales_of[IN_SCALE[f]]
    if OUT_SCALE.get(f) in scales_of:
        w = w * scales_of[OUT_SCALE[f]][:, None]
    return w


def test_reconstruction_error_within_one_percent_of_autoawqs(case):
    name, _, cfg, tensors, ref, calib, _, _ = case
    xs = float_inputs(cfg, tensors, ref["ids"])
    pairs = ours_and_theirs(case)
    report = []
    for (i, f), (ours, theirs) in pairs.items():
        w = tensors[f"model.layers.{i}.{MODULES[f]}.weight"]
        x = xs[(i, f)]
        our_s = {p: calib.searches[f"model.layers.{i}.{p}"].scales for p in PREV_OPS
                 if f"model.layers.{i}.{p}" in calib.searches}
        their_s = {p: ref[f"scales.{i}.{p}"] for p in PREV_OPS if f"scales.{i}.{p}" in ref}
        e_ours = np.linalg.norm(x @ (w - in_float_frame(*ours, our_s, f)).T)
        e_theirs = np.linalg.norm(x @ (w - in_float_frame(*theirs, their_s, f)).T)
        report.append(f"{i}.{f} {e_ours / e_theirs - 1:+.1e}")
        assert abs(e_ours / e_theirs - 1) < 0.01, (i, f, e_ours, e_theirs)
    print(f"\n{name}: relative difference of the reconstruction error: {', '.join(report)}")
