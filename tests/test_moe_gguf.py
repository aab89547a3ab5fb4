"""MoE and YaRN GGUF files (qwen2moe, qwen3moe; stacked experts as llama.cpp's converter
writes them), written by gguf-py's GGUFWriter from the tiny transformers fixtures: the same
logits as transformers (F32 files), as the float model with gguf-py's own dequantization
(Q8_0, Q4_0), and the bad files' errors."""

import importlib.util

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
pytest.importorskip("torch")
from gguf import GGMLQuantizationType as T  # noqa: E402

import qwen_np  # noqa: E402
from conftest import fixture_path, rel_err  # noqa: E402
from gguf_writer import write_gguf_from_hf  # noqa: E402
from qwen_np.errors import FormatError  # noqa: E402
from qwen_np.formats.gguf_qwen import hf_name  # noqa: E402
from qwen_np.model.forward import forward  # noqa: E402
from qwen_np.model.weights import build_weights  # noqa: E402

BACKENDS = ["numpy"] + (["numba"] if importlib.util.find_spec("numba") else [])
MOE = ["moe/qwen2moe-step2-f32", "moe/qwen3moe-headdim24-bf16-sharded"]
YARN = ["yarn/qwen2-yarn4", "yarn/qwen3-yarn2-betas", "yarn/qwen3moe-yarn4"]


def reference(name):
    return np.load(fixture_path(name) + ".reference.npz")


def load(path, backend="numpy"):
    return qwen_np.load(path, backend=backend, prepared_cache=False)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", MOE + YARN)
def test_f32_file_gives_transformers_logits(name, backend, tmp_path):
    path = str(tmp_path / "m.gguf")
    write_gguf_from_hf(fixture_path(name), path, T.F32)
    ref = reference(name)
    m = load(path, backend)
    hf = load(fixture_path(name)).config
    for field in ("model_type", "num_experts", "num_experts_per_tok", "moe_intermediate_size",
                  "shared_expert_intermediate_size", "norm_topk_prob", "sparse_layers",
                  "head_dim", "qkv_bias", "qk_norm", "yarn"):
        assert getattr(m.config, field) == getattr(hf, field), field
    assert rel_err(m.logits(ref["ids_1"]), ref["logits32_1"]) < 1e-5


def per_expert(expected: dict) -> dict:
    """gguf-py's dequantized tensors under the Hugging Face names, stacked experts split."""
    out = {}
    for name, arr in expected.items():
        if "_exps." in name:
            layer, part = name.split(".")[1], name.split(".")[2][4:-5]     # gate / up / down
            for e in range(arr.shape[0]):
                out[f"model.layers.{layer}.mlp.experts.{e}.{part}_proj.weight"] = arr[e]
        elif name.endswith("ffn_gate_inp_shexp.weight"):
            out[hf_name(name)] = arr.reshape(1, -1)
        else:
            out[hf_name(name)] = arr
    return out


@pytest.mark.parametrize("qtype", [T.Q8_0, T.Q4_0])
@pytest.mark.parametrize("name", MOE)
def test_quantized_file_equals_the_float_model_with_gguf_py_weights(name, qtype, tmp_path):
    """Independent weights: gguf-py's dequantization of every tensor, in the float model."""
    path = str(tmp_path / "m.gguf")
    expected = write_gguf_from_hf(fixture_path(name), path, qtype)
    m = load(path)
    twin = build_weights(m.config, per_expert(expected), np.float32, "twin")
    ids = reference(name)["ids_2"]
    assert rel_err(m.logits(ids), forward(m.config, twin, m.backend, ids)) < 1e-6
    assert m.weights.layers[m.config.sparse_layers[0]].moe.experts[0].gate.bits in (4, 8)


@pytest.mark.parametrize("skip", ["blk.1.ffn_down_exps.weight", "blk.3.ffn_up_shexp.weight"])
def test_a_missing_expert_tensor_is_named(tmp_path, skip):
    path = str(tmp_path / "m.gguf")
    write_gguf_from_hf(fixture_path(MOE[0]), path, T.Q8_0, skip=(skip,))
    with pytest.raises(FormatError, match=f"missing tensor {skip}") as e:
        load(path)
    assert "\n" not in str(e.value) and path in str(e.value)


@pytest.mark.parametrize("counts,message", [
    ((6, 2), r"tensor blk\.1\.ffn_\w+_exps\.weight stacks 8 experts; the metadata says expert_count 6"),
    ((8, 9), "qwen2moe.expert_used_count 9 is larger than qwen2moe.expert_count 8"),
])
def test_expert_counts_disagreeing_with_the_tensors(tmp_path, counts, message):
    path = str(tmp_path / "m.gguf")
    write_gguf_from_hf(fixture_path(MOE[0]), path, T.Q8_0, expert_counts=counts)
    with pytest.raises(FormatError, match=message) as e:
        load(path)
    assert "\n" not in str(e.value) and path in str(e.value)


ALLSPARSE = ["moe/qwen2moe-allsparse-bf16", "moe/qwen3moe-allsparse-bf16"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ALLSPARSE)
def test_f32_moe_file_gives_llama_cpp_logits(name, backend, tmp_path):
    """llama.cpp's own logits for the same file (llama-cpp-python 0.3.36, F32 KV cache;
    tools/make_moe_gguf_fixtures.py), and transformers' for the folder it was written from."""
    import hashlib
    llama = np.load(fixture_path(name) + ".llama_cpp.npz")
    path = str(tmp_path / "m.gguf")
    write_gguf_from_hf(fixture_path(name), path, T.F32)
    with open(path, "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == str(llama["gguf_sha256"])
    m = load(path, backend)
    assert rel_err(m.logits(llama["ids"]), llama["logits"]) < 1e-5
    ref = reference(name)
    assert rel_err(m.logits(ref["ids_1"]), ref["logits32_1"]) < 1e-5
