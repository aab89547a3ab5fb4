"""qwen-np's GPTQ (runtime/calibration.py over tensors/gptq_solver.py) against GPTQModel 7.7.0's,
on the same tiny model, the same calibration token ids and the same settings
(tests/fixtures/gptq_compare, made by tools/make_gptq_compare_fixture.py, whose docstring says
which of GPTQModel's options were set to make it the classic algorithm).

GPTQModel's checkpoint is read through qwen-np's GPTQ reader (formats/gptq.py); qwen-np's GPTQ
runs here, without torch. Per case:
  - the codes are equal for at least 99% of the weights, the rest one code step apart: near-ties
    that float rounding decides (GPTQModel solves in float32, qwen-np in float64; a code decided
    otherwise moves the error feedback of the rest of its row, and the later stages' inputs)
  - every scale is within one float16 step of GPTQModel's, the zero points are equal
  - each projection's (linear layer's) output error ||W X^T - Q X^T|| is within 1% of
    GPTQModel's, where X are that projection's calibration inputs as qwen-np's own forward pass
    computes them (the model with qwen-np's quantized earlier stages), the same X for both Q
and a deliberately different setting (dampening 0.1 instead of 0.01; asymmetric instead of
symmetric) breaks the 99%.
"""

from __future__ import annotations

import functools
import json
import os
from typing import NamedTuple

import numpy as np
import pytest

from conftest import fixture_path
from qwen_np.formats.gptq import gptq_to_canonical
from qwen_np.formats.safetensors import open_safetensors
from qwen_np.tensors.dense import as_compute
from qwen_np.tensors.quantized import dequantize, unpack_all_codes

FIXTURE = fixture_path("gptq_compare")
SOURCE = os.path.join(FIXTURE, "source")
CASES = sorted(d for d in os.listdir(FIXTURE) if d.startswith("gptqmodel-"))
MODULES = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]


class Quantized(NamedTuple):
    """One matrix of GPTQModel's checkpoint, in the terms of qwen-np's GPTQResult."""
    q: np.ndarray           # uint8 [out, in] codes, in the input's order
    zero: np.ndarray        # uint8 [out, G]
    scale: np.ndarray       # float16 [out, G]
    g_idx: np.ndarray       # int32 [in]
    weight: np.ndarray      # float32 [out, in], what the codes stand for


def settings_of(case: str, **change):
    """qwen-np's GPTQSettings from GPTQModel's quantize_config.json (`change` overrides)."""
    from qwen_np.runtime.calibration import GPTQSettings
    with open(os.path.join(FIXTURE, case, "quantize_config.json")) as f:
        qc = json.load(f)
    fields = dict(bits=qc["bits"], group_size=qc["group_size"], sym=qc["sym"],
                  act_order=qc["desc_act"], damp_percent=qc["meta"]["damp_percent"],
                  static_groups=qc["meta"]["static_groups"])
    return GPTQSettings(**{**fields, **change})


@functools.lru_cache(maxsize=None)
def source():
    """(config, float tensors, the calibration samples) of the fixture's float model."""
    from qwen_np.apps.quantize import read_float_source
    from qwen_np.model.config import config_from_hf_dict
    config_json, tensors, _ = read_float_source(SOURCE)
    ids = np.load(os.path.join(FIXTURE, "calibration_ids.npy")).astype(np.int64)  # [16, 64]
    return config_from_hf_dict(config_json, SOURCE), tensors, list(ids)


@functools.lru_cache(maxsize=None)
def qwen_np_gptq(settings):
    """{weight name: GPTQResult} of qwen-np's GPTQ of the fixture's model with `settings`."""
    from qwen_np.runtime.calibration import calibrate_gptq
    cfg, tensors, samples = source()
    results, unreached = calibrate_gptq(cfg, dict(tensors), samples, settings, SOURCE)
    assert unreached == 0
    return results


@functools.lru_cache(maxsize=None)
def gptqmodel_gptq(case: str):
    """{weight name: Quantized} of GPTQModel's checkpoint, read by formats/gptq.py into the
    canonical form and unpacked from it."""
    cfg, tensors, _ = source()
    s = settings_of(case)
    parts = open_safetensors(os.path.join(FIXTURE, case, "model.safetensors"))
    out = {}
    for i in range(cfg.num_hidden_layers):
        for m in MODULES:
            name = f"model.layers.{i}.{m}"
            shape = tensors[name + ".weight"].shape
            qt = gptq_to_canonical(name, *(np.asarray(parts[f"{name}.{p}"])
                                           for p in ("qweight", "qzeros", "scales", "g_idx")),
                                   s.bits, s.group_size, v2=False, shape=shape)
            q = unpack_all_codes(qt, slice(None))                        # [out, in], code order
            if qt.perm is not None:                                      # act-order: input order
                unsorted = np.empty_like(q)
                unsorted[:, qt.perm] = q
                q = unsorted
            scale = np.asarray(qt.scale, np.float16)                     # [out, G]
            zero = np.rint(-qt.offset.astype(np.float32) / scale.astype(np.float32))
            out[name + ".weight"] = Quantized(q, zero.astype(np.uint8), scale,
                                              np.asarray(parts[f"{name}.g_idx"]), dequantize(qt))
    return out


