"""An int8 KV cache's positions as stored, the operand attention reads where it lies.

    x[s, h, d] = scale[s, h] * (codes[s, h, d] - zero[s, h])

The cache (model/kv_cache.py) writes the codes, scales and zeros; a backend's attention reads
them (the NumPy reference dequantizes them first, backends/numpy/backend.py kv_as_compute).
It lives here, below both, because both hand it around.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Int8Rows:
    """Positions of an int8 cache as stored: x = scale * (code - zero)."""
    codes: object   # uint8 [S, Hkv, Dh], or [n_slots, S, Hkv, Dh] for a batch's slots
    scale: object   # [S, Hkv]
    zero: object    # [S, Hkv]

    @property
    def shape(self):
        return self.codes.shape


def slot_rows(x, slot: int, n: int):
    """Positions 0..n-1 of one slot of read_kv_slots' keys or values: [n, Hkv, Dh] floats or
    Int8Rows, as read_kv gives them for a cache of its own."""
    if isinstance(x, Int8Rows):
        return Int8Rows(x.codes[slot, :n], x.scale[slot, :n], x.zero[slot, :n])
    return x[slot, :n]
