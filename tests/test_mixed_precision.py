"""Mixed precision in GPTQ checkpoints: `qwen-np quantize --keep WIDTH:NAMES`
(runtime/mixed_precision.py), written as GPTQModel's `dynamic` overrides and read back by
formats/hf_quantized.py."""

import json
import os

import numpy as np
import pytest

import qwen_np
from conftest import fixture_path, rel_err
from qwen_np.apps.cli import main
from qwen_np.apps.quantize import quantize_folder
from qwen_np.errors import FormatError, InputError
from qwen_np.formats.hf_dir import read_hf_dir, read_hf_tensors
from qwen_np.tensors.quantized import QuantizedTensor, dequantize

SRC = fixture_path("qwen2-tied-f32")          # tied: a quantized LM head unties it
GROUP = 16


def half_step_bound(w: np.ndarray, bits: int) -> np.ndarray:
    """Round-to-nearest's worst error per weight, worked by hand: a symmetric grid over a
    group spans [-max|w|, max|w|] in 2^bits - 1 steps, so no weight is further than half a
    step from a code (plus float16's rounding of the scale)."""
    g = w.reshape(w.shape[0], -1, GROUP)                                 # [out, groups, GROUP]
    step = 2 * np.abs(g).max(-1, keepdims=True) / (2 ** bits - 1)
    return np.broadcast_to(step / 2 * (1 + 2e-3) + 1e-7, g.shape).reshape(w.shape)


def test_keep_rules_written_as_gptqmodel_dynamic_and_read_back(tmp_path):
    dst = str(tmp_path / "mixed")
    stats = quantize_folder(SRC, dst, bits=4, group_size=GROUP,
                            keep=["16:layers.0.self_attn.q_proj", "8:lm_head,down_proj"])
    cfg = json.load(open(os.path.join(dst, "config.json")))
    q = cfg["quantization_config"]
    assert q["lm_head"] is True and cfg["tie_word_embeddings"] is False
    assert q["dynamic"] == {r"-:.*layers\.0\.self_attn\.q_proj.*": {},
                            "+:lm_head": {"bits": 8}, "+:.*down_proj.*": {"bits": 8}}
    assert stats["quantized"] == 14                      # 13 decoder matrices + the LM head
    floats = read_hf_tensors(SRC)
    read = read_hf_dir(dst)[1]
    expect = {"lm_head.weight": 8, "model.layers.0.self_attn.q_proj.weight": None}
    for layer in (0, 1):
        for m in ("self_attn.k_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj"):
            expect[f"model.layers.{layer}.{m}.weight"] = 4
        expect[f"model.layers.{layer}.mlp.down_proj.weight"] = 8
    for name, bits in expect.items():
        w = floats["model.embed_tokens.weight" if name == "lm_head.weight" else name]
        t = read[name]
        if bits is None:                              # kept: float16 of the float32 weight
            assert not isinstance(t, QuantizedTensor)
            assert np.array_equal(np.asarray(t), w.astype(np.float16))
            continue
        assert isinstance(t, QuantizedTensor) and t.bits == bits, name
        err = np.abs(dequantize(t) - w)
        assert np.all(err <= half_step_bound(w, bits)), name
        if bits == 8:                                 # and tighter than 4 bits could be
            assert err.max() < half_step_bound(w, 4).max() / 4, name
    assert not isinstance(read["model.embed_tokens.weight"], QuantizedTensor)

    # the quantized LM head is used as a matrix product like any projection: with every
    # decoder matrix left float, the 8-bit head alone costs little
    ids = np.load(SRC + ".reference.npz")["ids_1"]
    base = qwen_np.load(SRC, prepared_cache=False).logits(ids)
    head_only = str(tmp_path / "head")
    quantize_folder(SRC, head_only, group_size=GROUP, keep=["16:proj", "8:lm_head"])
    assert rel_err(qwen_np.load(head_only, prepared_cache=False).logits(ids), base) < 0.02
    # and more bits everywhere tracks the float model better (a tiny random model's error at
    # 4 bits is large and chaotic, so only the whole step is compared)
    errs = []
    for keep in ([], ["8:proj,lm_head"]):
        quantize_folder(SRC, str(tmp_path / "w"), group_size=GROUP, keep=keep)
        errs.append(rel_err(qwen_np.load(str(tmp_path / "w"), prepared_cache=False).logits(ids),
                            base))
    assert errs[1] < errs[0] / 10


