"""Malformed model files: every class of defect gives a one-line QwenNpError naming the file,
from the API and from the CLI alike, without hanging, exhausting memory or reading outside
the model folder. Each case is built from a valid fixture by the formats' own tools where
one exists (gguf-py's GGUFReader patches GGUF fields in place) or by hand (JSON)."""

import json
import os
import shutil
import struct
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest

import qwen_np
from qwen_np.errors import CacheFull, FormatError, InputError, QwenNpError
from qwen_np.tensors.quantized import dequantize

from conftest import fixture_path

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as T  # noqa: E402
from gguf_writer import write_gguf_from_hf  # noqa: E402

F32_DIR = fixture_path("qwen2-tied-f32")
SHARDED_DIR = fixture_path("qwen2-untied-bf16-sharded")
GPTQ_DIR = fixture_path(os.path.join("quant", "gptqmodel-4bit-g32-sym"))


def clean_error(path, call=None):
    """The QwenNpError that loading (and using) `path` raises: one line, naming the path."""
    with pytest.raises(QwenNpError) as e:
        if call is None:
            m = qwen_np.load(path)
            m.generate(m.tokenizer.encode("def f"), max_new_tokens=2)
        else:
            call()
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg, msg
    return msg


def copy_of(src, tmp_path, name="model"):
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


def edit_json(path, change):
    d = json.loads(path.read_text())
    change(d)
    path.write_text(json.dumps(d))


# -- config.json and generation_config.json ----------------------------------------------

@pytest.mark.parametrize("key, value", [
    ("num_attention_heads", 0), ("num_attention_heads", [4]), ("hidden_size", None),
    ("hidden_size", "48"), ("vocab_size", float("inf")), ("num_key_value_heads", True),
    ("rms_norm_eps", float("inf")), ("rms_norm_eps", "1e-6"), ("rope_parameters", {"rope_theta": 0}),
    ("intermediate_size", 2**63), ("num_hidden_layers", -1), ("eos_token_id", [None]),
    ("eos_token_id", "2"), ("tie_word_embeddings", "yes"), ("rope_scaling", [1]),
    ("head_dim", {}), ("quantization_config", True), ("hidden_act", "gelu"),
    ("hidden_act", 1e308)])
def test_config_values_of_the_wrong_type_or_range(tmp_path, key, value):
    d = copy_of(F32_DIR, tmp_path)
    edit_json(d / "config.json", lambda c: c.__setitem__(key, value))
    assert (key if key != "rope_parameters" else "rope_theta") in clean_error(d)


def test_a_huge_layer_count_is_refused_at_once(tmp_path):
    for n in (10**6, 2**31 - 1):
        d = copy_of(F32_DIR, tmp_path, f"m{n}")
        edit_json(d / "config.json", lambda c: c.__setitem__("num_hidden_layers", n))
        start = time.perf_counter()
        assert "layers need at least" in clean_error(d)
        assert time.perf_counter() - start < 5


@pytest.mark.parametrize("name", ["config.json", "generation_config.json",
                                  "model.safetensors.index.json"])
def test_deeply_nested_json(tmp_path, name):
    d = copy_of(SHARDED_DIR, tmp_path)
    (d / name).write_text("[" * 100000 + "]" * 100000)
    assert name in clean_error(d)


@pytest.mark.parametrize("content", ["[]", "3", '{"eos_token_id": [null]}',
                                     '{"eos_token_id": {"a": 1}}', '{"a": 1, "a": 2}'])
def test_generation_config_of_the_wrong_type(tmp_path, content):
    d = copy_of(F32_DIR, tmp_path)
    (d / "generation_config.json").write_text(content)
    assert "generation_config.json" in clean_error(d)


@pytest.mark.parametrize("change, needle", [
    (lambda q: q.__setitem__("bits", None), "bits"),
    (lambda q: q.__setitem__("bits", "4"), "bits"),
    (lambda q: q.__setitem__("group_size", None), "group_size"),   # null: the default 128
    (lambda q: q.__setitem__("group_size", [32]), "group_size"),
    (lambda q: q.__setitem__("quant_method", ["gptq"]), "quant_method"),
    (lambda q: q.__setitem__("checkpoint_format", 3), "checkpoint_format")])
def test_quantization_config_values(tmp_path, change, needle):
    d = copy_of(GPTQ_DIR, tmp_path)
    edit_json(d / "config.json", lambda c: change(c["quantization_config"]))
    msg = clean_error(d)
    assert needle in msg or "shape" in msg      # group_size null = 128: the shapes disagree


# -- safetensors ------------------------------------------------------------------------

