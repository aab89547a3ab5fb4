"""The CUDA kernels' logic on the CPU, kernel by kernel: backends/cuda/kernels.cu compiled by g++
with the project's emulation header (real threads per block, barriers, warp shuffles), launched
by the GPU backend's own code with its own grids (tests/cupy_on_cpu.py), and compared with the
NumPy backend on the shapes where kernels go wrong: rows that leave warps and tiles idle, odd
widths, short last groups, more tokens than one tile, keys split in several parts, GQA ratios 1,
2 and 7. test_cuda_sanitizers.py runs this file again under ASan+UBSan and TSan, and with
deliberate bugs that must make it fail. (The conformance suite runs every op and whole models
the same way, with the "cupy-on-cpu" backend.)"""

import shutil

import numpy as np
import pytest

from conftest import rel_err
from qwen_np.backends.cuda import launch as ck
from qwen_np.backends import get_backend
from qwen_np.tensors.dense import BFloat16Array
from qwen_np.tensors.packing import pack_codes, pack_high_bits
from qwen_np.tensors.quantized import QuantizedTensor

if shutil.which("g++") is None:
    pytest.skip("no g++ to build the CPU emulation", allow_module_level=True)

import cupy_on_cpu  # noqa: E402  (builds with g++)


@pytest.fixture(scope="module")
def be():
    return cupy_on_cpu.emulated_cupy_backend()


@pytest.fixture(scope="module")
def ref():
    return get_backend("numpy")


