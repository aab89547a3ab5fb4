"""Float32 rows -> GGUF block bytes: the codes of tensors/ggml_quantize.py packed into ggml's
block structs (ggml-common.h), the exact inverse of formats/gguf_blocks.py's readers.

`quantize_rows(x, type_name)` takes x [rows, n] (n a multiple of the block) and returns
uint8 [rows, n / block * type_size]; a GGUF tensor of ne = [n, rows] is those bytes in order.
Each packer draws its block; bytes are little-endian, float16 fields IEEE half.
"""

from __future__ import annotations

import numpy as np

from qwen_np.tensors import ggml_quantize as gq


def _f16_bytes(d: np.ndarray) -> np.ndarray:
    """float16 [rows, nb] -> uint8 [rows, nb, 2] (little-endian)"""
    return np.ascontiguousarray(d, dtype="<f2")[..., None].view(np.uint8)


def _low_then_high_nibbles(q: np.ndarray) -> np.ndarray:
    """q uint8 [rows, nb, 32] (values < 16) -> [rows, nb, 16]: byte j = q[j] | q[j + 16] << 4"""
    return (q[..., :16] & 0x0F) | (q[..., 16:] << 4)


def _fifth_bits(q: np.ndarray) -> np.ndarray:
    """q uint8 [rows, nb, 32] (values < 32) -> [rows, nb, 4]: a little-endian uint32 whose bit
    j is bit 4 of q[j] (bit j % 8 of byte j // 8)."""
    return np.packbits(q >> 4, axis=-1, bitorder="little")


def _per_block(q: np.ndarray, nb: int) -> np.ndarray:
    return q.reshape(q.shape[0], nb, -1)


def pack_q8_0(d, q):
    """Q8_0, 34 bytes:  | d f16 (2) | qs[32] int8 |          w = d * qs"""
    return np.concatenate([_f16_bytes(d), _per_block(q.view(np.uint8), d.shape[1])], -1)


def pack_q4_0(d, q):
    """Q4_0, 18 bytes:  | d f16 (2) | qs[16] |
    qs[j] bits 3..0 = q[j], bits 7..4 = q[j + 16]            w = d * (q - 8)"""
    return np.concatenate([_f16_bytes(d), _low_then_high_nibbles(_per_block(q, d.shape[1]))], -1)


def pack_q5_0(d, q):
    """Q5_0, 22 bytes:  | d f16 (2) | qh (4) | qs[16] |
    qh bit j = bit 4 of q[j]; qs as Q4_0 (low 4 bits)        w = d * (q - 16)"""
    b = _per_block(q, d.shape[1])
    return np.concatenate([_f16_bytes(d), _fifth_bits(b), _low_then_high_nibbles(b)], -1)


def pack_q4_1(d, m, q):
    """Q4_1, 20 bytes:  | d f16 | m f16 | qs[16] as Q4_0 |    w = d * q + m"""
    b = _per_block(q, d.shape[1])
    return np.concatenate([_f16_bytes(d), _f16_bytes(m), _low_then_high_nibbles(b)], -1)


def pack_q5_1(d, m, q):
    """Q5_1, 24 bytes:  | d f16 | m f16 | qh (4) | qs[16] as Q5_0 |    w = d * q + m"""
    b = _per_block(q, d.shape[1])
    return np.concatenate([_f16_bytes(d), _f16_bytes(m), _fifth_bits(b),
                           _low_then_high_nibbles(b)], -1)


def pack_k_scales(sc, m):
    """Eight 6-bit (sc, m) pairs [rows, nb, 8] -> scales[12] [rows, nb, 12]:
        byte    0..3  (s = 0..3):  bits 5..0 sc[s]            bits 7..6 sc[s+4] >> 4
        byte    4..7  (s = 0..3):  bits 5..0 m[s]             bits 7..6 m[s+4] >> 4
        byte   8..11  (s = 4..7):  bits 3..0 sc[s] & 0xF      bits 7..4 m[s] & 0xF"""
    lo = sc[..., :4] | ((sc[..., 4:] >> 4) << 6)
    mid = m[..., :4] | ((m[..., 4:] >> 4) << 6)
    hi = (sc[..., 4:] & 0x0F) | ((m[..., 4:] & 0x0F) << 4)
    return np.concatenate([lo, mid, hi], -1)


