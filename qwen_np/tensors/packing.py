"""Packing small integer codes into bytes, along the last axis (the input dimension).

4-bit codes, two per byte; code c of a row sits in byte c // 2:
    byte j:   bits 7..4       bits 3..0
              code 2j+1       code 2j
An odd count leaves the high nibble of the last byte zero.

8-bit codes are one byte each (uint8, unchanged).

5- and 6-bit codes (GGUF's Q5_*, Q6_K) are split in two planes: the low 4 bits packed as
4-bit codes above, and the high bits (1 or 2 per code) in a second plane, packed along the
input too, least significant first:
    1 high bit:   byte j bit k      <- code 8j + k
    2 high bits:  byte j bits 2k+1..2k  <- code 4j + k
"""

from __future__ import annotations

import numpy as np

SUPPORTED_BITS = (4, 8)


def packed_length(n: int, bits: int) -> int:
    """Bytes of the main plane for n codes of `bits` bits (5 and 6 bits: the nibble plane)."""
    return n if bits == 8 else (n + 1) // 2


def high_plane_length(n: int, bits: int) -> int:
    """Bytes of the high-bit plane for n codes of `bits` bits (0 for 4 and 8 bits)."""
    per_byte = {5: 8, 6: 4}.get(bits)
    return 0 if per_byte is None else -(-n // per_byte)


def pack_high_bits(h: np.ndarray, nbits: int) -> np.ndarray:
    """High parts [..., n] of `nbits` bits each (1 or 2) -> uint8 [..., ceil(n * nbits / 8)]."""
    per_byte = 8 // nbits
    h = np.asarray(h, np.uint8)
    if nbits == 1:      # the same layout as NumPy's little-endian packbits (zero-padded)
        return np.packbits(h, axis=-1, bitorder="little")
    pad = -h.shape[-1] % per_byte
    if pad:
        h = np.concatenate([h, np.zeros(h.shape[:-1] + (pad,), np.uint8)], axis=-1)
    h = h.reshape(h.shape[:-1] + (-1, per_byte))
    out = np.zeros(h.shape[:-1], np.uint8)
    for k in range(per_byte):
        out |= h[..., k] << (nbits * k)
    return out


def unpack_high_bits(packed: np.ndarray, nbits: int, n: int) -> np.ndarray:
    """Inverse of pack_high_bits: uint8 [..., bytes] -> uint8 high parts [..., n]."""
    per_byte = 8 // nbits
    mask = (1 << nbits) - 1
    out = np.empty(packed.shape + (per_byte,), np.uint8)
    for k in range(per_byte):
        out[..., k] = (packed >> (nbits * k)) & mask
    return out.reshape(packed.shape[:-1] + (-1,))[..., :n]


def pack_codes(q: np.ndarray, bits: int) -> np.ndarray:
    """Integer codes [..., n] in 0..2^bits-1 -> uint8 [..., packed_length(n)]."""
    q = np.asarray(q)
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"cannot pack {bits}-bit codes (supported: {SUPPORTED_BITS})")
    if q.size and (q.min() < 0 or q.max() >= 1 << bits):
        raise ValueError(f"codes out of the {bits}-bit range 0..{(1 << bits) - 1}")
    q = q.astype(np.uint8)
    if bits == 8:
        return q
    if q.shape[-1] % 2:  # pad with a zero code so codes pair up
        q = np.concatenate([q, np.zeros(q.shape[:-1] + (1,), np.uint8)], axis=-1)
    return q[..., 0::2] | (q[..., 1::2] << 4)


def unpack_codes(packed: np.ndarray, bits: int, n: int) -> np.ndarray:
    """uint8 [..., packed_length(n)] -> uint8 codes [..., n] (inverse of pack_codes)."""
    if bits == 8:
        return packed[..., :n]
    out = np.empty(packed.shape[:-1] + (2 * packed.shape[-1],), np.uint8)
    out[..., 0::2] = packed & 0x0F
    out[..., 1::2] = packed >> 4
    return out[..., :n]


def unpack_int32_words(words: np.ndarray, bits: int, axis: int) -> np.ndarray:
    """Codes packed least-significant first into int32 words along `axis` (the GPTQ/AWQ
    convention): word w holds codes 32/bits*w .. 32/bits*w + 32/bits - 1, code k in bits
    bits*k .. bits*k + bits-1. Returns uint8 codes with that axis 32/bits times longer."""
    per_word = 32 // bits
    u = np.ascontiguousarray(words).view(np.uint32)  # shift as unsigned: no sign smearing
    mask = np.uint32((1 << bits) - 1)
    parts = [((u >> np.uint32(bits * k)) & mask).astype(np.uint8) for k in range(per_word)]
    stacked = np.stack(parts, axis=axis + 1)        # [..., n_words, per_word, ...]
    shape = list(words.shape)
    shape[axis] *= per_word
    return stacked.reshape(shape)


def pack_int32_words(codes: np.ndarray, bits: int, axis: int) -> np.ndarray:
    """Inverse of unpack_int32_words: uint codes -> int32 words along `axis`."""
    per_word = 32 // bits
    codes = np.moveaxis(np.asarray(codes, np.uint32), axis, -1)
    if codes.shape[-1] % per_word:
        raise ValueError(f"{codes.shape[-1]} codes do not fill whole int32 words of {per_word}")
    grouped = codes.reshape(codes.shape[:-1] + (codes.shape[-1] // per_word, per_word))
    words = np.zeros(grouped.shape[:-1], np.uint32)
    for k in range(per_word):
        words |= (grouped[..., k] & np.uint32((1 << bits) - 1)) << np.uint32(bits * k)
    return np.moveaxis(words.view(np.int32), -1, axis)
