"""The original Qwen (model_type "qwen") against Qwen's own modeling_qwen.py: the fixtures in
tests/fixtures/qwen1 and their expected outputs were made by tools/make_qwen1_fixtures.py with
Qwen's code (float32, and float64 throughout). Every backend runs every model (the GPU backend
on the CPU: tests/cupy_on_cpu.py), but for the int8 cache, which the GPU backend does not keep."""

import json
import os
import shutil

import numpy as np
import pytest

import qwen_np
from conftest import FIXTURES, rel_err
from qwen_np.model.kv_cache import quantize_qwen_v1_chunk
from qwen_np.model.forward import forward
from qwen_np.tensors.quantized import QuantizedTensor, dequantize

QWEN1 = os.path.join(FIXTURES, "qwen1")
EXACT = ["qwen1-f32-ntk-logn", "qwen1-bf16-rotary-half", "qwen1-f16-early-keys",
         "qwen1-gptq-int4"]
CACHE_INT8 = "qwen1-f32-cache-int8"
CPU_BACKENDS = ["numpy", "numba"]
# "cupy-on-cpu": the GPU backend's code and kernels run on the CPU (tests/cupy_on_cpu.py)
BACKENDS = CPU_BACKENDS + (["cupy-on-cpu"] if shutil.which("g++") else [])


def backend_arg(name):
    if name == "cupy-on-cpu":
        from cupy_on_cpu import emulated_cupy_backend
        return emulated_cupy_backend()
    return name


def path(name):
    return os.path.join(QWEN1, name)


def reference(name):
    return np.load(path(name) + ".reference.npz")


def test_the_fixtures_cover_the_variants():
    configs = {n: qwen_np.load(path(n)).config for n in EXACT + [CACHE_INT8]}
    assert all(c.model_type == "qwen" for c in configs.values())
    assert configs["qwen1-bf16-rotary-half"].rope_dim == 6          # rotary_pct 0.5 of 12
    assert configs["qwen1-f32-ntk-logn"].dynamic_ntk and configs["qwen1-f32-ntk-logn"].logn_attn
    early = configs["qwen1-f16-early-keys"]
    assert not early.dynamic_ntk and not early.logn_attn
    assert (early.hidden_size, early.intermediate_size, early.vocab_size) == (48, 80, 320)
    assert configs[CACHE_INT8].kv_cache_quantization
    assert all(c.seq_length == 8 for c in configs.values())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", EXACT)
def test_float32_logits_match_qwens_code(name, backend):
    """Prompts shorter (5) and longer (19: NTK alpha 7, logn on) than seq_length 8."""
    ref = reference(name)
    model = qwen_np.load(path(name), backend=backend_arg(backend))
    for k in (0, 1):
        logits = model.logits(ref[f"ids_{k}"])
        assert rel_err(logits, ref[f"logits32_{k}"]) < 1e-5
        assert ref[f"logits32_{k}"].std() > 0.5


@pytest.mark.parametrize("name", EXACT)
def test_float64_logits_match_qwens_code_in_float64(name):
    ref = reference(name)
    model = qwen_np.load(path(name), dtype="float64")
    for k in (0, 1):
        logits = model.logits(ref[f"ids_{k}"])
        assert logits.dtype == np.float64
        assert rel_err(logits, ref[f"logits64_{k}"]) < 1e-10


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", EXACT)
def test_greedy_continuations_match_qwens_code(name, backend):
    """A 5-token prompt decoded past seq_length (alpha 1 kept, logn acting), and a 12-token
    prompt (alpha 3, kept while decoding)."""
    ref = reference(name)
    model = qwen_np.load(path(name), backend=backend_arg(backend))
    for prompt, greedy in (("prompt", "greedy"), ("prompt_long", "greedy_long")):
        new = model.generate(ref[prompt], max_new_tokens=len(ref[greedy]), stop_ids=[])
        assert new == ref[greedy].tolist()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", EXACT)
def test_a_second_chunk_keeps_the_alpha_of_the_first_prefill(name, backend):
    """chunk_b after a prefill of chunk_a: Qwen keeps alpha 1 (from 6 tokens) although the
    11 keys pass seq_length; one prefill of all 11 would use alpha 3."""
    ref = reference(name)
    model = qwen_np.load(path(name), backend=backend_arg(backend))
    cache = model.new_cache(len(ref["chunk_a"]) + len(ref["chunk_b"]))
    forward(model.config, model.weights, model.backend, ref["chunk_a"].tolist(), cache)
    logits = model.backend.to_numpy(
        forward(model.config, model.weights, model.backend, ref["chunk_b"].tolist(), cache))
    assert rel_err(logits, ref["chunk_logits"]) < 1e-5
    if model.config.dynamic_ntk:
        assert rel_err(ref["chunk_full_last_logits"], ref["chunk_last_logits"]) > 1e-2


