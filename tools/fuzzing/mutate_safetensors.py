"""safetensors mutations: one tensor entry of the header, or the header as a whole (its
length field, its JSON, what follows it)."""

from __future__ import annotations

import json

from fuzzing.mutate_json import dump_json
from fuzzing.values import deep_json


def split_safetensors(data: bytes):
    """(header dict, data section) of a valid file, else None."""
    if len(data) < 8:
        return None
    n = int.from_bytes(data[:8], "little")
    try:
        header = json.loads(data[8:8 + n])
    except ValueError:
        return None
    return (header, data[8 + n:]) if isinstance(header, dict) else None


def join_safetensors(header, rest: bytes) -> bytes:
    text = dump_json(header).encode() if not isinstance(header, bytes) else header
    text += b" " * (-len(text) % 8)   # the writers pad the header to 8 bytes with spaces
    return len(text).to_bytes(8, "little") + text + rest


def mutate_st_entry(rng, data: bytes) -> tuple[bytes, str]:
    """One tensor entry of the header: dtype, shape, data_offsets, the entry itself, its name."""
    header, rest = split_safetensors(data)
    names = sorted(k for k in header if k != "__metadata__")
    name = rng.choice(names)
    entry = header[name]
    b, e = entry["data_offsets"]
    other = header[rng.choice(names)]["data_offsets"]
    op = rng.choice(["dtype", "shape", "shape", "offsets", "offsets", "offsets", "entry",
                     "drop_field", "rename", "drop", "duplicate", "metadata"])
    if op == "dtype":
        entry["dtype"] = rng.choice(["F32", "F16", "BF16", "F64", "I32", "I64", "I16", "I8", "U8",
                                     "U16", "U32", "BOOL", "F8_E4M3", "F8_E5M2", "Q4_0", "f32",
                                     "", None, 7, ["F32"]])
        desc = f"dtype = {entry['dtype']!r}"
    elif op == "shape":
        shape = entry["shape"]
        entry["shape"] = rng.choice([[], [0], [-1, 64], [2**31, 2**31], [2**32, 2**32], [2**63],
                                     [2**64], list(reversed(shape)), [1] + shape, shape[:1],
                                     [1] * 100, ["64"], [1.5], [True], None, "x", {},
                                     [d * 2 for d in shape], [max(d - 1, 0) for d in shape]])
        desc = f"shape {shape} -> {entry['shape']!r:.60}"
    elif op == "offsets":
        entry["data_offsets"] = rng.choice([[-1, e - b - 1], [e, b], [0, 2**64], [2**63, 2**63 + 4],
                                            [b, len(rest) + 1], list(other), [b, b], [b + 1, e + 1],
                                            [b, e + 8], [b // 2, e // 2], [b], [b, e, e], None,
                                            [0.5, 4], [str(b), str(e)], [len(rest), len(rest)],
                                            [-2**63, 0], [b, 2**64 - 1]])
        desc = f"data_offsets [{b}, {e}] -> {entry['data_offsets']!r}"
    elif op == "entry":
        header[name] = rng.choice([None, [], "x", 0, {}, [entry]])
        desc = f"entry = {header[name]!r:.40}"
    elif op == "drop_field":
        field_name = rng.choice(["dtype", "shape", "data_offsets"])
        del entry[field_name]
        entry[rng.choice(["zzz", field_name.upper()])] = 1
        desc = f"{field_name} deleted"
    elif op == "rename":
        new = rng.choice(["", "model.layers.99.x.weight", "lm_head.weight", names[0] + ".x", "x" * 5000])
        header[new] = header.pop(name)
        desc = f"renamed {new[:40]!r}"
    elif op == "drop":
        del header[name]
        desc = "deleted"
    elif op == "duplicate":
        new = rng.choice(["lm_head.weight", "model.layers.0.extra.weight", rng.choice(names) + "_"])
        header[new] = dict(entry)
        desc = f"duplicated as {new}"
    else:
        header["__metadata__"] = rng.choice([[], "x", 0, None, {"format": 1}, {"format": ["pt"]},
                                             {"a": {"b": 1}}])
        desc = f"__metadata__ = {header['__metadata__']!r}"
    return join_safetensors(header, rest), f"tensor {name}: {desc}"


def mutate_st_header(rng, data: bytes) -> tuple[bytes, str]:
    """The header as a whole: its length field, its JSON, what follows it."""
    header, rest = split_safetensors(data)
    n, size = int.from_bytes(data[:8], "little"), len(data)
    op = rng.choice(["length", "length", "not_object", "bad_utf8", "duplicate_key", "trailing",
                     "nul_padding", "deep"])
    if op == "length":
        v = rng.choice([n - 1, n + 1, size, size - 8, size - 7, 0, 1, 2**63, 2**64 - 1, 2**32 + n])
        return v.to_bytes(8, "little") + data[8:], f"header length {n} -> {v}"
    if op == "not_object":
        text = rng.choice([b"[]", b"null", b"1", b'"x"', b"[{}]"])
        return join_safetensors(text, rest), f"header = {text.decode()}"
    if op == "bad_utf8":
        text = dump_json(header).encode()
        p = rng.randrange(1, len(text) - 1)
        return join_safetensors(text[:p] + b"\xff\xfe" + text[p:], rest), f"bytes ff fe at {p}"
    if op == "duplicate_key":
        # json.dumps cannot repeat a key; the reader must decide what a repeated one means
        name = rng.choice(sorted(k for k in header if k != "__metadata__"))
        entry = json.dumps({name: {**header[name], "data_offsets": [0, 4], "shape": [1]}})
        text = dump_json(header).encode()
        return join_safetensors(text[:-1] + b"," + entry[1:].encode(), rest), f"{name} repeated"
    if op == "trailing":
        text = dump_json(header).encode() + rng.choice([b"x", b"{}", b"\0"])
        return join_safetensors(text, rest), "garbage after the header JSON"
    if op == "nul_padding":
        text = dump_json(header).encode()
        return len(text + b"\0" * 8).to_bytes(8, "little") + text + b"\0" * 8 + rest, \
            "header padded with NUL bytes"
    v = deep_json(rng)
    return join_safetensors({**header, "__metadata__": v}, rest), f"__metadata__ = {v!r}"