def quantized(rng, rows, n, bits, group, half_scales=True, act_order=False):
    q = rng.integers(0, 1 << bits, (rows, n))
    G = -(-n // group)
    dtype = np.float16 if half_scales else np.float32
    scale = rng.uniform(0.01, 0.1, (rows, G)).astype(dtype)
    offset = rng.uniform(-0.5, 0.5, (rows, G)).astype(dtype)
    high = None if bits in (4, 8) else pack_high_bits(q >> 4, bits - 4)
    codes = pack_codes(q if bits in (4, 8) else q & 15, 8 if bits == 8 else 4)
    perm = rng.permutation(n).astype(np.int32) if act_order else None
    return QuantizedTensor((rows, n), bits, group, codes, scale, offset, perm=perm, high=high)


def test_every_kernel_is_built_under_its_name_expression(be):
    assert set(cupy_on_cpu.library_kernels(be.module.lib)) == set(ck.KERNELS)


def test_a_call_with_the_wrong_argument_types_is_refused(be):
    """What a GPU would take silently and compute garbage from: a Python float where the
    kernel wants float32, a float64 array, a strided view, a host array."""
    x = cupy_on_cpu.zeros((2, 32))
    w = cupy_on_cpu.zeros(32)
    out = cupy_on_cpu.empty((2, 32))
    k = be.kernel("rms_norm_rows")
    k((2,), (32,), (x, w, np.float32(1e-6), np.int32(32), out))           # the right types
    bad = [(x, w, 1e-6, np.int32(32), out), (x.astype(np.float64), w, np.float32(1e-6),
                                              np.int32(32), out),
           (x[:, ::2], w, np.float32(1e-6), np.int32(16), out),
           (np.zeros((2, 32), np.float32), w, np.float32(1e-6), np.int32(32), out)]
    for args in bad:
        with pytest.raises(TypeError):
            k((2,), (32,), args)


@pytest.mark.parametrize("rows,n", [(1, 48), (7, 33), (3, 896)])
def test_rms_norm_rows(be, ref, rows, n):
    rng = np.random.default_rng(n)
    x = rng.standard_normal((rows, n)).astype(np.float32)
    w = rng.standard_normal(n).astype(np.float32)
    assert rel_err(be.to_numpy(be.rms_norm(x, w, 1e-6)), ref.rms_norm(x, w, 1e-6)) < 1e-6


# rows: one warp, a block with idle warps, gemm's 64-row tile and a part of another;
# n: not a whole chunk, whole chunks with a short last group, one group wider than the row
@pytest.mark.parametrize("bits,rows,n,group,half", [
    (4, 1, 64, 32, True), (4, 70, 201, 64, True), (4, 33, 96, 128, False), (4, 5, 7, 4, True),
    (5, 9, 200, 64, False), (6, 21, 96, 16, True), (8, 37, 200, 48, True), (8, 3, 33, 9, False)])
@pytest.mark.parametrize("T", [1, 7, 33])
def test_linear_quantized(be, ref, bits, rows, n, group, half, T):
    rng = np.random.default_rng(rows * n + bits)
    w = quantized(rng, rows, n, bits, group, half)
    x = rng.standard_normal((T, n)).astype(np.float32)
    assert rel_err(be.to_numpy(be.linear(x, w)), ref.linear(x, w)) < 1e-5


@pytest.mark.parametrize("T", [1, 5])
def test_linear_act_order(be, ref, T):
    rng = np.random.default_rng(T)
    w = quantized(rng, 24, 64, 4, 32, act_order=True)
    x = rng.standard_normal((T, 64)).astype(np.float32)
    assert rel_err(be.to_numpy(be.linear(x, w)), ref.linear(x, w)) < 1e-5


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("T", [1, 3])
def test_linear_dense(be, ref, dtype, T):
    rng = np.random.default_rng(T)
    w32 = rng.standard_normal((67, 45)).astype(np.float32)
    w = BFloat16Array((w32.view(np.uint32) >> 16).astype(np.uint16)) if dtype == "bfloat16" \
        else w32.astype(dtype)
    x = rng.standard_normal((T, 45)).astype(np.float32)
    assert rel_err(be.to_numpy(be.linear(x, w)), ref.linear(x, w)) < 1e-5


@pytest.mark.parametrize("bits,n,group", [(4, 201, 64), (5, 96, 32), (6, 200, 16), (8, 33, 9)])
def test_embed_rows_equal_the_reference_bit_for_bit(be, ref, bits, n, group):
    rng = np.random.default_rng(bits)
    w = quantized(rng, 11, n, bits, group)
    ids = [10, 0, 3, 3]
    assert np.array_equal(be.to_numpy(be.embed(w, ids)), ref.embed(w, ids))


@pytest.mark.parametrize("H,Hkv", [(4, 4), (6, 3), (14, 2)])      # GQA ratios 1, 2, 7
@pytest.mark.parametrize("T,start", [(1, 0), (1, 300), (5, 11), (3, 140)])
@pytest.mark.parametrize("kv", ["float32", "float16"])
def test_attention_split_and_combined(be, ref, H, Hkv, T, start, kv):
    """300 cached keys for one query make several parts of 64 keys; the others one part,
    some warps of which get no key at all."""
    rng = np.random.default_rng(H * T + start)
    Dh, S = 40, start + T
    q = rng.standard_normal((T, H, Dh)).astype(np.float32)
    k = rng.standard_normal((S, Hkv, Dh)).astype(kv)
    v = rng.standard_normal((S, Hkv, Dh)).astype(kv)
    splits, _ = ck.attention_splits(T, H, S)
    assert splits > 1 or S < 200
    got = be.to_numpy(be.attention(q, be.xp.asarray(k), be.xp.asarray(v), start))
    assert rel_err(got, ref.attention(q, k, v, start)) < 1e-5


GATES = [-1000, -100, -89, -88.7, -88, -50, -1, -0.0, 0.0, 1, 50, 88, 89, 100, 1000]


@pytest.mark.parametrize("count", [len(GATES), 300])
def test_silu_mul(be, ref, count):
    """Gates whose exp overflows float32 (silu -> -0), and a count that is not a whole block."""
    rng = np.random.default_rng(count)
    gate = (rng.standard_normal(count) * 6).astype(np.float32)
    gate[:len(GATES)] = GATES
    up = rng.standard_normal(count).astype(np.float32)
    got = be.to_numpy(be.silu_mul(gate[None], up[None]))[0]
    want = ref.silu_mul(gate[None], up[None])[0]
    assert np.array_equal(np.signbit(got[:len(GATES)]), np.signbit(want[:len(GATES)]))
    assert rel_err(got, want) < 1e-6


@pytest.mark.parametrize("T,heads,d,n", [(1, 3, 16, 8), (5, 2, 12, 3), (7, 4, 10, 1)])
def test_rope_rows(be, ref, T, heads, d, n):
    """Full rotary (n = d/2) and partial (the original Qwen's rotary_pct < 1)."""
    from qwen_np.model.rope import rope_inv_freq
    rng = np.random.default_rng(T * d)
    x = rng.standard_normal((T, heads, d)).astype(np.float32)
    positions = np.arange(40, 40 + T)
    inv = rope_inv_freq(2 * n, 1e4)
    assert rel_err(be.to_numpy(be.rope(x, positions, inv)), ref.rope(x, positions, inv)) < 1e-6


@pytest.mark.parametrize("case", ["ties", "nan", "negative", "long"])
def test_argmax_is_numpys(be, case):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(3001 if case == "long" else 40).astype(np.float32)
    if case == "ties":
        x[[7, 30, 2]] = 9.0
    if case == "nan":
        x[[12, 5]] = np.nan
    if case == "negative":
        x = -np.abs(x) - 1
    assert be.greedy_token(x[None]) == int(np.argmax(x))


@pytest.mark.parametrize("at", [0, 500, 999])
@pytest.mark.parametrize("hit", [True, False])
def test_read_bandwidth_reads_every_word(be, at, hit):
    """The GPU check's streaming read: a grid smaller than the buffer strides over all of it.
    One word is non-zero; the thread that reads it xors its four 32-bit parts into 0x5A5A0F0F
    and, when that is `never`, writes it out."""
    words = 1000
    data = np.zeros((words, 4), np.uint32)
    data[at] = [0x5A5A0000, 0x0F0F, 0, 0]
    out = be.xp.zeros(1, np.uint32)
    never = np.uint32(0x5A5A0F0F if hit else 0x5A5A0F0E)
    be.kernel("read_bandwidth")((3,), (128,), (be.xp.asarray(data.view(np.uint8).ravel()),
                                                np.int64(words), never, out))
    assert int(out[0]) == (0x5A5A0F0F if hit else 0)
