"""Qwen2-MoE and Qwen3-MoE against transformers' outputs committed in tests/fixtures/moe
(made by tools/make_moe_fixtures.py), on both CPU backends; the stacked expert layout; that
only the chosen experts are read; and the MoE config's errors."""

import importlib.util
import json
import os
import shutil

import numpy as np
import pytest

import qwen_np
from conftest import fixture_path, rel_err
from qwen_np.model.kv_cache import new_kv_cache
from qwen_np.errors import FormatError
from qwen_np.formats.safetensors import open_safetensors
from qwen_np.model.forward import forward
from qwen_np.model.mlp import route

BACKENDS = ["numpy"] + (["numba"] if importlib.util.find_spec("numba") else [])
MOE = ["moe/qwen2moe-step2-f32", "moe/qwen3moe-headdim24-bf16-sharded"]


def reference(name):
    return np.load(fixture_path(name) + ".reference.npz")


def load(name, backend="numpy", dtype="float32", path=None):
    return qwen_np.load(path or fixture_path(name), backend=backend, dtype=dtype,
                        prepared_cache=False)


def test_the_fixtures_are_what_the_tests_claim():
    a, b = load(MOE[0]).config, load(MOE[1]).config
    assert (a.model_type, a.sparse_layers, a.norm_topk_prob, a.num_experts) == \
        ("qwen2_moe", (1, 3), False, 8)
    assert a.shared_expert_intermediate_size == 24 and a.qkv_bias
    assert (b.model_type, b.sparse_layers, b.norm_topk_prob, b.num_experts_per_tok) == \
        ("qwen3_moe", (0, 2), True, 3)
    assert b.head_dim == 24 and b.shared_expert_intermediate_size == 0 and b.qk_norm


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", MOE)
def test_float32_logits_match_transformers(name, backend):
    ref = reference(name)
    model = load(name, backend)
    for k in range(3):
        logits = model.logits(ref[f"ids_{k}"])
        assert logits.dtype == np.float32
        assert rel_err(logits, ref[f"logits32_{k}"]) < 1e-5
        assert ref[f"logits32_{k}"].std() > 0.5  # the fixture is not flat


@pytest.mark.parametrize("name", MOE)
def test_float64_logits_match_transformers_float64(name):
    ref = reference(name)
    model = load(name, dtype="float64")
    for k in range(3):
        assert rel_err(model.logits(ref[f"ids_{k}"]), ref[f"logits64_{k}"]) < 1e-10


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", MOE)
def test_greedy_continuation_matches_transformers_generate(name, backend):
    ref = reference(name)
    model = load(name, backend)
    assert model.generate(ref["prompt"], max_new_tokens=len(ref["greedy"])) == \
        ref["greedy"].tolist()


@pytest.mark.parametrize("name", MOE)
def test_cached_decoding_equals_full_forward(name):
    ref = reference(name)
    model = load(name)
    ids = ref["ids_2"].tolist()
    full = model.logits(ids)
    cache = new_kv_cache(model.config, len(ids), model.backend)
    parts = [forward(model.config, model.weights, model.backend, ids[:9], cache)]
    parts += [forward(model.config, model.weights, model.backend, [t], cache) for t in ids[9:12]]
    parts += [forward(model.config, model.weights, model.backend, ids[12:], cache)]
    assert rel_err(np.concatenate(parts), full) < 1e-5


def test_routing_hand_worked():
    """softmax([0, ln 2, ln 3, ln 4]) = [1, 2, 3, 4] / 10: top-2 are experts 3 and 2 with
    0.4 and 0.3, or 4/7 and 3/7 renormalized."""
    logits = np.log(np.array([[1.0, 2.0, 3.0, 4.0]]))
    chosen, weight = route(logits, 2, norm_topk_prob=False)
    assert chosen.tolist() == [[3, 2]] and np.allclose(weight, [[0.4, 0.3]], rtol=1e-15)
    chosen, weight = route(logits, 2, norm_topk_prob=True)
    assert np.allclose(weight, [[4 / 7, 3 / 7]], rtol=1e-15)