def rewrite_header(path, change, length_delta=0):
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    change(header)
    head = json.dumps(header).encode()
    head += b" " * (n - len(head)) if len(head) <= n else b""
    data = raw[8 + n:]
    if len(head) > n:   # a longer header moves the data: keep the offsets relative
        pass
    path.write_bytes(struct.pack("<Q", len(head) + length_delta) + head + data)


def first_tensor(header):
    return next(k for k in header if k != "__metadata__")


@pytest.mark.parametrize("change", [
    lambda h: h[first_tensor(h)].__setitem__("data_offsets", [-4, 0]),
    lambda h: h[first_tensor(h)].__setitem__("data_offsets", [0, 2**64]),
    lambda h: h[first_tensor(h)].__setitem__("shape", [2**63, 2**63]),
    lambda h: h[first_tensor(h)].__setitem__("shape", [-1]),
    lambda h: h[first_tensor(h)].__setitem__("dtype", ["F32"]),
    lambda h: h[first_tensor(h)].pop("shape"),
    lambda h: h[first_tensor(h)].pop("data_offsets"),
    lambda h: h.__setitem__(first_tensor(h), [1, 2]),
    lambda h: h.__setitem__("__metadata__", [1]),
])
def test_safetensors_header_entries(tmp_path, change):
    d = copy_of(F32_DIR, tmp_path)
    rewrite_header(d / "model.safetensors", change)
    assert "model.safetensors" in clean_error(d)


def test_overlapping_tensors_are_refused(tmp_path):
    d = copy_of(F32_DIR, tmp_path)

    def overlap(h):   # two tensors of the same size share their bytes
        names = [k for k in h if k.endswith("layernorm.weight")]
        h[names[1]]["data_offsets"] = h[names[0]]["data_offsets"]
    rewrite_header(d / "model.safetensors", overlap)
    assert "without gaps or overlaps" in clean_error(d) or "tensors end at" in clean_error(d)


@pytest.mark.parametrize("delta", [-1, 1])
def test_header_length_off_by_one(tmp_path, delta):
    d = copy_of(F32_DIR, tmp_path)
    rewrite_header(d / "model.safetensors", lambda h: None, length_delta=delta)
    assert "model.safetensors" in clean_error(d)


def test_header_length_near_the_file_size_and_nested_header(tmp_path):
    d = copy_of(F32_DIR, tmp_path)
    p = d / "model.safetensors"
    raw = p.read_bytes()
    p.write_bytes(struct.pack("<Q", len(raw) - 8) + raw[8:])
    assert "model.safetensors" in clean_error(d)
    p.write_bytes(struct.pack("<Q", 200000) + b"[" * 100000 + b"]" * 100000)
    assert "model.safetensors" in clean_error(d)


# -- the index and the folder: nothing is read outside it ---------------------------------

SECRET = "qwen-np-secret-4d1f"


@pytest.mark.parametrize("shard", ["../outside.safetensors", "{outside}", "/etc/passwd",
                                   "sub/../../outside.safetensors"])
def test_shard_names_stay_in_the_model_folder(tmp_path, shard):
    outside = tmp_path / "outside.safetensors"
    outside.write_text(SECRET * 10)
    d = copy_of(SHARDED_DIR, tmp_path)
    shard = shard.format(outside=outside)
    edit_json(d / "model.safetensors.index.json",
              lambda i: i["weight_map"].__setitem__(next(iter(i["weight_map"])), shard))
    msg = clean_error(d)
    assert "outside the model folder" in msg and SECRET not in msg


@pytest.mark.parametrize("index", [[], {"weight_map": []}, {"weight_map": {"a": 1}}, "x"])
def test_index_of_the_wrong_type(tmp_path, index):
    d = copy_of(SHARDED_DIR, tmp_path)
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    assert "model.safetensors.index.json" in clean_error(d)


# -- GGUF -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("gguf") / "tiny.gguf")
    write_gguf_from_hf(SHARDED_DIR, path, T.Q8_0)
    return path


def patched(tiny_gguf, tmp_path, patch):
    """A copy of the tiny GGUF with fields patched in place through gguf-py's reader."""
    p = tmp_path / "patched.gguf"
    shutil.copy(tiny_gguf, p)
    reader = gguf.GGUFReader(str(p), "r+")
    patch(reader)
    reader.data.flush()
    del reader
    return p


def set_value(key, value):
    def patch(reader):
        reader.fields[key].parts[-1][0] = value
    return patch


