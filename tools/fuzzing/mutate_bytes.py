"""Byte mutations of any file: bit flips, interesting bytes and integers, truncation, chunks
inserted or deleted."""

from __future__ import annotations

import random

from fuzzing.values import interesting_u64


def mutate_bytes(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    b = bytearray(data)
    size = len(b)

    def pos():   # favours the start, where the headers are
        return rng.randrange(max(1, min(size, rng.choice([16, 64, 1024, 16384, size]))))

    if size == 0:
        return b"\0" * rng.choice([1, 8, 4096]), "empty file filled with zeros"
    op = rng.choice(["flip", "byte", "int64", "int32", "truncate", "insert", "delete"])
    if op == "flip":
        where = [pos() for _ in range(rng.choice([1, 1, 2, 4, 8]))]
        for p in where:
            b[p] ^= 1 << rng.randrange(8)
        return bytes(b), f"bit flips at {where}"
    if op == "byte":
        p, n, v = pos(), rng.choice([1, 1, 2, 4, 8]), rng.choice([0, 0xFF, 0x7F, 0x80])
        b[p:p + n] = bytes([v]) * len(b[p:p + n])
        return bytes(b), f"{n} bytes at {p} set to {v:#x}"
    if op in ("int64", "int32"):
        width = 8 if op == "int64" else 4
        p = pos()
        if rng.random() < 0.5:
            p -= p % width
        p = max(0, min(p, size - width))
        v = interesting_u64(rng, size) % (1 << (8 * width))
        b[p:p + width] = v.to_bytes(width, "little")[:size - p]
        return bytes(b), f"{op} at {p} set to {v}"
    if op == "truncate":
        n = rng.choice([0, 1, 7, 8, 9, 16, 24, rng.randrange(size), size - 1])
        return bytes(b[:n]), f"truncated to {n} of {size} bytes"
    if op == "insert":
        p, n = pos(), rng.choice([1, 8, 64, 4096])
        chunk = bytes(rng.randrange(256) for _ in range(n)) if rng.random() < 0.5 else \
            bytes(b[p:p + n])
        b[p:p] = chunk
        return bytes(b), f"{len(chunk)} bytes inserted at {p}"
    p, n = pos(), rng.choice([1, 8, 64, 4096])
    del b[p:p + n]
    return bytes(b), f"bytes {p}..{p + n} deleted"
