"""`qwen-np quantize SRC DST.gguf --type T`: the block bytes (against gguf-py's reader and
quantizers), the quantization error (against llama.cpp's own quantizer), the Q4_K_M mix
(against llama.cpp's choice), and the files themselves run by llama.cpp (recorded by
tools/make_gguf_output_fixtures.py, tests/fixtures/README.md)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import FIXTURES
from gguf_output_models import MODELS, model_tensors, write_model
from qwen_np.formats.gguf_blocks import TYPE_IDS, block_rows_to_canonical
from qwen_np.formats.gguf_blocks_write import WRITERS, quantize_rows
from qwen_np.formats.gguf_metadata import gguf_tensor_name
from qwen_np.formats.gguf_tensor_types import tensor_types
from qwen_np.tensors import ggml_quantize as gq
from qwen_np.tensors.quantized import dequantize

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as T  # noqa: E402

OUT_FIX = os.path.join(FIXTURES, "gguf_output")
TYPES = ["Q4_0", "Q5_0", "Q8_0", "Q4_K", "Q5_K", "Q6_K", "Q4_K_M"]
MOE = ["qwen2moe-allsparse-bf16", "qwen3moe-allsparse-bf16"]      # tests/fixtures/moe/
CASES = [(m, t) for m in MODELS for t in TYPES] + [(m, t) for m in MOE for t in ("Q8_0", "Q4_K_M")]
LEGACY = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"]


def awkward_rows(n: int) -> np.ndarray:
    """float32 [13, n]: ordinary rows and the cases a block quantizer gets wrong."""
    rng = np.random.default_rng(7)
    x = rng.normal(0, 0.05, (13, n)).astype(np.float32)
    x[1] = 0                                            # all zero
    x[2] = 0.37                                         # constant positive
    x[3] = -0.2                                         # constant negative
    x[4, 17] = 40.0                                     # one huge value
    x[5] *= 1e-6                                        # tiny
    x[6] = -np.abs(x[6])                                # negative only
    x[7] = np.abs(x[7])                                 # positive only
    x[8, ::3] = 0                                       # sparse
    x[9] = np.where(np.arange(n) % 2, 60000.0, -60000.0)  # float16's range
    x[10, :n // 2] = 1e-30                              # below float16's smallest
    x[11] = rng.standard_t(2, n) * 0.02                 # heavy tails
    x[12] = np.arange(n, dtype=np.float32) / n - 0.5    # a ramp
    return x


@pytest.mark.parametrize("name", list(WRITERS))
def test_bytes_read_back_as_gguf_py_reads_them(name):
    """gguf-py's dequantize of our bytes equals qwen-np's reader bit for bit, and the values
    are near the input (an odd row count, rows of 2 K-blocks)."""
    x = awkward_rows(512)
    raw = quantize_rows(x, name)
    theirs = gguf.quants.dequantize(raw, T[name])
    ours = dequantize(block_rows_to_canonical(raw, TYPE_IDS[name], x.shape))
    np.testing.assert_array_equal(ours, theirs)
    finite = np.isfinite(theirs).all(1)
    assert finite[[0, 1, 2, 3, 5, 6, 7, 8, 11, 12]].all()
    step = {"Q4_0": 8, "Q4_1": 15, "Q5_0": 16, "Q5_1": 31, "Q8_0": 127, "Q4_K": 15,
            "Q5_K": 31, "Q6_K": 32}[name]
    for r in (0, 2, 3, 6, 7, 8, 11, 12):                 # within a step of the block's range
        span = np.abs(x[r]).max()
        assert np.abs(theirs[r] - x[r]).max() <= 2.1 * span / step, (name, r)
    assert not theirs[1].any()                          # zeros stay zeros


@pytest.mark.parametrize("name", LEGACY)
def test_legacy_bytes_equal_gguf_py_quantizer(name):
    """gguf-py implements ggml's reference quantizer for the 32-blocks: the same bytes."""
    x = awkward_rows(256)
    with np.errstate(all="ignore"):
        theirs = gguf.quants.quantize(x, T[name])
    np.testing.assert_array_equal(quantize_rows(x, name), theirs)