def _k_nibbles(q):
    """q [rows, nb, 256] (values < 16) -> qs [rows, nb, 128]: 4 chunks of 32 bytes; byte l of
    chunk c holds element 64c + l (bits 3..0) and 64c + 32 + l (bits 7..4)."""
    c = q.reshape(q.shape[:-1] + (4, 2, 32))
    return (c[..., 0, :] | (c[..., 1, :] << 4)).reshape(q.shape[:-1] + (128,))


def pack_q4_k(d, dmin, sc, m, q):
    """Q4_K, 144 bytes:  | d f16 | dmin f16 | scales[12] (pack_k_scales) | qs[128] (_k_nibbles) |
    element 32 s + l of sub-block s:  w = d * sc[s] * q - dmin * m[s]"""
    b = _per_block(q, d.shape[1])
    return np.concatenate([_f16_bytes(d), _f16_bytes(dmin), pack_k_scales(sc, m),
                           _k_nibbles(b)], -1)


def pack_q5_k(d, dmin, sc, m, q):
    """Q5_K, 176 bytes:  | d | dmin | scales[12] | qh[32] | qs[128] (low 4 bits, as Q4_K) |
    qh[l] bit s = bit 4 of element 32 s + l"""
    b = _per_block(q, d.shape[1])
    high = (b >> 4).reshape(b.shape[:-1] + (8, 32))                    # [rows, nb, s, l]
    qh = (high << np.arange(8, dtype=np.uint8)[:, None]).sum(-2, dtype=np.uint8)
    return np.concatenate([_f16_bytes(d), _f16_bytes(dmin), pack_k_scales(sc, m), qh,
                           _k_nibbles(b & 0x0F)], -1)


def pack_q6_k(d, sc, q):
    """Q6_K, 210 bytes:  | ql[128] | qh[64] | scales[16] int8 | d f16 |   (d LAST)
    half h (elements 128h..128h+127) uses ql[64h..64h+63] and qh[32h..32h+31]; for l < 32:
        ql[64h + l]      bits 3..0 = element 128h + l       bits 7..4 = element 128h + 64 + l
        ql[64h + 32 + l] bits 3..0 = element 128h + 32 + l  bits 7..4 = element 128h + 96 + l
        qh[32h + l]  bits 1..0, 3..2, 5..4, 7..6 = bits 5..4 of elements 128h + l, +32, +64, +96
    w = d * scales[e / 16] * (q - 32)"""
    b = _per_block(q, d.shape[1])
    quarters = b.reshape(b.shape[:-1] + (2, 4, 32))                    # [rows, nb, h, 4, l]
    low = quarters & 0x0F
    ql = np.concatenate([low[..., 0, :] | (low[..., 2, :] << 4),
                         low[..., 1, :] | (low[..., 3, :] << 4)], -1)   # [rows, nb, h, 64]
    qh = ((quarters >> 4) << np.array([0, 2, 4, 6], np.uint8)[:, None]).sum(-2, dtype=np.uint8)
    lead = b.shape[:-1]
    return np.concatenate([ql.reshape(lead + (128,)), qh.reshape(lead + (64,)),
                           sc.view(np.uint8), _f16_bytes(d)], -1)


# name: (inputs per block, bytes per block, quantizer, packer)
WRITERS = {
    "Q4_0": (32, 18, gq.quantize_q4_0, pack_q4_0),
    "Q4_1": (32, 20, gq.quantize_q4_1, pack_q4_1),
    "Q5_0": (32, 22, gq.quantize_q5_0, pack_q5_0),
    "Q5_1": (32, 24, gq.quantize_q5_1, pack_q5_1),
    "Q8_0": (32, 34, gq.quantize_q8_0, pack_q8_0),
    "Q4_K": (256, 144, gq.quantize_q4_k, pack_q4_k),
    "Q5_K": (256, 176, gq.quantize_q5_k, pack_q5_k),
    "Q6_K": (256, 210, gq.quantize_q6_k, pack_q6_k),
}


def quantize_rows(x: np.ndarray, type_name: str, rows_per_chunk: int = 256) -> np.ndarray:
    """x [rows, n] float -> uint8 [rows, n / block * type_size], a chunk of rows at a time (the
    K-quant searches hold a few float32 copies of their chunk)."""
    block, size, quantize, pack = WRITERS[type_name]
    rows, n = x.shape
    out = np.empty((rows, n // block * size), np.uint8)
    for r in range(0, rows, rows_per_chunk):
        chunk = np.asarray(x[r:r + rows_per_chunk], np.float32)
        with np.errstate(over="ignore"):      # a scale past float16 is inf, as in ggml
            out[r:r + rows_per_chunk] = pack(*quantize(chunk)).reshape(chunk.shape[0], -1)
    return out
