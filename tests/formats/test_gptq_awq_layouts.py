"""GPTQ and AWQ converters against checkpoints packed here by plain loops, following the
formats' own descriptions (AutoGPTQ's pack(), AutoAWQ's WQLinear_GEMM.from_linear)."""

import numpy as np
import pytest

from qwen_np.errors import FormatError
from qwen_np.formats.awq import awq_to_canonical
from qwen_np.formats.gptq import gptq_to_canonical
from qwen_np.tensors.quantized import dequantize

rng = np.random.default_rng(2)


def loop_pack_rows(q, bits):
    """GPTQ qweight: q [in, out] -> int32 [in*bits/32, out], row 8r+k in bits 4k.. (4-bit)."""
    p = 32 // bits
    out = np.zeros((q.shape[0] // p, q.shape[1]), np.uint32)
    for r in range(out.shape[0]):
        for k in range(p):
            out[r] |= q[r * p + k].astype(np.uint32) << (bits * k)
    return out.view(np.int32)


def loop_pack_cols(z, bits, order=None):
    p = 32 // bits
    order = list(range(p)) if order is None else order
    out = np.zeros((z.shape[0], z.shape[1] // p), np.uint32)
    for c in range(out.shape[1]):
        for k in range(p):
            out[:, c] |= z[:, c * p + order[k]].astype(np.uint32) << (bits * k)
    return out.view(np.int32)


def gptq_case(bits, group, in_f=64, out_f=16, desc_act=False):
    maxq = (1 << bits) - 1
    g = in_f if group == -1 else group
    G = in_f // g
    q = rng.integers(0, maxq + 1, (in_f, out_f))
    z = rng.integers(1, maxq + 1, (G, out_f))       # v1-storable zeros
    s = rng.uniform(0.001, 0.1, (G, out_f)).astype(np.float16)
    g_idx = np.arange(in_f) // g
    if desc_act:
        g_idx = g_idx[rng.permutation(in_f)]        # scattered groups, each still of size g
    w = np.empty((out_f, in_f), np.float64)
    for i in range(in_f):
        for o in range(out_f):
            w[o, i] = float(s[g_idx[i], o]) * (q[i, o] - z[g_idx[i], o])
    return q, z, s, g_idx, w


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("group,desc_act", [(32, False), (16, False), (-1, False),
                                            (32, True), (16, True)])
@pytest.mark.parametrize("v2", [False, True])
def test_gptq_dequantizes_exactly(bits, group, desc_act, v2):
    q, z, s, g_idx, w = gptq_case(bits, group, desc_act=desc_act)
    stored = z if v2 else z - 1                     # v1 stores zero - 1
    qt = gptq_to_canonical("m", loop_pack_rows(q, bits), loop_pack_cols(stored, bits), s,
                           g_idx.astype(np.int32), bits, group, v2, (16, 64))
    assert (qt.perm is not None) == desc_act
    assert np.array_equal(dequantize(qt, np.float64), w)
    assert np.array_equal(dequantize(qt, np.float32), w.astype(np.float32))


def test_gptq_symmetric_zeros_are_0x77777777():
    q, _, s, g_idx, _ = gptq_case(4, 32)
    qzeros = np.full((2, 2), 0x77777777, np.int32)
    qt = gptq_to_canonical("m", loop_pack_rows(q, 4), qzeros, s, g_idx, 4, 32, False, (16, 64))
    w = dequantize(qt, np.float64)
    assert np.array_equal(w, (s.astype(np.float64)[g_idx].T * (q.T - 8)))


def test_gptq_bad_shapes_name_the_tensor():
    q, z, s, g_idx, _ = gptq_case(4, 32)
    with pytest.raises(FormatError, match=r"tensor layer.q_proj.qweight has shape \[8, 16\]"):
        gptq_to_canonical("layer.q_proj", loop_pack_rows(q, 4), loop_pack_cols(z - 1, 4), s,
                          g_idx, 4, 32, False, (16, 72))
    with pytest.raises(FormatError, match=r"tensor m.scales has shape"):
        gptq_to_canonical("m", loop_pack_rows(q, 4), loop_pack_cols(z - 1, 4), s[:1], g_idx,
                          4, 32, False, (16, 64))
    bad = g_idx.copy()
    bad[:40] = 0                                    # group 0 with 40 members: not GPTQ
    with pytest.raises(FormatError, match="g_idx does not split"):
        gptq_to_canonical("m", loop_pack_rows(q, 4), loop_pack_cols(z - 1, 4), s, bad,
                          4, 32, False, (16, 64))


AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]


@pytest.mark.parametrize("group", [32, 64])
def test_awq_interleaved_order(group):
    in_f, out_f = 64, 24
    G = in_f // group
    q = rng.integers(0, 16, (in_f, out_f))
    z = rng.integers(0, 16, (G, out_f))
    s = rng.uniform(0.001, 0.1, (G, out_f)).astype(np.float16)
    qt = awq_to_canonical("m", loop_pack_cols(q, 4, AWQ_ORDER), loop_pack_cols(z, 4, AWQ_ORDER),
                          s, 4, group, (out_f, in_f))
    want = np.array([[float(s[i // group, o]) * (q[i, o] - z[i // group, o]) for i in range(in_f)]
                     for o in range(out_f)])
    assert np.array_equal(dequantize(qt, np.float64), want)


def test_awq_nibble_zero_is_column_0_and_nibble_1_is_column_2():
    word = np.array([[0x00000021]], np.int32)       # nibble 0 = 1, nibble 1 = 2
    from qwen_np.formats.awq import unpack_awq
    assert unpack_awq(word).tolist() == [[1, 0, 2, 0, 0, 0, 0, 0]]