def test_gptq_int4_stays_packed_and_dequantizes_as_the_reference():
    ref = reference("qwen1-gptq-int4")
    model = qwen_np.load(path("qwen1-gptq-int4"))
    layer0, layer1 = model.weights.layers[0], model.weights.layers[1]
    assert all(isinstance(w, QuantizedTensor) for w in (layer0.q, layer0.k, layer0.v, layer0.o,
                                                         layer0.gate, layer0.up, layer0.down))
    c_attn = np.concatenate([dequantize(w) for w in (layer0.q, layer0.k, layer0.v)])
    assert np.array_equal(c_attn, ref["dequant.transformer.h.0.attn.c_attn"])
    assert np.array_equal(dequantize(layer1.gate), ref["dequant.transformer.h.1.mlp.w2"])
    assert model.weights.embed.dtype_name == "float16"   # left in the file, read by row


def test_qwen_cache_quantizer_is_qwens_quantize_cache_v():
    """Bit for bit on the same inputs: codes (truncated, not rounded), scales and zeros."""
    ref = np.load(os.path.join(QWEN1, "kv-quantizer.npz"))
    for k in range(3):
        codes, scale, zero = quantize_qwen_v1_chunk(ref[f"x_{k}"])
        assert np.array_equal(codes, ref[f"codes_{k}"])
        assert np.array_equal(scale, ref[f"scale_{k}"]) and np.array_equal(zero, ref[f"zero_{k}"])


@pytest.mark.parametrize("backend", CPU_BACKENDS)       # the cupy backend keeps no int8 cache
def test_use_cache_quantization_matches_qwens_code(backend):
    """Qwen truncates x / scale + zero, and each head's largest value lands on 254.99.. or
    255.0.. depending on the last bit of the keys, so any two float implementations (Qwen's
    own float32 and float64 runs included: 2e-3 apart) differ by a step on a few codes. The
    logits must be far closer to Qwen's than the quantization's own effect, and the greedy
    tokens equal."""
    ref = reference(CACHE_INT8)
    model = qwen_np.load(path(CACHE_INT8), backend=backend)
    assert model.kv_cache == "int8"
    unquantized = qwen_np.load(path(CACHE_INT8), backend=backend, kv_cache="float32")
    for k in (0, 1):
        ids = ref[f"ids_{k}"]
        err = rel_err(model.logits(ids), ref[f"logits32_{k}"])
        effect = rel_err(unquantized.logits(ids), ref[f"logits32_{k}"])
        assert err < 1e-2 and err < effect / 3, (err, effect)
    for prompt, greedy in (("prompt", "greedy"), ("prompt_long", "greedy_long")):
        new = model.generate(ref[prompt], max_new_tokens=len(ref[greedy]), stop_ids=[])
        assert new == ref[greedy].tolist()


def test_use_cache_quantization_in_float64_matches_qwens_float64_run():
    ref = reference(CACHE_INT8)
    model = qwen_np.load(path(CACHE_INT8), dtype="float64")
    for k in (0, 1):
        assert rel_err(model.logits(ref[f"ids_{k}"]), ref[f"logits64_{k}"]) < 1e-2


# -- the chat prompt and tokenizer against Qwen's tokenization_qwen.py / make_context -------

@pytest.fixture(scope="module")
def v1_tokenizer():
    from qwen_np.apps.fetch import QWEN_TIKTOKEN, fetch_file
    return qwen_np.load_tokenizer(fetch_file(QWEN_TIKTOKEN))


def make_context_cases():
    with open(os.path.join(QWEN1, "make_context.json"), encoding="utf-8") as f:
        return json.load(f)


def test_chat_prompt_ids_are_make_contexts(v1_tokenizer):
    from qwen_np.runtime.chat import chat_prompt_ids
    fixture = make_context_cases()
    assert len(fixture["cases"]) >= 5
    for case in fixture["cases"]:
        ids = chat_prompt_ids(v1_tokenizer, "qwen", case["query"], case["system"],
                              [tuple(turn) for turn in case["history"]])
        assert ids == case["ids"], case["query"]
        assert v1_tokenizer.decode(ids) == case["raw_text"]


