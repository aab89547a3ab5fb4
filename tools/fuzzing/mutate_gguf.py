"""GGUF mutations: the header walked into its integer fields, metadata entries and tensor
infos; one or two fields set to interesting values, or entries retyped, deleted, repeated
or added."""

from __future__ import annotations

import struct
from collections import defaultdict
from dataclasses import dataclass, field


GGUF_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
GGUF_SCALAR_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
                       10: "<Q", 11: "<q", 12: "<d"}


@dataclass
class GGUFLayout:
    """Where every integer field of a GGUF header lies: (offset, size, kind); the byte span of
    each metadata entry and tensor info; where the header ends."""
    fields: list = field(default_factory=list)
    kvs: list = field(default_factory=list)          # (start, end, key)
    tensors: list = field(default_factory=list)      # (start, end, name)
    header_end: int = 0
    alignment: int = 32


def walk_gguf(data: bytes) -> GGUFLayout:
    """The layout in qwen_np/formats/gguf.py's docstring, walked on a file this script wrote."""
    out = GGUFLayout()
    pos = 0

    def integer(size, kind):
        nonlocal pos
        out.fields.append((pos, size, kind))
        v = int.from_bytes(data[pos:pos + size], "little")
        pos += size
        return v

    def value(vtype, key):
        nonlocal pos
        if vtype == 8:
            n = integer(8, "string_length")
            pos += n
        elif vtype == 9:
            etype = integer(4, "array_type")
            count = integer(8, "array_count")
            if etype in GGUF_SCALAR_SIZES:
                pos += count * GGUF_SCALAR_SIZES[etype]
            else:
                for _ in range(count):
                    value(etype, key)
        else:
            if key == "general.alignment":
                out.fields.append((pos, GGUF_SCALAR_SIZES[vtype], "alignment"))
                out.alignment = int.from_bytes(data[pos:pos + 4], "little")
            pos += GGUF_SCALAR_SIZES[vtype]

    integer(4, "magic")
    integer(4, "version")
    n_tensors = integer(8, "tensor_count")
    n_kv = integer(8, "kv_count")
    for _ in range(n_kv):
        start = pos
        n = integer(8, "key_length")
        key = data[pos:pos + n].decode()
        pos += n
        value(integer(4, "value_type"), key)
        out.kvs.append((start, pos, key))
    for _ in range(n_tensors):
        start = pos
        n = integer(8, "tensor_name_length")
        name = data[pos:pos + n].decode()
        pos += n
        for _ in range(integer(4, "n_dims")):
            integer(8, "ne")
        integer(4, "tensor_type")
        integer(8, "tensor_offset")
        out.tensors.append((start, pos, name))
    out.header_end = pos
    return out


def gguf_string(s: str) -> bytes:
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def gguf_value(vtype: int, v) -> bytes:
    if vtype == 8:
        return gguf_string(v)
    if vtype == 9:
        etype, items = v
        return struct.pack("<IQ", etype, len(items)) + b"".join(gguf_value(etype, x) for x in items)
    return struct.pack(GGUF_SCALAR_FORMATS[vtype], v)


def gguf_nested_array(depth: int) -> bytes:
    """An array of one array of one array ... of no u8, as a value (after the value type)."""
    return struct.pack("<IQ", 9, 1) * depth + struct.pack("<IQ", 0, 0)


