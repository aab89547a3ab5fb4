"""GGUF block formats (llama.cpp's ggml-common.h) -> the canonical quantized tensor, losslessly.

A GGUF matrix of ne = [in, out] is `out` rows of blocks; each block covers `block_size`
consecutive inputs of one row. Every converter below reads a chunk of rows as
blocks [rows, n_blocks, type_size] and returns the integer codes q [rows, in] with per-group
scale and offset [rows, G] (float32), meaning w = scale * q + offset. `block_rows_to_canonical`
packs them (4-bit nibbles; for 5 and 6 bits a nibble plane plus a high-bit plane; 8-bit bytes).

Formulas are ggml's `dequantize_row_*`; the products are exact in float32 (a float16 scale
times a code of at most 8 bits, or a float16 times a 6-bit sub-scale times a code), so the
canonical form reproduces gguf-py's `dequantize` bit for bit.

What each type costs in the canonical form (bytes per block, file -> memory):
    Q4_0  18 -> 20   codes 16, scale f16 2, offset (-8 d) f16 2            +11%
    Q4_1  20 -> 20   codes 16, d f16, m f16                                  0%
    Q5_0  22 -> 24   nibbles 16, high bits 4, d f16, -16 d f16              +9%
    Q5_1  24 -> 24   nibbles 16, high bits 4, d f16, m f16                   0%
    Q8_0  34 -> 36   codes 32 (q + 128), d f16, -128 d f16                  +6%
    Q4_K 144 -> 192  codes 128, 8 x (d*sc, -dmin*m) in f32                 +33%
    Q5_K 176 -> 224  nibbles 128, high bits 32, 8 x f32 pairs              +27%
    Q6_K 210 -> 320  nibbles 128, high bits 64, 16 x (d*sc, -32 d*sc) f32  +52%
(the K-quants' sub-block scales are products of two floats that float16 cannot hold exactly).
"""

from __future__ import annotations

import numpy as np

from qwen_np.tensors.packing import pack_high_bits
from qwen_np.tensors.quantized import QuantizedTensor, smallest_exact_float

QK_K = 256


def _f16(b: np.ndarray) -> np.ndarray:
    """Two bytes [..., 2] (little-endian IEEE half) -> float32 [...]."""
    return np.ascontiguousarray(b).view(np.float16)[..., 0].astype(np.float32)