@pytest.mark.parametrize("name", ["Q4_K", "Q5_K", "Q6_K"])
def test_k_quants_of_zero_and_constant_blocks(name):
    x = np.zeros((3, 256), np.float32)
    x[1] = 0.5
    x[2] = -0.5
    raw = quantize_rows(x, name)
    w = gguf.quants.dequantize(raw, T[name])
    assert not w[0].any()
    np.testing.assert_allclose(w[1:], x[1:], rtol=0.01)


def gguf_weights(model: str) -> dict:
    """{GGUF name: float32 [out, in]} of a tiny model's matrices."""
    return {gguf_tensor_name(k): v for k, v in model_tensors(model).items() if v.ndim == 2}


@pytest.mark.parametrize("model", list(MODELS))
def test_quantization_error_against_llama_cpp(model):
    """Per tensor, our K-quant error is at most 0.5% above llama.cpp's quantizer on the same
    weights; the legacy types are the same bytes; and for Q4_K/Q5_K the scale search beats
    plain min-max rounding."""
    ref = np.load(os.path.join(OUT_FIX, f"{model}.llama_quantize.npz"))
    weights = gguf_weights(model)
    names = [str(n) for n in ref["names"]]
    for t in TYPES[:-1]:
        for i, n in enumerate(names):
            x = weights[n]
            kind = t if x.shape[1] % 256 == 0 or t in ("Q4_0", "Q5_0", "Q8_0") \
                else {"Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}[t]
            raw = quantize_rows(x, kind)
            if kind in LEGACY:
                assert hashlib.sha256(raw.tobytes()).hexdigest() == str(ref[f"sha256_{t}"][i]), \
                    (t, n)
                continue
            w = gguf.quants.dequantize(raw, T[kind])
            ours = np.sqrt(np.mean((w - x) ** 2, dtype=np.float64))
            assert ours <= 1.005 * ref[f"rmse_{t}"][i], (t, n, ours, ref[f"rmse_{t}"][i])
            if kind in ("Q4_K", "Q5_K"):
                quantize = {"Q4_K": gq.quantize_q4_k, "Q5_K": gq.quantize_q5_k}[kind]
                pack = WRITERS[kind][3]
                plain = pack(*quantize(x, search=False)).reshape(x.shape[0], -1)
                rtn = np.sqrt(np.mean((gguf.quants.dequantize(plain, T[kind]) - x) ** 2))
                assert ours < 0.97 * rtn, (t, n, ours, rtn)


@pytest.mark.parametrize("model", list(MODELS))
def test_q4_k_m_mix_is_llama_cpp_choice(model):
    ref = np.load(os.path.join(OUT_FIX, f"{model}.llama_quantize.npz"))
    shapes = [(gguf_tensor_name(k), v.shape) for k, v in model_tensors(model).items()]
    ours = tensor_types(shapes, "Q4_K_M", n_layers=2)
    assert {str(n): str(t) for n, t in zip(ref["names"], ref["types_Q4_K_M"])} == \
        {n: t for n, t in ours.items() if t != "F32"}


# qwen-np's logits on a file against llama.cpp's, in units of their spread (std): llama.cpp
# rounds each product's activations to 8-bit blocks (Q8_0 / Q8_K) where qwen-np multiplies the
# float activations, which moves these random 256-wide models' logits by about 1.5% on average
# and up to 10% (measured: mean 1.2-1.9%, max 6-10.5%, the same for every type, Q8_0 included,
# whose tensors are byte for byte llama.cpp's own quantizer's; the MoE fixtures alike, but for
# the one position whose routing the rounding changes).
MEAN_TOLERANCE, MAX_TOLERANCE = 0.025, 0.15


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """{(model, type): path} of the files, written once."""
    from qwen_np.apps.quantize_gguf import quantize_to_gguf
    tmp = tmp_path_factory.mktemp("gguf-output")
    sources = {m: write_model(m, str(tmp / m)) for m in MODELS}
    sources.update({m: os.path.join(FIXTURES, "moe", m) for m in MOE})
    out = {}
    for model, t in CASES:
        out[model, t] = str(tmp / f"{model}-{t}.gguf")
        quantize_to_gguf(sources[model], out[model, t], t)
    return out


@pytest.mark.parametrize("model", list(MODELS) + MOE)
def test_files_have_llama_quantizes_types_and_bytes(written, model):
    """Our files hold the tensors llama.cpp's own quantizer quantizes, at the types its
    Q4_K_M mix chooses (for the MoE models its 8-expert rules), and for the 32-block types the
    same bytes, stacked experts included."""
    ref = np.load(os.path.join(OUT_FIX, f"{model}.llama_quantize.npz"))
    names = [str(n) for n in ref["names"]]
    for t in sorted({t for m, t in CASES if m == model}):
        reader = gguf.GGUFReader(written[model, t])
        ours = {x.name: x for x in reader.tensors if x.tensor_type not in (T.F32, T.F16)}
        assert sorted(ours) == sorted(names)
        if t == "Q4_K_M":
            assert [ours[n].tensor_type.name for n in names] == ref["types_Q4_K_M"].tolist()
        elif t in LEGACY:
            assert [hashlib.sha256(np.asarray(ours[n].data).tobytes()).hexdigest()
                    for n in names] == ref[f"sha256_{t}"].tolist()


@pytest.mark.parametrize("model,t", CASES)
def test_llama_cpp_runs_the_file(written, model, t):
    """The file is the one llama.cpp ran; qwen-np's logits on it agree with llama.cpp's
    within the tolerances above; teacher-forced on llama.cpp's greedy tokens, qwen-np picks
    the same token wherever its logits can tell the two apart (llama.cpp's choice is within
    MAX_TOLERANCE of qwen-np's best; on these random models the top two are sometimes closer
    than that)."""
    import qwen_np
    ref = np.load(os.path.join(OUT_FIX, f"{model}.llama_cpp.npz"))
    path = written[model, t]
    with open(path, "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == str(ref[f"sha256_{t}"])
    m = qwen_np.load(path, backend="numpy", prepared_cache=False)
    ids, greedy = ref["ids"].tolist(), ref[f"greedy_{t}"].tolist()
    theirs = ref[f"logits_{t}"]
    spread = theirs.std()
    diff = np.abs(m.logits(ids) - theirs) / spread                              # [12, V]
    close = diff.max(1) <= MAX_TOLERANCE
    # in an MoE model a position whose rounding flips an expert choice differs wholesale
    assert (~close).sum() <= (1 if model in MOE else 0), diff.max(1)
    assert diff[close].mean() <= MEAN_TOLERANCE, diff[close].mean()
    forced = m.logits(ids + greedy[:-1])[len(ids) - 1:]                       # [8, V]
    chosen = forced[np.arange(len(greedy)), greedy]
    assert (forced.max(1) - chosen <= MAX_TOLERANCE * spread).all()
    exact = forced.argmax(1) == np.array(greedy)
    assert exact.sum() >= len(greedy) - 1, exact


def test_metadata_is_the_converters(written):
    r = gguf.GGUFReader(written["qwen3-256", "Q4_K_M"])
    f = r.fields
    assert f["general.architecture"].contents() == "qwen3"
    assert f["qwen3.attention.key_length"].contents() == 128      # config.json's head_dim
    assert f["general.file_type"].contents() == 15
    assert f["general.quantization_version"].contents() == 2
    assert f["tokenizer.ggml.model"].contents() == "gpt2"
    assert f["tokenizer.ggml.pre"].contents() == "qwen2"
    assert f["tokenizer.ggml.eos_token_id"].contents() == 2           # tokenizer_config's
    assert f["tokenizer.ggml.add_bos_token"].contents() is False
    assert f["tokenizer.chat_template"].contents().startswith("{% for message")
    tokens = f["tokenizer.ggml.tokens"].contents()
    kinds = f["tokenizer.ggml.token_type"].contents()
    assert len(tokens) == 384 and tokens[2] == "<|im_end|>" and kinds[2] == 3
    assert tokens[383] == "[PAD383]" and kinds[383] == 5
    assert "qwen2.attention.key_length" not in gguf.GGUFReader(written["qwen2-256", "Q8_0"]).fields


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "qwen_np", "quantize", *args],
                          capture_output=True, text=True)


