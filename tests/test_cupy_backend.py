"""The GPU backend's wiring: one-line errors without CuPy or without a GPU (API and CLI), what
it refuses (float64, an int8 KV cache), the weight layout its kernels read (kernels.cu), and
greedy decoding chosen on the device."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import qwen_np
from conftest import FIXTURE_MODELS, fixture_path
from qwen_np.backends import get_backend
from qwen_np.backends.cuda.backend import host_layout
from qwen_np.tensors.dense import BFloat16Array
from qwen_np.errors import BackendUnavailable, InputError
from qwen_np.tensors.quantized import dequantize
from qwen_np.tensors.packing import pack_codes, pack_high_bits
from qwen_np.tensors.quantized import QuantizedTensor, unpack_all_codes

HAVE_CUPY = subprocess.run([sys.executable, "-c", "import cupy"], capture_output=True).returncode == 0
MODEL = fixture_path(FIXTURE_MODELS[0])


def run_cli(*args, env_extra=None, code=None):
    env = dict(os.environ, **(env_extra or {}))
    cmd = [sys.executable, "-c", code] if code else [sys.executable, "-m", "qwen_np", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.skipif(HAVE_CUPY, reason="CuPy is installed here")
def test_without_cupy_the_cli_says_what_to_install():
    r = run_cli("run", "-m", MODEL, "-p", "hi", "-n", "2", "--backend", "cupy")
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "CuPy" in lines[0] and "pip install" in lines[0] \
        and "cupy-cuda12x" in lines[0], r.stderr


def test_with_cupy_but_no_gpu_the_error_says_so(tmp_path):
    """A CuPy whose runtime finds no driver (as on a machine without a GPU)."""
    fake = tmp_path / "cupy"
    fake.mkdir()
    (fake / "__init__.py").write_text(
        "class _Runtime:\n"
        "    @staticmethod\n"
        "    def getDeviceCount():\n"
        "        raise RuntimeError('cudaErrorInsufficientDriver: CUDA driver version is "
        "insufficient for CUDA runtime version')\n"
        "class cuda:\n    runtime = _Runtime\n")
    code = ("import qwen_np\n"
            f"try:\n    qwen_np.load({MODEL!r}, backend='cupy')\n"
            "except qwen_np.BackendUnavailable as e:\n    print('ERR', e)\n")
    path = os.pathsep.join([str(tmp_path)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    r = run_cli(code=code, env_extra={"PYTHONPATH": path})
    assert r.returncode == 0, r.stderr
    assert "ERR backend 'cupy': CuPy is installed but no CUDA GPU is usable " \
           "(cudaErrorInsufficientDriver" in r.stdout
    r = run_cli("run", "-m", MODEL, "-p", "hi", "-n", "2", "--backend", "cupy",
                env_extra={"PYTHONPATH": path})
    assert r.returncode != 0 and "no CUDA GPU is usable" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


@pytest.fixture(scope="module")
def emulated():
    if shutil.which("g++") is None:
        pytest.skip("no g++ to build the CPU emulation")
    from cupy_on_cpu import emulated_cupy_backend
    return emulated_cupy_backend()


def test_float64_and_an_int8_cache_are_refused(emulated):
    from qwen_np.backends.cuda.backend import CupyBackend
    with pytest.raises(BackendUnavailable, match="float32"):
        CupyBackend("float64", xp=emulated.xp)
    model = qwen_np.load(MODEL, backend=emulated, kv_cache="int8")
    with pytest.raises(InputError, match="backend 'cupy' keeps a KV cache of float32, float16"):
        model.generate([1, 2, 3], max_new_tokens=2)


def test_a_float16_cache_gives_the_float32_tokens(emulated):
    ids = [1, 17, 42, 99, 5]
    want = qwen_np.load(MODEL).generate(ids, max_new_tokens=6, stop_ids=[])
    got = qwen_np.load(MODEL, backend=emulated, kv_cache="float16")
    assert got.generate(ids, max_new_tokens=6, stop_ids=[]) == want


def test_greedy_decoding_takes_the_id_from_the_device(emulated, monkeypatch):
    """Greedy generation asks the backend for the id (no logits come back to the host)."""
    model = qwen_np.load(MODEL, backend=emulated)
    calls = []
    monkeypatch.setattr(emulated, "to_numpy",
                        lambda x: calls.append(x.shape) or emulated.xp.asnumpy(x))
    model.generate([1, 2, 3], max_new_tokens=4, stop_ids=[])
    assert calls and all(shape == (1,) for shape in calls), calls


def test_token_ids_outside_the_vocabulary_are_an_error(emulated):
    table = np.zeros((10, 32), np.float32)
    with pytest.raises(InputError, match="outside the vocabulary"):
        emulated.embed(table, [3, 10])


def codes_from_layout(lay, bits, rows, n):
    """Read the codes back from the GPU layout as kernels.cu's drawing says they lie."""
    main = lay["main"]
    if bits == 8:
        return main[:, :n]
    low = np.stack([main & 15, main >> 4], axis=-1).reshape(rows, -1)
    if bits == 4:
        return low[:, :n]
    per = {5: 1, 6: 2}[bits - 0]
    hi = lay["high"]
    k = np.arange(lay["n_pad"])
    bitsplane = (hi[:, k * per // 8] >> ((k * per) % 8)) & ((1 << per) - 1)
    return (low | (bitsplane << 4))[:, :n]


@pytest.mark.parametrize("bits", [4, 5, 6, 8])
@pytest.mark.parametrize("n", [201, 256])
def test_the_layout_is_the_drawn_one(bits, n):
    rng = np.random.default_rng(bits)
    rows, group = 5, 64
    q = rng.integers(0, 1 << bits, (rows, n))
    G = -(-n // group)
    w = QuantizedTensor((rows, n), bits, group,
                        pack_codes(q if bits in (4, 8) else q & 15, 8 if bits == 8 else 4),
                        rng.uniform(0.01, 0.1, (rows, G)).astype(np.float16),
                        rng.uniform(-1, 1, (rows, G)).astype(np.float32),
                        high=None if bits in (4, 8) else pack_high_bits(q >> 4, bits - 4))
    lay = host_layout(w)
    n_pad = -(-n // 32) * 32
    assert lay["n_pad"] == n_pad and lay["main"].shape[1] % 16 == 0
    assert np.array_equal(codes_from_layout(lay, bits, rows, n), unpack_all_codes(w, slice(None)))
    assert lay["half_scales"] == 0 and lay["scale"].dtype == np.float32  # offsets need float32
    # whole chunks cost nothing: the layout is the canonical form's own bytes
    if n == 256:
        canonical = w.codes.nbytes + (0 if w.high is None else w.high.nbytes)
        assert lay["main"].nbytes + (0 if w.high is None else lay["high"].nbytes) == canonical


def test_bfloat16_rows_keep_their_bits():
    bits = np.random.default_rng(0).integers(0, 1 << 16, (3, 40), dtype=np.uint16)
    lay = host_layout(BFloat16Array(bits))
    assert lay["fmt"] == 17 and lay["n_pad"] == 64
    assert np.array_equal(lay["main"].view(np.uint16)[:, :40], bits)
    assert not lay["main"].view(np.uint16)[:, 40:].any()


def test_a_prepared_matrix_dequantizes_as_the_reference(emulated):
    """prepare uploads; embedding every row back gives dequantize() exactly."""
    rng = np.random.default_rng(1)
    q = rng.integers(0, 16, (9, 70))
    w = QuantizedTensor((9, 70), 4, 32, pack_codes(q, 4),
                        rng.uniform(0.01, 0.1, (9, 3)).astype(np.float16),
                        rng.uniform(-1, 1, (9, 3)).astype(np.float16))
    m = emulated.prepare(w)
    assert m.half_scales == 1
    assert np.array_equal(emulated.to_numpy(emulated.embed(m, np.arange(9))), dequantize(w))


def test_get_backend_names_cupy():
    with pytest.raises(BackendUnavailable, match="cupy"):
        if HAVE_CUPY:
            pytest.skip("CuPy is installed here")
        get_backend("cupy")


@pytest.mark.parametrize("name", ["moe/qwen2moe-step2-f32", "moe/gptqmodel-qwen3moe-4bit-g32-sym",
                                  "yarn/qwen3moe-yarn4"])
def test_moe_and_yarn_run_on_the_cuda_kernels(emulated, name):
    """The mixture of experts (experts picked on the host from the router's logits, each
    expert's matrices through the GPU product) and YaRN's factor on cos and sin, against
    transformers' (or GPTQModel's) logits."""
    ref = np.load(fixture_path(name) + ".reference.npz")
    ids = ref["ids_1"] if "ids_1" in ref.files else ref["ids"]
    want = ref["logits32_1"] if "logits32_1" in ref.files else ref["logits"]
    got = qwen_np.load(fixture_path(name), backend=emulated).logits(ids)
    assert float(np.max(np.abs(got - want)) / np.max(np.abs(want))) < 1e-4