@pytest.mark.parametrize("key, value, needle", [
    ("qwen2.attention.head_count", 0, "head_count"),
    ("qwen2.block_count", 10**6, "layers need at least"),
    ("qwen2.embedding_length", 0, "embedding_length")])
def test_gguf_metadata_values(tiny_gguf, tmp_path, key, value, needle):
    p = patched(tiny_gguf, tmp_path, set_value(key, value))
    assert needle in clean_error(p)


@pytest.mark.parametrize("value", [0, 48])
def test_gguf_alignment_not_a_power_of_two(tmp_path, value):
    p = tmp_path / "x.gguf"
    p.write_bytes(gguf_bytes(gguf_string("general.alignment") + struct.pack("<II", 4, value), 1))
    assert "general.alignment" in clean_error(p)


def tensor_field(reader, i, part):
    """The part of tensor info i: 0 name length, 1 name, 2 n_dims, 3 dims, 4 type, 5 offset."""
    return reader.tensors[i].field.parts[part]


@pytest.mark.parametrize("patch, needle", [
    (lambda r: tensor_field(r, 0, 2).__setitem__(0, 0), "dimensions"),
    (lambda r: tensor_field(r, 0, 2).__setitem__(0, 9), "dimensions"),
    (lambda r: tensor_field(r, 1, 5).__setitem__(0, 0), "data offset"),      # overlaps tensor 0
    (lambda r: tensor_field(r, 0, 3).__setitem__(0, 2**63 - 32), "tensor"),
    (lambda r: tensor_field(r, 0, 0).__setitem__(0, 2**62), "tensor name length"),
])
def test_gguf_tensor_infos(tiny_gguf, tmp_path, patch, needle):
    assert needle in clean_error(patched(tiny_gguf, tmp_path, patch))


def test_gguf_counts_and_lengths_covering_the_file(tiny_gguf, tmp_path):
    size = os.path.getsize(tiny_gguf)
    tokens = "tokenizer.ggml.tokens"
    # parts of an array field: key length, key, value type, item type, count, then each
    # string's length and bytes
    for patch in (lambda r: r.fields[tokens].parts[4].__setitem__(0, size),      # array count
                  lambda r: r.fields[tokens].parts[4].__setitem__(0, 2**62),
                  lambda r: r.fields[tokens].parts[5].__setitem__(0, size - 100),  # a string
                  lambda r: r.fields["general.architecture"].parts[0].__setitem__(0, 2**40)):
        start = time.perf_counter()
        clean_error(patched(tiny_gguf, tmp_path, patch))
        assert time.perf_counter() - start < 5


def gguf_bytes(kv: bytes, n_kv: int, n_tensors: int = 0) -> bytes:
    return struct.pack("<IIQQ", 0x46554747, 3, n_tensors, n_kv) + kv


def gguf_string(s: str) -> bytes:
    raw = s.encode()
    return struct.pack("<Q", len(raw)) + raw


def test_gguf_nested_arrays_and_duplicate_keys(tmp_path):
    p = tmp_path / "x.gguf"
    nested = gguf_string("deep") + struct.pack("<I", 9) + (struct.pack("<IQ", 9, 1) * 1000)
    p.write_bytes(gguf_bytes(nested, 1))
    assert "array of value type 9" in clean_error(p)
    twice = (gguf_string("a") + struct.pack("<IB", 0, 1)) * 2
    p.write_bytes(gguf_bytes(twice, 2))
    assert "appears twice" in clean_error(p)
    p.write_bytes(gguf_bytes(b"", 2**60))
    assert "metadata count" in clean_error(p)


def test_gguf_merge_naming_a_token_outside_the_vocabulary(tiny_gguf, tmp_path):
    def flip(reader):
        merge = reader.fields["tokenizer.ggml.merges"]
        data = merge.parts[merge.data[0]]   # the first merge's bytes
        data[0] ^= 0x01                     # one bit flipped, as a corrupted file has it
    p = patched(tiny_gguf, tmp_path, flip)
    assert "tokenizer.ggml.merges[0]" in clean_error(p)


# -- the API's own errors ------------------------------------------------------------------

def test_a_full_kv_cache_is_a_named_error():
    m = qwen_np.load(F32_DIR)
    cache = qwen_np.model.kv_cache.new_kv_cache(m.config, 4, m.backend)
    with pytest.raises(CacheFull, match="KV cache holds 4 positions"):
        m.generate([1, 2, 3], max_new_tokens=8, cache=cache)


def test_bad_arguments_are_input_errors():
    m = qwen_np.load(F32_DIR)
    with pytest.raises(InputError):
        m.generate([], max_new_tokens=2)
    with pytest.raises(InputError):
        m.generate([1], max_new_tokens=-1)