@functools.lru_cache(maxsize=None)
def calibration_inputs(settings):
    """{weight name: X [N, in] float64}: each projection's inputs over all samples, from
    qwen-np's forward pass of the model whose projections are qwen-np's GPTQ (each stage's
    input depends only on the stages before it, so this is what the calibration saw)."""
    import qwen_np
    from qwen_np.model.forward import forward
    from qwen_np.runtime.calibration import STAGES
    results = qwen_np_gptq(settings)
    cfg, _, samples = source()
    m = qwen_np.load(SOURCE, backend="numpy", prepared_cache=False)
    fields = {module: field for _, modules in STAGES for module, field in modules}
    for name, r in results.items():            # as calibrate_gptq puts them back
        i, module = int(name.split(".")[2]), ".".join(name.split(".")[3:5])
        setattr(m.weights.layers[i], fields[module], r.solved())
    seen = {}
    for ids in samples:
        forward(m.config, m.weights, m.backend, ids,
                record=lambda n, x: seen.setdefault(n, []).append(np.array(x, np.float64)))
    xs = {}
    for i in range(cfg.num_hidden_layers):
        for traced, modules in STAGES:
            x = np.concatenate([a.reshape(len(a), -1) for a in seen[f"model.layers.{i}.{traced}"]])
            for module, _ in modules:
                xs[f"model.layers.{i}.{module}.weight"] = x                # [N, in]
    return xs


def code_split(results, theirs):
    """(equal, one step apart, further apart) counts of codes over every projection."""
    split = np.zeros(3, np.int64)
    for name, r in results.items():
        d = np.abs(r.q.astype(np.int16) - theirs[name].q)                 # [out, in]
        split += [(d == 0).sum(), (d == 1).sum(), (d > 1).sum()]
    return tuple(int(n) for n in split)


@pytest.mark.parametrize("case", CASES)
def test_codes_match_gptqmodel(case):
    results, theirs = qwen_np_gptq(settings_of(case)), gptqmodel_gptq(case)
    assert sorted(results) == sorted(theirs)
    equal, one, more = code_split(results, theirs)
    total = equal + one + more
    print(f"\n{case}: codes equal {equal}/{total} ({equal / total:.4%}), one step apart {one}, "
          f"further {more}")
    for name, r in results.items():
        assert np.array_equal(r.g_idx, theirs[name].g_idx), name      # act-order's groups
    assert equal >= 0.99 * total
    assert more == 0


@pytest.mark.parametrize("case", CASES)
def test_scales_and_zeros_match_gptqmodel(case):
    """Scales within one float16 step (each side rounds its exact scale to float16 for the
    file: GPTQModel's float32 one, qwen-np's float64 one), zero points equal."""
    results, theirs = qwen_np_gptq(settings_of(case)), gptqmodel_gptq(case)
    n = exact = within = zeros_equal = 0
    for name, r in results.items():
        ours, theirs16 = r.scale.astype(np.float32), theirs[name].scale.astype(np.float32)
        step = np.spacing(np.maximum(np.abs(ours), np.abs(theirs16)).astype(np.float16))
        n += ours.size
        exact += int((ours == theirs16).sum())
        within += int((np.abs(ours - theirs16) <= step.astype(np.float32)).sum())
        zeros_equal += int((r.zero == theirs[name].zero).sum())
    print(f"\n{case}: scales equal {exact}/{n}, within one float16 step {within}/{n}; "
          f"zero points equal {zeros_equal}/{n}")
    assert within == n
    assert zeros_equal >= 0.99 * n


@pytest.mark.parametrize("case", CASES)
def test_output_error_within_one_percent_of_gptqmodel(case):
    """Per projection, both checkpoints' floats against the float weight on the same X."""
    settings = settings_of(case)
    results, theirs = qwen_np_gptq(settings), gptqmodel_gptq(case)
    xs = calibration_inputs(settings)
    _, tensors, _ = source()
    ratios = {}
    for name, r in results.items():
        w, x = as_compute(tensors[name], "float64"), xs[name]              # [out, in], [N, in]
        ours = np.linalg.norm(x @ (w - r.dequantize()).T)
        gptqmodel = np.linalg.norm(x @ (w - theirs[name].weight).T)
        ratios[name] = ours / gptqmodel
    print(f"\n{case}: ||WX - QX|| qwen-np / GPTQModel - 1: " +
          ", ".join(f"{n.split('.')[2]}.{n.split('.')[4]} {v - 1:+.1e}" for n, v in ratios.items()))
    assert all(abs(v - 1) <= 0.01 for v in ratios.values()), ratios


@pytest.mark.parametrize("change", [dict(damp_percent=0.1), dict(sym=False)])
def test_a_different_setting_breaks_the_match(change):
    """The comparison can fail: qwen-np with another setting than GPTQModel's."""
    case = "gptqmodel-4bit-g32-sym"
    equal, one, more = code_split(qwen_np_gptq(settings_of(case, **change)), gptqmodel_gptq(case))
    assert equal < 0.99 * (equal + one + more)