def _nibbles_first_low_then_high(qs: np.ndarray) -> np.ndarray:
    """qs [..., 16] -> [..., 32]: element j < 16 is qs[j] & 0xF, element j + 16 is qs[j] >> 4."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def codes_q4_0(b):
    """Q4_0, 32 per block, 18 bytes:
        byte  0..1   d (f16)
        byte  2..17  qs[16]: element j = qs[j] & 0xF, element j+16 = qs[j] >> 4
    w = d * (q - 8)"""
    d = _f16(b[..., 0:2])
    return _nibbles_first_low_then_high(b[..., 2:18]), d, -8 * d, 32


def codes_q4_1(b):
    """Q4_1, 32 per block, 20 bytes: d (f16), m (f16), qs[16] as in Q4_0.  w = d * q + m"""
    return _nibbles_first_low_then_high(b[..., 4:20]), _f16(b[..., 0:2]), _f16(b[..., 2:4]), 32


def _fifth_bits(qh4: np.ndarray) -> np.ndarray:
    """qh [..., 4] (a little-endian uint32) -> [..., 32]: bit j is element j's fifth bit
    (bit j % 8 of byte j // 8)."""
    return np.unpackbits(qh4, axis=-1, bitorder="little")


def codes_q5_0(b):
    """Q5_0, 32 per block, 22 bytes:
        byte  0..1   d (f16)
        byte  2..5   qh: uint32, bit j = bit 4 of element j
        byte  6..21  qs[16]: low 4 bits as in Q4_0
    w = d * (q - 16)"""
    d = _f16(b[..., 0:2])
    q = _nibbles_first_low_then_high(b[..., 6:22]) | (_fifth_bits(b[..., 2:6]) << 4)
    return q, d, -16 * d, 32


def codes_q5_1(b):
    """Q5_1, 32 per block, 24 bytes: d (f16), m (f16), qh (uint32), qs[16].  w = d * q + m"""
    q = _nibbles_first_low_then_high(b[..., 8:24]) | (_fifth_bits(b[..., 4:8]) << 4)
    return q, _f16(b[..., 0:2]), _f16(b[..., 2:4]), 32


def codes_q8_0(b):
    """Q8_0, 32 per block, 34 bytes: d (f16), qs[32] int8.  w = d * qs
    Codes are stored unsigned as qs + 128 (flip the top bit), so the offset is -128 d."""
    d = _f16(b[..., 0:2])
    return b[..., 2:34] ^ np.uint8(0x80), d, -128 * d, 32


def k_scale_min(scales: np.ndarray):
    """Q4_K / Q5_K: 12 bytes hold eight 6-bit (scale, min) pairs, one per sub-block s:
        s < 4:   sc = scales[s] & 63               m = scales[s+4] & 63
        s >= 4:  sc = (scales[s+4] & 0xF) | (scales[s-4] >> 6) << 4
                 m  = (scales[s+4] >> 4)  | (scales[s]   >> 6) << 4"""
    lo, mid, hi = scales[..., 0:4], scales[..., 4:8], scales[..., 8:12]
    sc = np.concatenate([lo & 63, (hi & 0x0F) | ((lo >> 6) << 4)], axis=-1)
    m = np.concatenate([mid & 63, (hi >> 4) | ((mid >> 6) << 4)], axis=-1)
    return sc.astype(np.float32), m.astype(np.float32)


def _k_nibbles(qs: np.ndarray) -> np.ndarray:
    """Q4_K/Q5_K qs [..., 128]: 4 chunks of 32 bytes; in chunk c the low nibbles are elements
    64c..64c+31 and the high nibbles 64c+32..64c+63. -> [..., 256]"""
    c = qs.reshape(qs.shape[:-1] + (4, 1, 32))
    return np.concatenate([c & 0x0F, c >> 4], axis=-2).reshape(qs.shape[:-1] + (QK_K,))


def _k_sub_scales(b, d_at, dmin_at, scales_at):
    d, dmin = _f16(b[..., d_at:d_at + 2]), _f16(b[..., dmin_at:dmin_at + 2])
    sc, m = k_scale_min(b[..., scales_at:scales_at + 12])
    return d[..., None] * sc, -(dmin[..., None] * m)           # [..., 8] each


def codes_q4_k(b):
    """Q4_K, 256 per block (8 sub-blocks of 32), 144 bytes:
        byte   0..1    d (f16)        byte 2..3  dmin (f16)
        byte   4..15   scales: 8 x (6-bit sc, 6-bit m), see k_scale_min
        byte  16..143  qs[128], see _k_nibbles
    w = d * sc[s] * q - dmin * m[s]"""
    scale, offset = _k_sub_scales(b, 0, 2, 4)
    return _k_nibbles(b[..., 16:144]), _flat(scale), _flat(offset), 32


def codes_q5_k(b):
    """Q5_K, 256 per block, 176 bytes: d, dmin, scales[12] as Q4_K, then
        byte  16..47   qh[32]: bit s of qh[l] = bit 4 of element 32 s + l
        byte  48..175  qs[128] as Q4_K
    w = d * sc[s] * q - dmin * m[s]"""
    scale, offset = _k_sub_scales(b, 0, 2, 4)
    qh = b[..., 16:48]
    high = (qh[..., None, :] >> np.arange(8, dtype=np.uint8)[:, None]) & 1   # [..., 8, 32]
    q = _k_nibbles(b[..., 48:176]) | (high.reshape(qh.shape[:-1] + (QK_K,)) << 4)
    return q, _flat(scale), _flat(offset), 32


def codes_q6_k(b):
    """Q6_K, 256 per block (16 sub-blocks of 16), 210 bytes (d comes LAST):
        byte    0..127  ql[128]    byte 128..191  qh[64]
        byte  192..207  scales[16] (int8)          byte 208..209  d (f16)
    In each half h (elements 128h..128h+127; ql from 64h, qh from 32h), for l < 32:
        element 128h +      l = ql[l]      & 0xF | (qh[l] >> 0 & 3) << 4
        element 128h + 32 + l = ql[l + 32] & 0xF | (qh[l] >> 2 & 3) << 4
        element 128h + 64 + l = ql[l]      >> 4  | (qh[l] >> 4 & 3) << 4
        element 128h + 96 + l = ql[l + 32] >> 4  | (qh[l] >> 6 & 3) << 4
    w = d * scales[e / 16] * (q - 32)"""
    lead = b.shape[:-1]
    ql = b[..., 0:128].reshape(lead + (2, 1, 64))
    low = np.concatenate([ql & 0x0F, ql >> 4], axis=-2).reshape(lead + (QK_K,))
    qh = b[..., 128:192].reshape(lead + (2, 1, 32))
    high = (qh >> np.array([0, 2, 4, 6], np.uint8)[:, None]) & 3          # [..., 2, 4, 32]
    q = low | (high.reshape(lead + (QK_K,)) << 4)
    sc = np.ascontiguousarray(b[..., 192:208]).view(np.int8).astype(np.float32)
    scale = _f16(b[..., 208:210])[..., None] * sc                          # [..., 16]
    return q, _flat(scale), _flat(-32 * scale), 16


def _flat(x: np.ndarray) -> np.ndarray:
    """[rows, n_blocks, k] -> [rows, n_blocks * k]"""
    return x.reshape(x.shape[0], -1)


# type id: (name, elements per block, bytes per block, bits, converter)
BLOCK_TYPES = {
    2: ("Q4_0", 32, 18, 4, codes_q4_0),
    3: ("Q4_1", 32, 20, 4, codes_q4_1),
    6: ("Q5_0", 32, 22, 5, codes_q5_0),
    7: ("Q5_1", 32, 24, 5, codes_q5_1),
    8: ("Q8_0", 32, 34, 8, codes_q8_0),
    12: ("Q4_K", 256, 144, 4, codes_q4_k),
    13: ("Q5_K", 256, 176, 5, codes_q5_k),
    14: ("Q6_K", 256, 210, 6, codes_q6_k),
}


# type id -> (byte offset, count) of a block's float16 fields, side by side: d, then dmin
# (K-quants) or m (Q4_1, Q5_1). Every scale and offset of a block is one of them times a small
# integer, so they are finite if and only if these are.
FLOAT_FIELDS = {2: (0, 1), 3: (0, 2), 6: (0, 1), 7: (0, 2), 8: (0, 1),
                12: (0, 2), 13: (0, 2), 14: (208, 1)}
TYPE_IDS = {v[0]: k for k, v in BLOCK_TYPES.items()}     # "Q4_K" -> 12


def block_floats(raw: np.ndarray, type_id: int) -> np.ndarray:
    """raw uint8 [rows, bytes per row] of blocks of `type_id` -> float16 [rows, n_blocks, k]:
    each block's float16 fields (FLOAT_FIELDS), a view into raw (every block size and field
    offset is even, so the bytes are read as 16-bit words in place; nothing is copied)."""
    at, k = FLOAT_FIELDS[type_id]
    words = raw.view(np.uint16).reshape(raw.shape[0], -1, BLOCK_TYPES[type_id][2] // 2)
    return words[..., at // 2:at // 2 + k].view(np.float16)


def block_rows_to_canonical(raw: np.ndarray, type_id: int, shape: tuple[int, int],
                            rows_per_chunk: int = 2048) -> QuantizedTensor:
    """raw uint8 [out, in / block_size * type_size] (one GGUF matrix) -> QuantizedTensor.

    Rows are converted a chunk at a time so that the integer codes never exist in full."""
    name, block, type_size, bits, convert = BLOCK_TYPES[type_id]
    out, n_in = shape
    blocks = raw.reshape(out, n_in // block, type_size)
    codes, high, scales, offsets = [], [], [], []
    group = block
    for r in range(0, out, rows_per_chunk):
        # a file's inf/NaN scales stay so, quietly: formats/open.py's check_scales names them
        with np.errstate(over="ignore", invalid="ignore"):
            q, scale, offset, group = convert(blocks[r:r + rows_per_chunk])
        q = q.reshape(q.shape[0], n_in)
        if bits == 8:
            codes.append(np.ascontiguousarray(q, dtype=np.uint8))
        else:   # two 4-bit codes per byte (pack_codes' layout; the codes are in range here)
            low = (q & 0x0F).astype(np.uint8, copy=False)
            codes.append(low[:, 0::2] | (low[:, 1::2] << 4))
        if bits in (5, 6):
            high.append(pack_high_bits(q >> 4, bits - 4))
        scales.append(scale.reshape(q.shape[0], -1).astype(np.float32, copy=False))
        offsets.append(offset.reshape(q.shape[0], -1).astype(np.float32, copy=False))
    return QuantizedTensor(
        shape=(out, n_in), bits=bits, group_size=group, codes=np.concatenate(codes),
        scale=smallest_exact_float(np.concatenate(scales)),
        offset=smallest_exact_float(np.concatenate(offsets)),
        high=np.concatenate(high) if high else None)