def test_cli_keeps_the_traceback_of_a_bug(monkeypatch, capsys):
    """Only QwenNpError is a user error: an internal ValueError is not caught by main."""
    from qwen_np.apps import cli

    def broken(args):
        raise ValueError("an internal bug")
    monkeypatch.setattr(cli, "cmd_inspect", broken)
    with pytest.raises(ValueError, match="an internal bug"):
        cli.main(["inspect", F32_DIR])


# -- GPTQ with bfloat16 scales -------------------------------------------------------------

def test_gptq_bfloat16_scales_load_as_their_float16_twin(tmp_path):
    """Scales that bfloat16 and float16 both hold exactly (rounded to 7 mantissa bits) give
    the same weights whether the file stores them as F16 or as BF16; the F16 path is checked
    against GPTQModel's own dequantization (tests/test_quantized_models.py)."""
    from qwen_np.formats.safetensors import open_safetensors, write_safetensors
    from qwen_np.tensors.dense import BFloat16Array
    f16_dir, bf16_dir = copy_of(GPTQ_DIR, tmp_path, "f16"), copy_of(GPTQ_DIR, tmp_path, "bf16")
    tensors = open_safetensors(os.path.join(GPTQ_DIR, "model.safetensors"))
    f16, bf16 = dict(tensors), dict(tensors)
    for k, v in tensors.items():
        if k.endswith(".scales"):
            bits = (v.astype(np.float32).view(np.uint32) + 0x8000) & 0xFFFF0000   # round to bf16
            exact = bits.view(np.float32)
            f16[k] = exact.astype(np.float16)
            assert np.array_equal(f16[k].astype(np.float32), exact)
            bf16[k] = BFloat16Array((bits >> 16).astype(np.uint16))
    write_safetensors(str(f16_dir / "model.safetensors"), f16)
    write_safetensors(str(bf16_dir / "model.safetensors"), bf16)
    a, b = qwen_np.load(f16_dir), qwen_np.load(bf16_dir)
    assert np.array_equal(dequantize(a.weights.layers[0].q),
                          dequantize(b.weights.layers[0].q))
    ids = [1, 5, 9, 200]
    assert np.array_equal(a.logits(ids), b.logits(ids))


# -- found by tools/fuzz.py ------------------------------------------------------------------

def test_an_integer_of_thousands_of_digits(tmp_path):
    d = copy_of(F32_DIR, tmp_path)
    (d / "config.json").write_text((d / "config.json").read_text()
                                   .replace('"vocab_size": 384', '"vocab_size": 1' + "0" * 5000))
    assert "config.json: not valid JSON" in clean_error(d)


def test_rope_theta_null_in_rope_parameters_falls_back(tmp_path):
    d = copy_of(F32_DIR, tmp_path)
    edit_json(d / "config.json", lambda c: c["rope_parameters"].__setitem__("rope_theta", None))
    assert qwen_np.load(d).config.rope_theta == 10000.0


def test_a_tokenizer_that_makes_the_library_panic(tmp_path):
    d = copy_of(F32_DIR, tmp_path)
    edit_json(d / "tokenizer.json",
              lambda t: t["model"].__setitem__("continuing_subword_prefix", "/etc/passwd"))
    assert "tokenizer.json" in clean_error(d)


def test_gguf_tokenizer_model_of_the_wrong_type(tiny_gguf, tmp_path):
    p = tmp_path / "x.gguf"
    raw = open(tiny_gguf, "rb").read()
    key = gguf_string("tokenizer.ggml.model")
    at = raw.index(key) + len(key)
    (value_type,) = struct.unpack_from("<I", raw, at)
    assert value_type == 8                                  # a string: "gpt2"
    (n,) = struct.unpack_from("<Q", raw, at + 4)
    empty_array = struct.pack("<IIQ", 9, 0, 0)              # an empty uint8 array instead
    assert len(empty_array) == 4 + 8 + n                    # the same bytes: nothing moves
    p.write_bytes(raw[:at] + empty_array + raw[at + 4 + 8 + n:])
    assert "tokenizer array([], dtype=uint8)" in clean_error(p)


def test_non_finite_scales_convert_without_warnings(tiny_gguf, tmp_path):
    """A file's inf/NaN scale gives non-finite weights (not silently finite ones), and
    converting it prints no NumPy warning (the CLI's one-line error contract)."""
    from qwen_np.formats.gguf_blocks import block_rows_to_canonical
    blocks = np.zeros((2, 34), np.uint8)                      # two Q8_0 blocks
    blocks[0, :2] = np.array([np.inf], np.float16).view(np.uint8)
    blocks[1, :2] = np.array([np.nan], np.float16).view(np.uint8)
    blocks[:, 2:] = 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        qt = block_rows_to_canonical(blocks.reshape(2, 34), 8, (2, 32))
    with np.errstate(invalid="ignore"):
        w = dequantize(qt)
    assert not np.isfinite(w).any()