def test_cli_refuses_bad_types(tmp_path):
    src = os.path.join(FIXTURES, "qwen2-tied-f32")
    r = run_cli(src, str(tmp_path / "x.gguf"), "--type", "Q9_K")
    assert r.returncode == 1 and "Q4_0, Q5_0, Q8_0, Q4_K, Q5_K, Q6_K, Q4_K_M" in r.stderr
    r = run_cli(src, str(tmp_path / "folder"), "--type", "Q4_0")
    assert r.returncode == 1 and "*.gguf" in r.stderr
    r = run_cli(src, str(tmp_path / "x.gguf"))
    assert r.returncode == 1 and "needs --type" in r.stderr
    assert not (tmp_path / "x.gguf").exists()


def test_cli_writes_and_reports(tmp_path):
    """hidden 48: no block divides the rows, so llama.cpp's rule keeps them F16."""
    src = os.path.join(FIXTURES, "qwen2-tied-f32")
    r = run_cli(src, str(tmp_path / "x.gguf"), "--type", "Q8_0")
    assert r.returncode == 0, r.stderr
    assert "float source" in r.stdout and "F16" in r.stdout and " MB" in r.stdout
    import qwen_np
    ref = qwen_np.load(src, backend="numpy")
    got = qwen_np.load(str(tmp_path / "x.gguf"), backend="numpy", prepared_cache=False)
    np.testing.assert_allclose(got.logits([1, 2, 3]), ref.logits([1, 2, 3]), atol=0.05)