def write_stacked(src, dst):
    """The folder with each sparse layer's experts stacked as transformers v5 holds them:
    mlp.experts.gate_up_proj [E, 2 Fe, D] (gate rows first) and mlp.experts.down_proj
    [E, D, Fe], in one float32 safetensors file."""
    from safetensors.numpy import save_file
    shutil.copytree(src, dst)
    for f in os.listdir(dst):
        if f.startswith("model"):
            os.remove(os.path.join(dst, f))
    cfg = json.load(open(os.path.join(src, "config.json")))
    tensors = {}
    for f in sorted(os.listdir(src)):
        if f.endswith(".safetensors"):
            for n, t in open_safetensors(os.path.join(src, f)).items():
                tensors[n] = np.asarray(getattr(t, "bits", t))
                if hasattr(t, "bits"):   # bfloat16 -> float32, exactly
                    tensors[n] = (tensors[n].astype(np.uint32) << 16).view(np.float32)
    out = {n: t for n, t in tensors.items() if ".mlp.experts." not in n}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}.mlp.experts."
        if p + "0.gate_proj.weight" not in tensors:
            continue
        E = cfg.get("num_experts") or cfg["num_local_experts"]
        out[p + "gate_up_proj"] = np.stack([np.concatenate(
            [tensors[f"{p}{e}.gate_proj.weight"], tensors[f"{p}{e}.up_proj.weight"]])
            for e in range(E)])
        out[p + "down_proj"] = np.stack([tensors[f"{p}{e}.down_proj.weight"] for e in range(E)])
    save_file({n: np.ascontiguousarray(t) for n, t in out.items()},
              os.path.join(dst, "model.safetensors"))


@pytest.mark.parametrize("name", MOE)
def test_stacked_experts_load_like_per_expert_tensors(name, tmp_path):
    ref = reference(name)
    write_stacked(fixture_path(name), tmp_path / "stacked")
    model = load(name, path=tmp_path / "stacked")
    assert rel_err(model.logits(ref["ids_1"]), ref["logits32_1"]) < 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_decoded_token_reads_only_its_chosen_experts(backend):
    """Every matrix product of one decoded token is recorded: in each sparse layer it reads
    the router, the shared expert, and exactly k experts' three matrices, no other."""
    model = load(MOE[0], backend)
    cfg, w, be = model.config, model.weights, model.backend
    names = {}
    for i, layer in enumerate(w.layers):
        if layer.moe is not None:
            for e, ex in enumerate(layer.moe.experts):
                for m in (ex.gate, ex.up, ex.down):
                    names[id(m)] = (i, e)
    cache = new_kv_cache(cfg, 16, be)
    forward(cfg, w, be, [5, 6, 7], cache)
    read = []
    linear = be.linear

    def recording(x, m, bias=None):
        if id(m) in names:
            read.append(names[id(m)])
        return linear(x, m, bias)

    be.linear = recording
    try:
        forward(cfg, w, be, [9], cache)
    finally:
        del be.linear
    for layer in cfg.sparse_layers:
        experts = [e for i, e in read if i == layer]
        assert len(experts) == 3 * cfg.num_experts_per_tok
        assert len(set(experts)) == cfg.num_experts_per_tok


def edited_copy(name, tmp_path, edit):
    dst = tmp_path / "m"
    shutil.copytree(fixture_path(name), dst)
    path = dst / "config.json"
    cfg = json.load(open(path))
    edit(cfg)
    path.write_text(json.dumps(cfg))
    return dst


