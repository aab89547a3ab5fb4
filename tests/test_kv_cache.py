"""The KV cache kinds (float32, float16, int8) for every model: the per-position int8
quantizer's error bound worked out by hand, both backends' dequantization, and the cache's
effect on the logits of the transformers fixtures."""

import numpy as np
import pytest

import qwen_np
from conftest import fixture_path, rel_err
from qwen_np.backends import get_backend
from qwen_np.model.kv_cache import kv_cache_bytes, new_kv_cache, quantize_per_position, read_kv, write_kv
from qwen_np.errors import InputError
from qwen_np.apps.memory import preset_config

QWEN2 = fixture_path("qwen2-untied-f16")


def test_per_position_int8_error_is_at_most_half_a_step():
    """Each position and head spans [min, max] with 256 levels, rounding to the nearest:
    |x - x'| <= (max - min) / 255 / 2 (plus float32 rounding)."""
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((37, 3, 20)) * rng.uniform(0.01, 100, (37, 3, 1))).astype(np.float32)
    x[5, 1] = 7.25                                    # a constant row is stored exactly
    x[6, 0, :3] = [-3e4, 3e4, 0]                      # extreme spread in one row
    codes, scale, zero = quantize_per_position(x)
    be = get_backend("numpy")
    back = be.dequantize_kv(codes, scale, zero)
    step = (x.max(-1) - x.min(-1)) / 255
    assert np.all(np.abs(back - x) <= step[..., None] / 2 * (1 + 1e-5) + 1e-6 * np.abs(x))
    assert np.array_equal(back[5, 1], x[5, 1])
    assert codes.min() == 0 and codes.max() == 255


def test_numba_dequantizes_an_int8_cache_as_numpy_does():
    pytest.importorskip("numba")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((13, 2, 24)).astype(np.float32)
    codes, scale, zero = quantize_per_position(x)
    a = get_backend("numpy").dequantize_kv(codes, scale, zero)
    b = get_backend("numba").dequantize_kv(codes, scale, zero)
    assert np.array_equal(a, b)


@pytest.mark.parametrize("kind", ["float16", "int8", "int8-qwen"])
@pytest.mark.parametrize("H,Hkv,T,start", [(4, 4, 1, 0), (6, 3, 1, 29), (14, 2, 7, 0),
                                           (4, 2, 5, 11)])
def test_numba_attention_reads_the_cache_as_stored(kind, H, Hkv, T, start):
    """The Numba kernels that read a float16 or int8 cache in place agree with the reference,
    which converts it first."""
    pytest.importorskip("numba")
    from qwen_np.model.kv_cache import quantize_qwen_v1_chunk
    from qwen_np.tensors.int8_rows import Int8Rows
    rng = np.random.default_rng(3)
    S, Dh = start + T, 12
    q = rng.standard_normal((T, H, Dh)).astype(np.float32)
    k, v = (rng.standard_normal((S, Hkv, Dh)).astype(np.float32) * 3 for _ in range(2))
    if kind == "float16":
        k, v = k.astype(np.float16), v.astype(np.float16)
    else:
        quantize = quantize_qwen_v1_chunk if kind == "int8-qwen" else quantize_per_position
        k, v = Int8Rows(*quantize(k)), Int8Rows(*quantize(v))
    want = get_backend("numpy").attention(q, k, v, start)
    got = get_backend("numba").attention(q, k, v, start)
    assert rel_err(got, want) < 1e-5


def test_int8_cache_bytes_hand_count():
    """Qwen-7B at 2048 positions: 2 (K, V) x 32 layers x 2048 x 32 heads x (128 one-byte codes
    + a float32 scale and a float32 zero) = 4,194,304 x 136 = 570,425,344 bytes, against
    1,073,741,824 in float16."""
    cfg = preset_config("Qwen-7B")
    assert kv_cache_bytes(cfg, 2048, "int8") == 570_425_344
    assert kv_cache_bytes(cfg, 2048, "float16") == 1_073_741_824
    assert kv_cache_bytes(cfg, 2048, "float32") == 2 * 1_073_741_824


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_cache_kinds_on_a_transformers_fixture(backend):
    ref = np.load(QWEN2 + ".reference.npz")
    errs = {}
    for kind in ("float32", "float16", "int8"):
        model = qwen_np.load(QWEN2, backend=backend, kv_cache=kind)
        assert model.kv_cache == kind
        errs[kind] = rel_err(model.logits(ref["ids_1"]), ref["logits32_1"])
        assert model.generate(ref["prompt"], max_new_tokens=4, stop_ids=[]) == \
            ref["greedy"][:4].tolist()
    assert errs["float32"] < 1e-5
    assert errs["float16"] < 2e-3 and errs["int8"] < 2e-2
    assert errs["int8"] > errs["float16"] > errs["float32"]   # each does store less exactly


def test_cache_storage_and_reads():
    model = qwen_np.load(QWEN2, kv_cache="int8")
    cache = model.new_cache(5)
    assert cache.k[0].dtype == np.uint8 and cache.k_scale[0].shape == (5, 6)
    rng = np.random.default_rng(2)
    k = rng.standard_normal((3, 6, 8)).astype(np.float32)
    write_kv(cache, 0, 0, k, -k)
    rk, rv = (model.backend.kv_as_compute(x) for x in read_kv(cache, 0, 3))
    assert rk.dtype == np.float32 and rel_err(rk, k) < 0.01 and rel_err(rv, -k) < 0.01


def test_an_unknown_cache_kind_is_an_input_error():
    with pytest.raises(InputError, match="KV cache kind 'int4'"):
        qwen_np.load(QWEN2, kv_cache="int4")
    with pytest.raises(InputError, match="not supported"):
        new_kv_cache(qwen_np.load(QWEN2).config, 4, get_backend("numpy"), "bogus")


def test_memory_cli_counts_the_cache_kind():
    import subprocess
    import sys
    out = {}
    for kind in ("float32", "int8"):
        r = subprocess.run([sys.executable, "-m", "qwen_np", "memory", QWEN2, "--context", "64",
                            "--kv-cache", kind], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        line = next(l for l in r.stdout.splitlines() if l.strip().startswith("KV cache"))
        out[kind] = int(line.split()[2].replace(",", ""))
    cfg = qwen_np.load(QWEN2).config
    assert out["float32"] == kv_cache_bytes(cfg, 64, "float32") == \
        2 * cfg.num_hidden_layers * 64 * cfg.num_key_value_heads * cfg.head_dim * 4
    assert out["int8"] == 2 * cfg.num_hidden_layers * 64 * cfg.num_key_value_heads * (cfg.head_dim + 8)