def test_cli_dequantizes_a_quantized_gguf_and_says_so(written, tmp_path):
    r = run_cli(written["qwen2-256", "Q8_0"], str(tmp_path / "y.gguf"), "--type", "Q4_K_M")
    assert r.returncode == 0, r.stderr
    assert "dequantized to float32 from Q8_0" in r.stdout
    assert "3 Q6_K" in r.stdout and "12 Q4_K" in r.stdout
    source = gguf.GGUFReader(written["qwen2-256", "Q8_0"])
    ours = gguf.GGUFReader(tmp_path / "y.gguf")
    assert list(ours.fields) == list(source.fields)               # the same keys, in order
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.chat_template"):
        assert ours.fields[key].contents() == source.fields[key].contents()


def test_missing_gguf_py_is_one_line(monkeypatch, tmp_path):
    from qwen_np.apps.quantize_gguf import quantize_to_gguf
    from qwen_np.errors import UnsupportedModel
    monkeypatch.setitem(sys.modules, "gguf", None)
    with pytest.raises(UnsupportedModel, match=r"pip install 'qwen-np\[gguf\]'"):
        quantize_to_gguf(os.path.join(FIXTURES, "qwen2-tied-f32"), str(tmp_path / "z.gguf"),
                         "Q8_0")


def test_a_nan_in_the_source_is_named(tmp_path):
    from qwen_np.apps.quantize_gguf import quantize_to_gguf
    from qwen_np.errors import FormatError
    from qwen_np.formats.safetensors import write_safetensors
    src = write_model("qwen2-256", str(tmp_path / "m"))
    t = model_tensors("qwen2-256")
    t["model.layers.1.mlp.up_proj.weight"][3, 5] = np.nan
    write_safetensors(str(tmp_path / "m" / "model.safetensors"), t, {"format": "pt"})
    with pytest.raises(FormatError, match="model.layers.1.mlp.up_proj.weight holds NaN"):
        quantize_to_gguf(src, str(tmp_path / "m.gguf"), "Q4_K")
    assert not (tmp_path / "m.gguf").exists() and not (tmp_path / "m.gguf.part").exists()