@pytest.mark.parametrize("edit,message", [
    (lambda c: c.update(num_experts=7), "holds 8 experts .* num_experts 7"),
    (lambda c: c.update(num_experts=9), "holds 8 experts .* num_experts 9"),
    (lambda c: c.update(num_experts_per_tok=9), "num_experts_per_tok 9 is larger than num_experts 8"),
    (lambda c: c.update(decoder_sparse_step=1),
     r"4 layers with 8 experts in each of 4 need at least 132 tensors; the files hold \d+"),
    (lambda c: c.update(mlp_only_layers=[3]), "layer 3 holds experts but the config makes it a dense"),
    (lambda c: c.update(mlp_only_layers="3"), "mlp_only_layers is '3'"),
    (lambda c: c.update(num_experts=2**31 - 1, num_experts_per_tok=2),
     r"4 layers with 2147483647 experts in each of 2 need at least 12884901918 tensors"),
])
def test_moe_config_disagreeing_with_the_tensors_is_one_line(tmp_path, edit, message):
    path = edited_copy(MOE[0], tmp_path, edit)
    with pytest.raises(FormatError, match=message) as e:
        qwen_np.load(path, prepared_cache=False)
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_the_cli_says_it_in_one_line_and_exits_non_zero(tmp_path):
    import subprocess
    import sys
    path = edited_copy(MOE[0], tmp_path, lambda c: c.update(num_experts=7))
    r = subprocess.run([sys.executable, "-m", "qwen_np", "run", "-m", str(path), "-p", "x"],
                       capture_output=True, text=True, timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert "holds 8 experts" in lines[0] and "num_experts 7" in lines[0]


GPTQ = "moe/gptqmodel-qwen3moe-4bit-g32-sym"


def test_gptqmodel_moe_dequantizes_each_expert_like_gptqmodel_bit_for_bit():
    """GPTQModel 7.7.0 quantized each expert as its own module (tools/make_moe_gptq_fixture.py);
    the router stays in float. Every reference module's dequantized weight is GPTQModel's."""
    from qwen_np.tensors.quantized import QuantizedTensor, dequantize
    ref = reference(GPTQ)
    model = load(GPTQ)
    assert model.config.model_type == "qwen3_moe" and model.config.num_experts == 4
    checked = 0
    for key in ref.files:
        if not key.startswith("dequant."):
            continue
        parts = key.split(".")               # dequant.model.layers.<i>.<block>...
        layer = model.weights.layers[int(parts[3])]
        if parts[4] == "self_attn":
            w = getattr(layer, parts[5][0])
        else:                                # mlp.experts.<e>.<proj>
            w = getattr(layer.moe.experts[int(parts[6])], parts[7].replace("_proj", ""))
        assert isinstance(w, QuantizedTensor) and w.bits == 4 and w.group_size == 32
        assert np.array_equal(dequantize(w, np.float32), ref[key]), key
        checked += 1
    assert checked == 17
    assert not isinstance(model.weights.layers[0].moe.router, QuantizedTensor)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gptqmodel_moe_logits_match_gptqmodel(backend):
    ref = reference(GPTQ)
    logits = load(GPTQ, backend).logits(ref["ids"])
    assert ref["logits"].std() > 0.3
    assert rel_err(logits, ref["logits"]) < 1e-4


def test_quantize_writes_each_expert_as_a_module_and_keeps_the_router_float(tmp_path):
    """`qwen-np quantize` of an MoE folder (experts stacked, as transformers v5 holds them):
    each expert and the shared expert become 4-bit GPTQ modules, the router and the shared
    expert's gate stay float, and each expert's weights are rounded to the nearest of their
    group's 16 levels (within half a step of the float weights)."""
    from qwen_np.tensors.quantized import QuantizedTensor, dequantize
    from qwen_np.apps.quantize import quantize_folder
    write_stacked(fixture_path(MOE[0]), tmp_path / "stacked")
    quantize_folder(str(tmp_path / "stacked"), str(tmp_path / "q"), bits=4, group_size=16)
    names = set(open_safetensors(str(tmp_path / "q" / "model.safetensors")))
    assert "model.layers.1.mlp.experts.7.down_proj.qweight" in names
    assert "model.layers.3.mlp.shared_expert.up_proj.qweight" in names
    assert "model.layers.1.mlp.gate.weight" in names
    assert "model.layers.1.mlp.shared_expert_gate.weight" in names
    q = load(MOE[0], path=tmp_path / "q")
    moe = q.weights.layers[1].moe
    assert isinstance(moe.experts[7].down, QuantizedTensor) and moe.experts[7].down.bits == 4
    assert not isinstance(moe.router, QuantizedTensor)
    w = load(MOE[0]).weights.layers[1].moe.experts[7].down                  # [32, 16] float
    qt = moe.experts[7].down
    step = np.repeat(qt.scale.astype(np.float32), qt.group_size, axis=1)    # [32, 16]
    assert np.all(np.abs(dequantize(qt) - w) <= 0.5 * step * (1 + 1e-3) + 1e-6)



def test_weights_read_per_decoded_token_count_k_of_e_experts():
    """Hand count for qwen2moe-step2-f32 (float32, D 32, 4 heads / 2 KV heads of 8, dense
    MLP 48, 8 experts of 16, top-2, shared expert 24, untied vocabulary 384): every matrix of
    the dense layers 0 and 2, the router, shared expert and gate and 2 of 8 experts of layers
    1 and 3, the LM head, and one row of the embedding."""
    from qwen_np.apps.memory import decode_bytes_per_token
    m = load(MOE[0])
    attention = 32 * 32 + 16 * 32 + 16 * 32 + 32 * 32
    dense = attention + 3 * 48 * 32
    sparse = attention + 8 * 32 + 3 * 24 * 32 + 32 + 2 * 3 * 16 * 32
    want = 4 * (2 * dense + 2 * sparse + 384 * 32 + 32)
    assert decode_bytes_per_token(m.config, m.weights) == want


def test_memory_lists_the_routed_experts_of_a_loaded_model():
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "qwen_np", "memory", fixture_path(MOE[0]),
                        "--context", "64"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    line = next(l for l in r.stdout.splitlines() if "routed experts (2 of 8 read)" in l)
    assert f"{2 * 8 * 3 * 16 * 32 * 4:,} B" in line     # 2 sparse layers x 8 experts, float32


def test_a_trace_names_the_sparse_layers_parts():
    from qwen_np.oracle.trace import trace
    tensors = trace(load(MOE[0]), [5, 9, 33])
    names = set(tensors)
    assert tensors["model.layers.1.mlp.gate"].shape == (3, 8)
    assert {"model.layers.1.mlp.gate", "model.layers.1.mlp.experts",
            "model.layers.1.mlp.shared_expert", "model.layers.0.mlp.down_proj"} <= names
    assert "model.layers.1.mlp.down_proj" not in names