def gguf_with_header(data: bytes, layout: GGUFLayout, header: bytes, kv_delta=0,
                     tensor_delta=0) -> bytes:
    """A new header (everything before the data section) in front of the old data section,
    padded to the alignment, with the counts adjusted."""
    header = bytearray(header)
    n_tensors, n_kv = struct.unpack_from("<QQ", header, 8)
    struct.pack_into("<QQ", header, 8, n_tensors + tensor_delta, n_kv + kv_delta)
    align = layout.alignment if layout.alignment > 0 else 32
    data_start = -(-layout.header_end // align) * align
    return bytes(header) + b"\0" * (-len(header) % align) + data[data_start:]


def gguf_field_values(rng, kind, old, size, remaining):
    common = [0, 1, 2**31, 2**32 - 1, 2**32, 2**63, 2**64 - 1, 2**40, remaining, remaining + 1,
              max(old - 1, 0), old + 1]
    special = {
        "version": [0, 1, 2, 3, 4, 2**32 - 1],
        "value_type": list(range(13)) + [13, 255],
        "array_type": [9, 9, 8, 13, 255, 0, 10, 12],
        "n_dims": [0, 9, 5, 3, 1, 2**32 - 1],
        "tensor_type": [0, 1, 2, 3, 6, 7, 8, 9, 10, 12, 13, 14, 15, 16, 24, 30, 39, 40, 255],
        "tensor_offset": [old + 1, old + 31, 0, 2**64 - 32, 2**63, remaining],
        "alignment": [0, 3, 1, 2, 2**31, 2**32 - 1, 64],
        "ne": [0, 1, 2**31, 2**32, 2**63, 2**64 - 1, old * 2, max(old - 1, 0), old * 32],
    }
    v = rng.choice(special.get(kind, []) + common)
    return v % (1 << (8 * size))


def mutate_gguf_field(rng, data: bytes) -> tuple[bytes, str]:
    """One or two integer fields of the header (counts, lengths, types, dims, offsets)."""
    layout = walk_gguf(data)
    by_kind = defaultdict(list)
    for f in layout.fields:
        by_kind[f[2]].append(f)
    b = bytearray(data)
    done = []
    for _ in range(rng.choice([1, 1, 2])):
        kind = rng.choice(sorted(by_kind))
        pos, size, _ = rng.choice(by_kind[kind])
        old = int.from_bytes(b[pos:pos + size], "little")
        v = gguf_field_values(rng, kind, old, size, len(b) - pos - size)
        b[pos:pos + size] = v.to_bytes(size, "little")
        done.append(f"{kind} at {pos}: {old} -> {v}")
    return bytes(b), "; ".join(done)


GGUF_KEYS = ["general.architecture", "{a}.block_count", "{a}.embedding_length",
             "{a}.attention.head_count", "{a}.attention.head_count_kv", "{a}.context_length",
             "{a}.feed_forward_length", "{a}.rope.freq_base", "{a}.attention.layer_norm_rms_epsilon",
             "{a}.attention.key_length", "tokenizer.ggml.model", "tokenizer.ggml.pre",
             "tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type",
             "tokenizer.ggml.eos_token_id", "tokenizer.ggml.bos_token_id",
             "tokenizer.ggml.padding_token_id", "tokenizer.chat_template",
             "tokenizer.chat_template.tool_use", "general.alignment"]
GGUF_VALUES = [(4, 0), (4, 1), (4, 2**32 - 1), (4, 3), (10, 2**63), (10, 2**64 - 1), (11, -1),
               (5, -1), (6, float("nan")), (6, 0.0), (6, float("inf")), (12, 1e308), (8, "x"),
               (8, ""), (8, "llama"), (8, "qwen3moe"), (7, True), (9, (0, [])), (9, (8, ["x"])),
               (9, (5, [-1, 2**31 - 1])), (9, (6, [float("nan")])), (9, (8, [""] * 3)),
               (9, (9, [(0, [1])]))]


def mutate_gguf_kv(rng, data: bytes) -> tuple[bytes, str]:
    """A metadata entry retyped, deleted, repeated or added; a tensor info deleted or repeated;
    a deeply nested array appended."""
    layout = walk_gguf(data)
    kv_end = layout.kvs[-1][1]
    head = data[:layout.header_end]
    arch = next((data[s:e] for s, e, k in layout.kvs if k == "general.architecture"), b"qwen2")
    arch = arch[-5:].decode()   # the string's last bytes: "qwen2" / "qwen3"
    op = rng.choice(["retype", "retype", "retype", "delete", "repeat", "nested", "drop_tensor",
                     "repeat_tensor"])
    if op in ("retype", "repeat"):
        key = rng.choice(GGUF_KEYS).format(a=arch)
        vtype, v = rng.choice(GGUF_VALUES)
        kv = gguf_string(key) + struct.pack("<I", vtype) + gguf_value(vtype, v)
        old = next(((s, e) for s, e, k in layout.kvs if k == key), None)
        if op == "retype" and old is not None:
            return gguf_with_header(data, layout, head[:old[0]] + kv + head[old[1]:]), \
                f"{key} = type {vtype} {v!r:.40}"
        return gguf_with_header(data, layout, head[:kv_end] + kv + head[kv_end:], kv_delta=1), \
            f"{key} added = type {vtype} {v!r:.40}"
    if op == "delete":
        s, e, key = rng.choice(layout.kvs)
        return gguf_with_header(data, layout, head[:s] + head[e:], kv_delta=-1), f"{key} deleted"
    if op == "nested":
        depth = rng.choice([2, 1000, 100_000])
        kv = gguf_string("fuzz.nested") + struct.pack("<I", 9) + gguf_nested_array(depth)
        return gguf_with_header(data, layout, head[:kv_end] + kv + head[kv_end:], kv_delta=1), \
            f"array nested {depth} deep added"
    s, e, name = rng.choice(layout.tensors)
    if op == "drop_tensor":
        return gguf_with_header(data, layout, head[:s] + head[e:], tensor_delta=-1), \
            f"tensor {name} deleted"
    return gguf_with_header(data, layout, head + head[s:e], tensor_delta=1), \
        f"tensor {name} repeated"