def test_encode_and_decode_are_qwens_tokenizers(v1_tokenizer):
    for case in make_context_cases()["encode"]:
        assert v1_tokenizer.encode(case["text"]) == case["ids"], case["text"]
        assert v1_tokenizer.decode(case["ids"]) == case["decoded"]


def test_chat_stops_at_qwens_stop_words(tmp_path, v1_tokenizer):
    """make_context's stop words (<|im_end|>, <|im_start|>) and <|endoftext|>."""
    import shutil
    from qwen_np.apps.fetch import QWEN_TIKTOKEN, fetch_file
    d = tmp_path / "m"
    shutil.copytree(path("qwen1-f32-ntk-logn"), d)
    shutil.copy(fetch_file(QWEN_TIKTOKEN), d / "qwen.tiktoken")
    stop = qwen_np.load(str(d)).stop_ids()
    expected = {i for pair in make_context_cases()["stop_words_ids"] for i in pair}
    assert expected | {151643} <= set(stop)


# -- bad input: one-line errors naming the file ------------------------------------------------

def cli(*args):
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-m", "qwen_np", *args], capture_output=True,
                          text=True, timeout=120)


def one_line_cli_error(r, *needles):
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert all(n in lines[0] for n in needles), lines[0]


def copy_fixture(tmp_path, name="qwen1-f32-ntk-logn"):
    import shutil
    d = tmp_path / name
    shutil.copytree(path(name), d)
    return d