# -- non-finite scales and offsets: refused at load, by tensor (formats/open.py) -------------

def loads_with_one_clean_error(path):
    """The load's one-line error (clean_error), with any NumPy RuntimeWarning an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        return clean_error(path)


def set_block_d(gguf_name, row, value):
    """Patch: the float16 d of the first block of row `row` of a Q8_0 tensor (34-byte blocks)."""
    def patch(reader):
        t = next(t for t in reader.tensors if t.name == gguf_name)
        assert t.tensor_type == T.Q8_0
        raw = t.data.reshape(t.data.shape[0], -1)                  # [rows, bytes per row]
        raw[row, 0:2] = np.array([value], np.float16).view(np.uint8)
    return patch


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("gguf_name, hf_name, where", [
    ("blk.0.attn_q.weight", "model.layers.0.self_attn.q_proj.weight", "scale: {} at row 2, group 0"),
    # the untied embedding stays in its blocks (a lookup table): its d is read from them
    ("token_embd.weight", "model.embed_tokens.weight", "block scale (d, dmin or m): {} at row 2")])
def test_gguf_non_finite_block_scale(tiny_gguf, tmp_path, value, gguf_name, hf_name, where):
    p = patched(tiny_gguf, tmp_path, set_block_d(gguf_name, 2, value))
    msg = loads_with_one_clean_error(p)
    assert f"tensor {hf_name} has a non-finite {where.format(value)}" in msg, msg


def test_gguf_non_finite_scale_from_the_cli(tiny_gguf, tmp_path):
    p = patched(tiny_gguf, tmp_path, set_block_d("blk.1.ffn_up.weight", 0, np.nan))
    r = subprocess.run([sys.executable, "-m", "qwen_np", "run", "-m", str(p), "--backend",
                        "numpy", "-p", "a", "-n", "1"], capture_output=True, text=True, timeout=60)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, r.stderr          # no RuntimeWarning
    assert lines[0].startswith(f"qwen-np: error: {p}: tensor model.layers.1.mlp.up_proj.weight "
                               f"has a non-finite scale: nan"), r.stderr


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_gptq_non_finite_scale(tmp_path, value):
    """One GPTQ scale (file layout [G, out]: group 0 of output 3) made NaN or inf."""
    from qwen_np.formats.safetensors import open_safetensors, write_safetensors
    d = copy_of(GPTQ_DIR, tmp_path)
    tensors = dict(open_safetensors(str(d / "model.safetensors")))
    name = "model.layers.1.self_attn.o_proj.scales"
    scales = np.array(tensors[name])
    scales[0, 3] = value
    tensors[name] = scales
    write_safetensors(str(d / "model.safetensors"), tensors)
    msg = loads_with_one_clean_error(d)
    assert (f"tensor model.layers.1.self_attn.o_proj.weight has a non-finite scale: {value} "
            f"at row 3, group 0") in msg, msg


def test_q4_k_non_finite_dmin_is_a_non_finite_offset():
    """A K-quant's dmin makes its offsets (-dmin * m): a NaN or inf one is named as such, in
    a converted tensor and in a table left in its blocks."""
    from qwen_np.formats.gguf_blocks import block_rows_to_canonical
    from qwen_np.formats.gguf_qwen import block_lookup_table
    from qwen_np.formats.open import check_scales
    blocks = np.zeros((2, 144), np.uint8)                         # two rows of one Q4_K block
    blocks[:, 0:2] = np.array([0.5], np.float16).view(np.uint8)   # d finite
    blocks[1, 2:4] = np.array([np.inf], np.float16).view(np.uint8)  # dmin of row 1
    blocks[:, 4:16] = 1                                           # sub-block scales and mins
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        qt = block_rows_to_canonical(blocks, 12, (2, 256))
        with pytest.raises(FormatError, match=r"x\.gguf: tensor w has a non-finite offset: "
                                              r"-inf at row 1, group 0"):
            check_scales({"w": qt}, "x.gguf")
        with pytest.raises(FormatError, match=r"tensor e has a non-finite block scale "
                                              r"\(d, dmin or m\): inf at row 1, block 0"):
            check_scales({"e": block_lookup_table(blocks, 12, 256)}, "x.gguf")
