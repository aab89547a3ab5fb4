import json
import os
import struct

import numpy as np
import pytest

from conftest import fixture_path
from qwen_np.tensors.dense import BFloat16Array, as_compute, bfloat16_to_float32
from qwen_np.errors import FormatError
from qwen_np.formats.hf_dir import read_hf_dir
from qwen_np.tensors.mapped import mapping_of
from qwen_np.formats.safetensors import open_safetensors


def write_safetensors(path, tensors: dict[str, tuple[str, tuple, bytes]]):
    """A hand-built file: name -> (dtype code, shape, raw bytes)."""
    header, data = {}, b""
    for name, (code, shape, raw) in tensors.items():
        header[name] = {"dtype": code, "shape": list(shape),
                        "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + data)


def test_bfloat16_decoding_hand_worked():
    # 0x3F80 = 1.0, 0xC020 = -2.5, 0x0000 = 0, 0x7F80 = +inf, 0x3E20 = 0.15625
    bits = np.array([0x3F80, 0xC020, 0x0000, 0x7F80, 0x3E20], dtype=np.uint16)
    assert bfloat16_to_float32(bits).tolist() == [1.0, -2.5, 0.0, np.inf, 0.15625]


def test_reader_matches_the_safetensors_package(tmp_path):
    from safetensors.numpy import load_file, save_file
    rng = np.random.default_rng(0)
    arrays = {"a": rng.standard_normal((3, 5)).astype(np.float32),
              "b": rng.standard_normal(7).astype(np.float16),
              "c": rng.standard_normal((2, 2, 3)),
              "d": rng.integers(-2**31, 2**31, (4, 3)).astype(np.int32)}
    save_file(arrays, str(tmp_path / "x.safetensors"))
    ours = open_safetensors(str(tmp_path / "x.safetensors"))
    theirs = load_file(str(tmp_path / "x.safetensors"))
    for k in arrays:
        assert ours[k].dtype == theirs[k].dtype and np.array_equal(ours[k], theirs[k])


def test_tensors_are_memory_mapped_not_copied():
    t = open_safetensors(os.path.join(fixture_path("qwen2-tied-f32"), "model.safetensors"))
    w = t["model.embed_tokens.weight"]
    assert mapping_of(w) is not None   # a view into the file's memory map
    assert not w.flags.writeable       # mapped read-only


def test_bf16_shards_decode_like_torch():
    torch = pytest.importorskip("torch")
    safetensors_torch = pytest.importorskip("safetensors.torch")
    d = fixture_path("qwen2-untied-bf16-sharded")
    _, tensors, _ = read_hf_dir(d)
    for f in sorted(os.listdir(d)):
        if f.endswith(".safetensors"):
            for name, t in safetensors_torch.load_file(os.path.join(d, f)).items():
                assert t.dtype == torch.bfloat16
                assert isinstance(tensors[name], BFloat16Array)
                assert np.array_equal(as_compute(tensors[name], np.float32), t.float().numpy())


def test_truncated_file_names_the_tensor(tmp_path):
    p = tmp_path / "t.safetensors"
    write_safetensors(p, {"w": ("F32", (4, 4), np.ones(16, np.float32).tobytes())})
    raw = p.read_bytes()
    p.write_bytes(raw[:-10])
    with pytest.raises(FormatError, match=r"truncated: tensor w ends"):
        open_safetensors(str(p))
    p.write_bytes(raw[:5])
    with pytest.raises(FormatError, match="truncated safetensors file"):
        open_safetensors(str(p))


def test_size_disagreeing_with_shape_is_an_error(tmp_path):
    p = tmp_path / "t.safetensors"
    write_safetensors(p, {"w": ("F32", (4, 4), np.ones(15, np.float32).tobytes())})
    with pytest.raises(FormatError, match=r"tensor w: 60 bytes for shape \[4, 4\]"):
        open_safetensors(str(p))


def test_unknown_dtype_and_not_json(tmp_path):
    p = tmp_path / "t.safetensors"
    write_safetensors(p, {"w": ("F8_E4M3", (2,), b"\0\0")})
    with pytest.raises(FormatError, match="tensor w: unsupported dtype 'F8_E4M3'"):
        open_safetensors(str(p))
    p.write_bytes(struct.pack("<Q", 4) + b"abcd")
    with pytest.raises(FormatError, match="not valid JSON"):
        open_safetensors(str(p))


def test_missing_shard(tmp_path):
    import shutil
    d = tmp_path / "m"
    shutil.copytree(fixture_path("qwen2-untied-bf16-sharded"), d)
    os.remove(d / "model-00002-of-00003.safetensors")
    with pytest.raises(FormatError, match="shard model-00002-of-00003.safetensors is listed but missing"):
        read_hf_dir(str(d))