def test_a_v1_config_without_seq_length(tmp_path):
    from qwen_np.errors import FormatError
    d = copy_fixture(tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    del cfg["seq_length"]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(FormatError, match=r"config.json: missing required key 'seq_length'"):
        qwen_np.load(str(d))
    one_line_cli_error(cli("run", "-m", str(d), "-p", "hi"), str(d / "config.json"), "seq_length")


def test_a_c_attn_whose_rows_are_not_three_times_hidden(tmp_path):
    from safetensors.numpy import load_file, save_file
    from qwen_np.errors import FormatError
    d = copy_fixture(tmp_path)
    tensors = load_file(str(d / "model.safetensors"))
    name = "transformer.h.1.attn.c_attn.weight"
    tensors[name] = tensors[name][:100]
    save_file(tensors, str(d / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(FormatError, match=rf"{name} has shape \[100, 48\], the config implies "
                                          r"\[144, 48\]"):
        qwen_np.load(str(d))
    one_line_cli_error(cli("run", "-m", str(d), "-p", "hi"), str(d), name)


def test_a_quantized_c_attn_of_the_wrong_width(tmp_path):
    from safetensors.numpy import load_file, save_file
    from qwen_np.errors import FormatError
    d = copy_fixture(tmp_path, "qwen1-gptq-int4")
    tensors = load_file(str(d / "model.safetensors"))
    m = "transformer.h.0.attn.c_attn"
    for part in ("qweight", "scales", "bias"):
        tensors[f"{m}.{part}"] = tensors[f"{m}.{part}"][..., :96]
    tensors[f"{m}.qzeros"] = tensors[f"{m}.qzeros"][..., :12]
    save_file(tensors, str(d / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(FormatError) as e:
        qwen_np.load(str(d))
    assert str(d) in str(e.value) and "c_attn" in str(e.value)


def test_a_missing_qwen_tiktoken(tmp_path):
    from qwen_np.errors import FormatError
    d = copy_fixture(tmp_path)
    model = qwen_np.load(str(d))            # the weights load; text needs the tokenizer
    with pytest.raises(FormatError, match="no tokenizer.json or qwen.tiktoken"):
        model.tokenizer
    with pytest.raises(FormatError, match="no tokenizer.json or qwen.tiktoken"):
        qwen_np.load_tokenizer(str(d))
    one_line_cli_error(cli("run", "-m", str(d), "-p", "hi", "--chat"), str(d), "qwen.tiktoken")
    with pytest.raises(FormatError, match="qwen.tiktoken"):
        qwen_np.load_tokenizer(str(tmp_path / "nothing" / "qwen.tiktoken"))


def random_v1_folder(d, tiktoken_path):
    """A random original-Qwen model with the real vocabulary (151936 rows, hidden 16), so the
    ChatML ids exist: for the command-line plumbing, not for numbers."""
    import shutil
    from safetensors.numpy import save_file
    rng = np.random.default_rng(0)
    D, F, V = 16, 24, 151936
    t = {"transformer.wte.weight": rng.normal(0, 0.5, (V, D)), "lm_head.weight": rng.normal(0, 0.5, (V, D)),
         "transformer.ln_f.weight": np.ones(D)}
    p = "transformer.h.0."
    t.update({p + "ln_1.weight": np.ones(D), p + "ln_2.weight": np.ones(D),
              p + "attn.c_attn.weight": rng.normal(0, 0.3, (3 * D, D)),
              p + "attn.c_attn.bias": rng.normal(0, 0.1, 3 * D),
              p + "attn.c_proj.weight": rng.normal(0, 0.3, (D, D)),
              p + "mlp.w1.weight": rng.normal(0, 0.3, (F, D)), p + "mlp.w2.weight": rng.normal(0, 0.3, (F, D)),
              p + "mlp.c_proj.weight": rng.normal(0, 0.3, (D, F))})
    d.mkdir()
    save_file({k: v.astype(np.float32) for k, v in t.items()}, str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps({
        "model_type": "qwen", "hidden_size": D, "num_attention_heads": 2, "kv_channels": 8,
        "num_hidden_layers": 1, "intermediate_size": 2 * F, "vocab_size": V, "seq_length": 8,
        "max_position_embeddings": 64}))
    shutil.copy(tiktoken_path, d / "qwen.tiktoken")


def test_the_cli_runs_and_chats_with_a_v1_model(tmp_path):
    from qwen_np.apps.fetch import QWEN_TIKTOKEN, fetch_file
    d = tmp_path / "v1"
    random_v1_folder(d, fetch_file(QWEN_TIKTOKEN))
    for kv in ("float32", "int8"):
        r = cli("run", "-m", str(d), "-p", "hi", "--chat", "-n", "3", "--kv-cache", kv)
        assert r.returncode == 0, r.stderr
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "qwen_np", "chat", "-m", str(d), "-n", "3",
                        "--backend", "numba"], input="hello\nand again\n/exit\n",
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.splitlines()) == 2          # one answer line per turn


def test_quantize_writes_the_qwen_7b_chat_int4_layout(tmp_path):
    """`qwen-np quantize` on an original-Qwen folder: the v1 names with qweight/qzeros/scales/
    g_idx for c_attn, c_proj, w1, w2 and mlp.c_proj, c_attn's bias kept; it loads packed, and
    each quantized matrix dequantizes to within half a step of the float one."""
    from safetensors.numpy import load_file
    from qwen_np.apps.quantize import quantize_folder
    src, dst = path("qwen1-f32-ntk-logn"), str(tmp_path / "int4")
    stats = quantize_folder(src, dst, 4, 16, True)
    assert stats["quantized"] == 10
    names = set(load_file(dst + "/model.safetensors"))
    assert "transformer.h.0.attn.c_attn.qweight" in names and "transformer.h.0.attn.c_attn.bias" in names
    assert "transformer.h.1.mlp.w2.g_idx" in names and "transformer.wte.weight" in names
    float_model, int4 = qwen_np.load(src), qwen_np.load(dst)
    for a, b in ((float_model.weights.layers[0].k, int4.weights.layers[0].k),
                 (float_model.weights.layers[1].gate, int4.weights.layers[1].gate)):
        assert isinstance(b, QuantizedTensor)
        w = np.asarray(a, np.float32)
        step = np.abs(w).reshape(w.shape[0], -1, 16).max(-1) / 7     # sym 4-bit: absmax / 7..8
        err = np.abs(dequantize(b) - w).reshape(w.shape[0], -1, 16).max(-1)
        assert np.all(err <= step / 2 * 1.01 + 1e-6)


@pytest.mark.parametrize("name", ["qwen1-f32-ntk-logn", "qwen1-bf16-rotary-half"])
def test_a_prompt_prefilled_in_chunks_keeps_the_whole_prompts_alpha(name):
    """generate feeds a prompt a chunk at a time; the 12-token prompt (alpha 3 from its whole
    length, though each 5-token chunk alone would give 1) still continues as Qwen's code does."""
    from qwen_np.runtime.generate import generate
    ref = reference(name)
    model = qwen_np.load(path(name))
    new = generate(model.config, model.weights, model.backend, ref["prompt_long"].tolist(),
                   max_new_tokens=len(ref["greedy_long"]), stop_ids=[], prefill_chunk=5)
    assert new == ref["greedy_long"].tolist()