def test_keep_applies_to_gptq_too(tmp_path):
    dst = str(tmp_path / "g")
    quantize_folder(SRC, dst, method="gptq", group_size=GROUP, samples=2, seq_len=32,
                    keep=["8:v_proj", "16:layers.1.mlp.down_proj"])
    read = read_hf_dir(dst)[1]
    assert read["model.layers.0.self_attn.v_proj.weight"].bits == 8
    assert read["model.layers.0.self_attn.k_proj.weight"].bits == 4
    assert not isinstance(read["model.layers.1.mlp.down_proj.weight"], QuantizedTensor)
    assert "lm_head.weight" not in read


@pytest.mark.parametrize("keep,message", [
    (["8:embed"], "holds no quantized embedding"),
    (["8"], "expected WIDTH:NAMES"),
    (["6:lm_head"], "expected WIDTH:NAMES"),
    (["8:lm_head,"], "an empty name"),
    (["8:no_such_proj"], "names no quantizable matrix"),
])
def test_bad_keep_rules_are_one_line_errors(tmp_path, capsys, keep, message):
    with pytest.raises(InputError, match=message):
        quantize_folder(SRC, str(tmp_path / "x"), keep=keep)
    argv = ["quantize", SRC, str(tmp_path / "y")] + [a for k in keep for a in ("--keep", k)]
    assert main(argv) != 0
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err
    assert not os.path.exists(tmp_path / "y")


def test_embed_kept_in_float_is_accepted(tmp_path):
    quantize_folder(SRC, str(tmp_path / "e"), group_size=GROUP, keep=["16:embed"])


def edit_config(folder, change):
    path = os.path.join(folder, "config.json")
    cfg = json.load(open(path))
    change(cfg["quantization_config"])
    json.dump(cfg, open(path, "w"))


def test_reader_refuses_dynamic_that_contradicts_the_file(tmp_path):
    dst = str(tmp_path / "m")
    quantize_folder(SRC, dst, group_size=GROUP, keep=["8:down_proj"])
    edit_config(dst, lambda q: q.update(dynamic={"-:.*down_proj": {}}))
    with pytest.raises(FormatError, match=r"config.json: module .*down_proj is quantized, but"):
        read_hf_dir(dst)
    edit_config(dst, lambda q: q.update(dynamic={"+:([": {"bits": 8}}))
    with pytest.raises(FormatError, match="is not a regular expression"):
        read_hf_dir(dst)
    edit_config(dst, lambda q: q.update(dynamic={}))      # 8-bit words read as 4-bit: refused
    with pytest.raises(FormatError, match=r"down_proj.qweight has shape \[20, 48\]; 4-bit"):
        read_hf_dir(dst)


def test_gptqmodel_reads_the_widths_qwen_np_wrote():
    """tools/make_mixed_gptq_fixture.py: GPTQModel 7.7.0 loaded a `--keep` file (4 bits,
    layer 0's q_proj float16, lm_head and down_proj at 8 bits) and ran it; its dequantized
    weights and logits are the reference."""
    import hashlib
    d = fixture_path("mixed/qwen-np-mixed-4bit-g32")
    ref = np.load(d + ".reference.npz")
    with open(os.path.join(d, "model.safetensors"), "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == str(ref["sha256"])
    tensors = read_hf_dir(d)[1]
    for key in ref.files:
        if key.startswith("dequant."):
            module = key[len("dequant."):]
            t = tensors[module + ".weight"]
            assert t.bits == (8 if module == "lm_head" or "down_proj" in module else 4)
            assert np.array_equal(dequantize(t), ref[key]), module
    assert not isinstance(tensors["model.layers.0.self_attn.q_proj.weight"], QuantizedTensor)
    logits = qwen_np.load(d, prepared_cache=False).logits(ref["ids"])
    assert rel_err(logits, ref["logits"]) < 1e-5


def test_keep_is_refused_for_gguf_and_awq_output(tmp_path, capsys):
    for argv in (["--type", "Q8_0"], ["--method", "awq"]):
        dst = str(tmp_path / ("x.gguf" if "--type" in argv else "x"))
        assert main(["quantize", SRC, dst, "--keep", "8:lm_head"] + argv) != 0
        err = capsys.readouterr().err.strip()
        assert "--keep" in err and "\n" not in err
