"""Every available backend against the NumPy reference, op by op, on random inputs of awkward
shapes (odd token counts, group tails, one token and many, GQA ratios 1, 2 and 7) and on
extreme values (gates and attention scores whose exp overflows float32, zero and huge rows),
then whole models. Tolerances are float32 ones, stated per op (max |a - b| / max |b|)."""

import copy
import importlib.util
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import FIXTURE_MODELS, fixture_path, rel_err
from qwen_np.backends import get_backend
from qwen_np.errors import BackendUnavailable
from qwen_np.tensors.dense import BFloat16Array
from qwen_np.model.rope import rope_inv_freq
from qwen_np.tensors.quantized import QuantizedTensor
from qwen_np.formats.gguf_blocks import BLOCK_TYPES, block_rows_to_canonical
from qwen_np.formats.gptq import gptq_to_canonical
from qwen_np.tensors.packing import pack_codes, pack_high_bits, pack_int32_words
from qwen_np.tensors.rtn import quantize_rtn, rtn_to_canonical
from qwen_np.tensors.quantized import smallest_exact_float

# "cupy-on-cpu": the GPU backend's own code and kernels.cu, run on the CPU (tests/cupy_on_cpu.py);
# "cupy": the same on a GPU, where there is one (else skipped, saying why).
OTHER_BACKENDS = [b for b, mod in (("numba", "numba"),) if importlib.util.find_spec(mod)] \
    + (["cupy-on-cpu"] if shutil.which("g++") else []) + ["cupy"]
rng = np.random.default_rng(0)
TOL = {"linear": 1e-5, "embed": 0.0, "rms_norm": 1e-6, "rope": 1e-6, "attention": 1e-5,
       "silu_mul": 1e-6, "logits": 1e-4}


@pytest.fixture(params=OTHER_BACKENDS)
def be(request):
    if request.param == "cupy-on-cpu":
        from cupy_on_cpu import emulated_cupy_backend
        return emulated_cupy_backend()
    try:
        return get_backend(request.param)
    except BackendUnavailable as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def ref():
    return get_backend("numpy")


def test_every_backend_has_the_protocols_ops_with_its_parameters(be, ref):
    """backends/protocol.py's Backend names every op; each backend (the reference too) has
    each of them, with the Protocol's parameters in the Protocol's order."""
    import inspect
    from qwen_np.backends.protocol import OPS, Backend
    protocol_members = {n for n in dir(Backend) if not n.startswith("_")}
    assert set(OPS) == protocol_members | {"name", "dtype"}
    for backend in (ref, be):
        assert isinstance(backend, Backend), type(backend).__name__
        for op in OPS:
            assert hasattr(backend, op), (type(backend).__name__, op)
            if op in ("name", "dtype"):
                continue
            want = list(inspect.signature(getattr(Backend, op)).parameters)[1:]
            got = list(inspect.signature(getattr(backend, op)).parameters)
            assert got[:len(want)] == want, (type(backend).__name__, op, got, want)
            extra = list(inspect.signature(getattr(backend, op)).parameters.values())[len(want):]
            assert all(p.default is not inspect.Parameter.empty for p in extra), \
                (type(backend).__name__, op, "an extra parameter without a default")


def rtn(w: np.ndarray, bits: int, group_size: int, sym: bool = True) -> QuantizedTensor:
    """Our RTN quantizer's codes as a canonical tensor, of any width: 4 and 8 bits as
    rtn_to_canonical packs them, 5 and 6 bits split into a nibble plane and a high plane as the
    GGUF converter splits them (group_size -1: one group per row)."""
    if bits in (4, 8):
        return rtn_to_canonical(*quantize_rtn(w, bits, group_size, sym), bits, group_size)
    q, zero, scale = quantize_rtn(w, bits, group_size, sym)
    offset = smallest_exact_float(-(scale.astype(np.float32) * zero.astype(np.float32)))
    return QuantizedTensor(shape=w.shape, bits=bits,
                           group_size=w.shape[1] if group_size == -1 else group_size,
                           codes=pack_codes(q & 15, 4), scale=scale, offset=offset,
                           high=pack_high_bits(q >> 4, bits - 4))


def quantized_weights():
    """One of each canonical form: RTN with group tails, per-channel and odd widths, GPTQ
    act-order, and every GGUF block type (5- and 6-bit planes included). Row counts are mostly
    not a multiple of 16 (the Numba tiles' width)."""
    out = {}
    w = rng.standard_normal((37, 200)).astype(np.float32)   # 4-bit: not whole 32-code blocks
    out["rtn4-g64-tail"] = rtn_to_canonical(*quantize_rtn(w, 4, 64, False), 4, 64)
    out["rtn8-g48-tail"] = rtn_to_canonical(*quantize_rtn(w, 8, 48, True), 8, 48)
    out["rtn4-perchannel"] = rtn_to_canonical(*quantize_rtn(w, 4, -1, True), 4, -1)
    out["rtn4-g9-odd"] = rtn_to_canonical(*quantize_rtn(w, 4, 9, True), 4, 9)
    w2 = rng.standard_normal((21, 256)).astype(np.float32)
    out["rtn4-g64-blocks"] = rtn_to_canonical(*quantize_rtn(w2, 4, 64, False), 4, 64)
    q = rng.integers(0, 16, (64, 24))
    z = rng.integers(1, 16, (2, 24))
    s = rng.uniform(0.01, 0.1, (2, 24)).astype(np.float16)
    g_idx = (np.arange(64) // 32)[rng.permutation(64)].astype(np.int32)
    out["gptq-actorder"] = gptq_to_canonical("m", pack_int32_words(q, 4, 0),
                                             pack_int32_words(z - 1, 4, 1), s, g_idx, 4, 32,
                                             False, (24, 64))
    for type_id, (name, block, size, _, _) in BLOCK_TYPES.items():
        raw = rng.integers(0, 256, (9, 2 * size), dtype=np.uint8).reshape(9, 2, size)
        for at in ((208,) if name == "Q6_K" else (0, 2) if name in ("Q4_1", "Q5_1", "Q4_K", "Q5_K")
                   else (0,)):
            raw[..., at:at + 2] = rng.uniform(-0.1, 0.1, (9, 2)).astype(np.float16) \
                .view(np.uint8).reshape(9, 2, 2)
        out[name] = block_rows_to_canonical(raw.reshape(9, -1), type_id, (9, 2 * block))
    # Rows of whole 32-code blocks whose last group is partial (96 = 64 + 32, 896 = 3 x 256
    # + 128, 200 = 3 x 64 + 8), or one group wider than the row: the one-token kernels must
    # stop at the row's end.
    for bits in (4, 5):
        out[f"rtn{bits}-g64-in96"] = rtn(rng.standard_normal((37, 96)), bits, 64, False)
        out[f"rtn{bits}-g256-in896"] = rtn(rng.standard_normal((48, 896)), bits, 256)
    out["rtn4-g128-in96"] = rtn(rng.standard_normal((21, 96)), 4, 128)
    out["rtn6-g64-in200"] = rtn(rng.standard_normal((37, 200)), 6, 64, False)
    out["rtn6-perchannel-in200"] = rtn(rng.standard_normal((21, 200)), 6, -1)
    out["rtn8-g64-in200"] = rtn(rng.standard_normal((37, 200)), 8, 64, False)
    # Per-channel (group_size == in) with an odd width, every code width.
    for bits in (4, 5, 6, 8):
        out[f"rtn{bits}-perchannel-in201"] = rtn(rng.standard_normal((21, 201)), bits, -1)
    return out


QW = quantized_weights()


def inputs(T: int, n: int) -> np.ndarray:
    """x [T, n] as the first n columns of a wider array whose other columns are NaN, so that a
    kernel that reads past the end of x's row returns NaN (one token: the view is contiguous
    and reaches the kernel as it is)."""
    wide = np.full((T, n + 64), np.nan, np.float32)
    wide[:, :n] = rng.standard_normal((T, n))
    return wide[:, :n]


@pytest.mark.parametrize("name", sorted(QW))
@pytest.mark.parametrize("T", [1, 7])
def test_linear_quantized(be, ref, name, T):
    w = QW[name]
    x = inputs(T, w.shape[1])
    bias = rng.standard_normal(w.shape[0]).astype(np.float32)
    assert rel_err(be.to_numpy(be.linear(be.asarray(x), w, bias)), ref.linear(x, w, bias)) \
        < TOL["linear"]


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("T", [1, 5])
def test_linear_dense(be, ref, dtype, T):
    w32 = rng.standard_normal((33, 70)).astype(np.float32)
    w = BFloat16Array((w32.view(np.uint32) >> 16).astype(np.uint16)) if dtype == "bfloat16" \
        else w32.astype(dtype)
    x = rng.standard_normal((T, 70)).astype(np.float32)
    assert rel_err(be.to_numpy(be.linear(be.asarray(x), w)), ref.linear(x, w)) < TOL["linear"]


@pytest.mark.parametrize("name", ["rtn4-g64-tail", "gptq-actorder", "Q5_0", "Q6_K", "Q8_0",
                                  "rtn4-g64-in96", "rtn5-g256-in896", "rtn6-g64-in200",
                                  "rtn4-perchannel-in201", "rtn5-perchannel-in201",
                                  "rtn6-perchannel-in201", "rtn8-perchannel-in201"])
def test_embed(be, ref, name):
    ids = [3, 0, 3, 8, QW[name].shape[0] - 1]
    assert rel_err(be.to_numpy(be.embed(QW[name], ids)), ref.embed(QW[name], ids)) <= TOL["embed"]


@pytest.mark.parametrize("name", sorted(QW))
@pytest.mark.parametrize("T", [1, 7])
def test_prepared_and_unprepared_weights_agree(be, ref, name, T):
    """`prepare` changes a weight's layout, never its numbers: linear (the same kernels, so the
    same bits) and embed (other kernels: float32 rounding apart) read either form alike, and
    both match the reference."""
    w = QW[name]
    prepared = be.prepare(copy.deepcopy(w))    # may re-lay the arrays in place
    x = inputs(T, w.shape[1])
    y = be.to_numpy(be.linear(be.asarray(x), prepared))
    assert np.array_equal(y, be.to_numpy(be.linear(be.asarray(x), w)))
    assert rel_err(y, ref.linear(x, w)) < TOL["linear"]
    ids = [0, w.shape[0] - 1, 3, 3]
    rows = be.to_numpy(be.embed(prepared, ids))
    assert rel_err(rows, be.to_numpy(be.embed(w, ids))) < 1e-6
    assert rel_err(rows, ref.embed(w, ids)) < 1e-6


@pytest.mark.parametrize("shape", [(1, 64), (7, 48), (5, 3, 12)])
def test_rms_norm(be, ref, shape):
    x = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal(shape[-1]).astype(np.float32)
    assert rel_err(be.to_numpy(be.rms_norm(be.asarray(x), w, 1e-6)), ref.rms_norm(x, w, 1e-6)) \
        < TOL["rms_norm"]


@pytest.mark.parametrize("T,start", [(1, 0), (1, 37), (9, 4)])
def test_rope(be, ref, T, start):
    x = rng.standard_normal((T, 6, 16)).astype(np.float32)
    pos = np.arange(start, start + T)
    inv = rope_inv_freq(16, 1e6)
    assert rel_err(be.to_numpy(be.rope(be.asarray(x), pos, inv)), ref.rope(x, pos, inv)) \
        < TOL["rope"]


@pytest.mark.parametrize("rope_dim", [2, 6, 10])
def test_partial_rope(be, ref, rope_dim):
    """The original Qwen's rotary_pct < 1: the first rope_dim dims rotate, the rest pass."""
    x = rng.standard_normal((5, 3, 12)).astype(np.float32)
    pos = np.arange(40, 45)
    inv = rope_inv_freq(rope_dim, 1e4)
    got = be.to_numpy(be.rope(be.asarray(x), pos, inv))
    assert rel_err(got, ref.rope(x, pos, inv)) < TOL["rope"]
    assert np.array_equal(got[..., rope_dim:], x[..., rope_dim:])


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_decoding_16_bit_weights_with_extreme_values(be, ref, dtype):
    """One token through a 16-bit matrix (the Numba backend decodes each pattern through a
    table): subnormals, the largest finite values, zeros of both signs, and a row with inf and
    one with NaN give what the reference gives."""
    w32 = rng.standard_normal((37, 45)).astype(np.float32)
    big = 65504.0 if dtype == "float16" else 3.0e38
    w32[0, :4] = [6e-8, -6e-8, big, -big] if dtype == "float16" else [1e-40, -1e-40, big, -big]
    w32[1, :2] = [0.0, -0.0]
    w32[2, 5] = np.inf
    w32[3, 7] = np.nan
    w = BFloat16Array((w32.view(np.uint32) >> 16).astype(np.uint16)) if dtype == "bfloat16" \
        else w32.astype(np.float16)
    x = rng.standard_normal((1, 45)).astype(np.float32) * 1e-3
    got, want = be.to_numpy(be.linear(be.asarray(x), w)), ref.linear(x, w)
    assert np.array_equal(np.isnan(got), np.isnan(want)) and np.isnan(got[0, 3])
    assert np.isinf(got[0, 2]) and np.sign(got[0, 2]) == np.sign(want[0, 2])
    finite = np.isfinite(want)
    assert rel_err(got[finite], want[finite]) < TOL["linear"]


@pytest.mark.parametrize("H,Hkv", [(4, 4), (6, 3), (14, 2)])    # GQA ratios 1, 2, 7
@pytest.mark.parametrize("T,start", [(1, 0), (1, 23), (7, 0), (5, 11)])
def test_attention(be, ref, H, Hkv, T, start):
    Dh, S = 8, start + T
    q = rng.standard_normal((T, H, Dh)).astype(np.float32)
    k = rng.standard_normal((S, Hkv, Dh)).astype(np.float32)
    v = rng.standard_normal((S, Hkv, Dh)).astype(np.float32)
    got = be.to_numpy(be.attention(be.asarray(q), be.asarray(k), be.asarray(v), start))
    assert rel_err(got, ref.attention(q, k, v, start)) < TOL["attention"]


@pytest.mark.parametrize("name", sorted(QW) + ["dense-float32", "dense-float16"])
@pytest.mark.parametrize("B", [2, 5])
def test_linear_rows(be, ref, name, B):
    """Rows of B sequences decoded together: each row what the backend's own linear gives
    for it alone (bit for bit: a sequence's tokens do not depend on its batch), and the
    reference's rows to float32 rounding."""
    w = QW[name] if name in QW else rng.standard_normal((33, 70)).astype(name[6:])
    x = inputs(B, w.shape[1])
    bias = rng.standard_normal(w.shape[0]).astype(np.float32)
    prepared = be.prepare(copy.deepcopy(w))
    together = be.to_numpy(be.linear_rows(be.asarray(x), prepared, bias))
    alone = np.concatenate([be.to_numpy(be.linear(be.asarray(x[b:b + 1]), prepared, bias))
                            for b in range(B)])
    assert np.array_equal(together, alone)
    assert rel_err(together, ref.linear_rows(x, w, bias)) < TOL["linear"]


@pytest.mark.parametrize("kind", ["float32", "float16"])
@pytest.mark.parametrize("H,Hkv", [(4, 4), (14, 2)])
def test_attention_slots(be, ref, kind, H, Hkv):
    """One new token of each of B sequences, each over its own slot of the cache and its own
    length (one to past a part of the one-token kernel): the backend's one-token attention
    for each alone, bit for bit, and the reference's to float32 rounding."""
    Dh, n_slots, S = 8, 5, 700
    lengths = [1, 23, 700, 300]
    slot_ids = [3, 0, 4, 1]
    q = rng.standard_normal((4, H, Dh)).astype(np.float32)
    k = rng.standard_normal((n_slots, S, Hkv, Dh)).astype(kind)
    v = rng.standard_normal((n_slots, S, Hkv, Dh)).astype(kind)
    got = be.to_numpy(be.attention_slots(be.asarray(q), be.asarray(k) if kind == "float32"
                                         else k, v if kind != "float32" else be.asarray(v),
                                         slot_ids, lengths))
    for b, (s, n) in enumerate(zip(slot_ids, lengths)):
        alone = be.to_numpy(be.attention(be.asarray(q[b:b + 1]), k[s, :n], v[s, :n], n - 1))
        assert np.array_equal(got[b:b + 1], alone), b
    assert rel_err(got, ref.attention_slots(q, k, v, slot_ids, lengths)) < TOL["attention"]


@pytest.mark.parametrize("shape", [(1, 96), (7, 33)])
def test_silu_mul(be, ref, shape):
    g = (rng.standard_normal(shape) * 6).astype(np.float32)
    u = rng.standard_normal(shape).astype(np.float32)
    assert rel_err(be.to_numpy(be.silu_mul(be.asarray(g), be.asarray(u))), ref.silu_mul(g, u)) \
        < TOL["silu_mul"]


GATES = [-1000, -100, -90, -89, -88.7, -88, -87, -50, -1, -0.0, 0.0, 1, 50, 88, 89, 100, 1000]
UPS = [1, -1, 0, 3.5, -2e-30, 1e36]


@pytest.mark.parametrize("width", [len(GATES), 99])      # a remainder loop alone; and vectors
def test_silu_mul_extreme_gates(be, ref, width):
    """Below a gate of about -88.7, exp(-g) overflows float32: silu(g) = g / inf = -0, and
    the reference's product is a signed zero, never NaN (one NaN would reach every logit).
    Each element is compared on its own, relative to itself: values span 1e-37 to inf."""
    g = np.resize(np.array(GATES, np.float32), width)[None].repeat(len(UPS), 0)   # [6, width]
    u = np.array(UPS, np.float32)[:, None].repeat(width, 1)
    got = be.to_numpy(be.silu_mul(be.asarray(g), be.asarray(u)))
    want = ref.silu_mul(g, u)
    assert not np.isnan(got).any()
    assert np.array_equal(np.isinf(got), np.isinf(want)) and np.array_equal(got[np.isinf(got)],
                                                                            want[np.isinf(want)])
    finite = np.isfinite(want)
    assert np.all(np.abs(got[finite] - want[finite]) <= TOL["silu_mul"] * np.abs(want[finite]))
    zero = want == 0
    assert np.array_equal(np.signbit(got[zero]), np.signbit(want[zero]))


@pytest.mark.parametrize("kind", ["scores-to-1000", "scores-to-100", "all-far-below-zero"])
def test_attention_scores_beyond_exp_range(be, ref, kind):
    """Scores q.k / sqrt(Dh) of hundreds, where exp overflows float32 unless the row's
    maximum is taken off first, and a row whose scores are all far below zero. q and k are
    small integers with Dh = 16, so the scores are exact in float32 in any summation order
    and the backends differ only in exp and the softmax. One query row is zero, and so is one
    key where the scores need not all be far below zero."""
    T, H, Hkv, Dh, start = 3, 4, 2, 16, 5
    S = start + T
    m = {"scores-to-1000": 40, "scores-to-100": 12, "all-far-below-zero": 8}[kind]
    draw = np.random.default_rng(3)      # its own stream: the scores' range is asserted below
    q = draw.integers(-m, m + 1, (T, H, Dh)).astype(np.float32)
    k = draw.integers(-m, m + 1, (S, Hkv, Dh)).astype(np.float32)
    if kind == "all-far-below-zero":     # every score -m * m * Dh / 4 = -256
        q[:] = m
        k[:] = -m
    else:
        k[2] = 0.0
    q[1, 2] = 0.0
    v = draw.standard_normal((S, Hkv, Dh)).astype(np.float32)
    scores = np.einsum("thd,shd->ths", q, np.repeat(k, H // Hkv, axis=1)) / 4
    assert np.abs(scores).max() > {"scores-to-1000": 1000, "scores-to-100": 100,
                                   "all-far-below-zero": 200}[kind]
    got = be.to_numpy(be.attention(be.asarray(q), be.asarray(k), be.asarray(v), start))
    assert not np.isnan(got).any()
    assert rel_err(got, ref.attention(q, k, v, start)) < TOL["attention"]


def test_rms_norm_zero_and_huge_rows(be, ref):
    """A row of zeros (eps keeps it finite: zeros out), rows whose sum of squares is near
    float32's top (1e18) or past it (1e25: the reference divides by sqrt(inf) and gives
    zeros, never NaN; so does a row with a few values of 1e30), and tiny ones (1e-30: eps
    dominates). Compared row by row, as their scales differ by 1e55."""
    x = rng.standard_normal((6, 64)).astype(np.float32)
    x[0] = 0.0
    x[1] *= np.float32(1e18)
    x[2] *= np.float32(1e25)
    x[3] *= np.float32(1e-30)
    x[4, :5] = np.float32(1e30)
    w = rng.standard_normal(64).astype(np.float32)
    got = be.to_numpy(be.rms_norm(be.asarray(x), w, 1e-6))
    with np.errstate(over="ignore"):
        want = ref.rms_norm(x, w, 1e-6)
    assert not np.isnan(got).any() and not np.isnan(want).any()
    for r in range(x.shape[0]):
        if not want[r].any():
            assert not got[r].any(), r
        else:
            assert rel_err(got[r], want[r]) < TOL["rms_norm"], r


QUANT_FIXTURES = ["quant/gptqmodel-4bit-g32-descact-asym", "quant/gptqmodel-8bit-g64-sym",
                  "quant/autoawq-4bit-g32-gemm"]


@pytest.mark.parametrize("name", FIXTURE_MODELS + QUANT_FIXTURES)
def test_whole_model_logits_and_cached_decoding(be, name):
    import qwen_np
    ours = qwen_np.load(fixture_path(name), backend=be)
    reference = qwen_np.load(fixture_path(name))
    ids = [1, 17, 42, 99, 5, 64, 7, 11, 200]
    assert rel_err(ours.logits(ids), reference.logits(ids)) < TOL["logits"]
    assert ours.generate(ids[:3], max_new_tokens=8, stop_ids=[]) == \
        reference.generate(ids[:3], max_new_tokens=8, stop_ids=[])


def test_numpy_backend_works_without_numba():
    code = ("import sys; sys.modules['numba'] = None\n"
            "import qwen_np\n"
            f"m = qwen_np.load({fixture_path(FIXTURE_MODELS[0])!r})\n"
            "print(m.generate([1, 2, 3], max_new_tokens=3))\n"
            "try:\n    qwen_np.load(m.source, backend='numba')\n"
            "except qwen_np.BackendUnavailable as e:\n    print('ERR', e)\n"
            "print('AUTO', qwen_np.load(m.source, backend='auto').backend.name)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "ERR backend 'numba'" in r.stdout and "pip install" in r.stdout
    assert "AUTO numpy" in r.stdout        # auto falls back, saying so in one line
    notice = [line for line in r.stderr.splitlines() if "running the numpy backend" in line]
    assert len(notice) == 1 and "numba" in notice[0]


@pytest.mark.skipif("numba" not in OTHER_BACKENDS, reason="numba is not installed")
@pytest.mark.parametrize("name", sorted(QW))
@pytest.mark.parametrize("T", [1, 7])
def test_numba_kernels_take_the_block_shapes(monkeypatch, name, T):
    """Every GGUF block type, 4/5-bit rows of whole 32-code blocks in groups of whole blocks,
    the last group partial or not (act-order too: x is permuted first), 6-bit rows and groups
    of whole 4-code bytes, and any 8-bit matrix run in the Numba kernels, not in the NumPy
    fallback (which would give the same numbers, only slower); 4/5-bit rows of part of a
    block (in=200, 201) and odd groups fall back."""
    nb = sys.modules[type(get_backend("numba")).__module__]
    w = QW[name]
    expected = name in BLOCK_NAMES or name in TILED
    assert nb.tiles_take(w) == expected
    calls = []
    monkeypatch.setattr(nb, "numpy_linear", lambda x, w: calls.append(1) or
                        get_backend("numpy").linear(x, w))
    x = rng.standard_normal((T, w.shape[1])).astype(np.float32)
    get_backend("numba").linear(x, w)
    assert bool(calls) != expected


BLOCK_NAMES = {name for name, *_ in BLOCK_TYPES.values()}
TILED = {"rtn4-g64-blocks", "rtn8-g48-tail", "gptq-actorder", "rtn4-g64-in96", "rtn5-g64-in96",
         "rtn4-g256-in896", "rtn5-g256-in896", "rtn4-g128-in96", "rtn6-g64-in200",
         "rtn6-perchannel-in200", "rtn8-g64-in200", "rtn8-perchannel-in201"}
