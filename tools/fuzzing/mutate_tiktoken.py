"""qwen.tiktoken mutations: lines, ranks, tokens, and the file as a whole."""

from __future__ import annotations

import base64


def tiktoken_lines(data: bytes) -> list[list[bytes]]:
    """[token field, rank field] of each line of a file this script wrote."""
    return [line.split(b" ") for line in data.splitlines()]


def join_tiktoken(lines: list[list[bytes]], end: bytes = b"\n") -> bytes:
    return b"".join(b" ".join(fields) + end for fields in lines)


def renumber(lines: list[list[bytes]]) -> None:
    """Ranks 0, 1, 2 ... again, after lines were added or removed."""
    for rank, fields in enumerate(lines):
        fields[1] = b"%d" % rank


def mutate_tiktoken_line(rng, data: bytes) -> tuple[bytes, str]:
    """Whole lines deleted, repeated, swapped, or blank: ranks missing or out of order and
    tokens repeated, or (ranks renumbered) a shorter or reordered vocabulary."""
    lines = tiktoken_lines(data)
    i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
    op = rng.choice(["delete", "duplicate", "swap", "blank"])
    if op == "delete":
        del lines[i]
        desc = f"line {i + 1} deleted"
    elif op == "duplicate":
        lines.insert(i, list(lines[i]))
        desc = f"line {i + 1} repeated"
    elif op == "swap":
        lines[i], lines[j] = lines[j], lines[i]
        desc = f"lines {i + 1} and {j + 1} swapped"
    else:
        lines.insert(i, [b""])
        desc = f"blank line before line {i + 1}"
    if op != "blank" and rng.random() < 0.3:
        renumber(lines)
        desc += ", ranks renumbered"
    return join_tiktoken(lines), desc


def mutate_tiktoken_rank(rng, data: bytes) -> tuple[bytes, str]:
    """One rank set to another number (near, negative, huge) or to something else."""
    lines = tiktoken_lines(data)
    i = rng.randrange(len(lines))
    r = int(lines[i][1])
    numbers = [r + 1, r - 1, 0, len(lines), -1, -r, -2**63, 2**31, 2**32, 2**63, 2**64, 10**30]
    others = [b"", b"x", b"1.5", b"1e3", b"0x10", b"+%d" % r, b"0%d" % r, b"%d_0" % r,
              b"\xd9\xa1", b"1" * 5000, b"%d\0" % r, b"nan", b"-0"]
    new = b"%d" % rng.choice(numbers) if rng.random() < 0.5 else rng.choice(others)
    old, lines[i][1] = lines[i][1], new
    return join_tiktoken(lines), f"line {i + 1}: rank {old.decode()} -> {new[:20]!r}"


def mutate_tiktoken_token(rng, data: bytes) -> tuple[bytes, str]:
    """One token field corrupted (bad base64, empty), extra fields, or a new token added at
    the next rank (special tokens' text, bytes that are not UTF-8, a long one)."""
    lines = tiktoken_lines(data)
    i = rng.randrange(len(lines))
    token = lines[i][0]
    op = rng.choice(["base64", "base64", "empty", "extra_field", "new_token"])
    if op == "base64":
        new = rng.choice([token[:-1], token + b"=", token.rstrip(b"="), b"!" + token,
                          token + b"\xff", b"====", b"=" + token, token.lower(), token.upper(),
                          token.replace(b"=", b"-"), b"-_" + token, token[:2] + b"\0" + token[2:],
                          base64.urlsafe_b64encode(b"\xfb\xff"), b"\xef\xbb\xbf" + token])
        lines[i][0] = new
        return join_tiktoken(lines), f"line {i + 1}: token {token!r} -> {new[:20]!r}"
    if op == "empty":
        lines[i][0] = rng.choice([b"", b"="])
        return join_tiktoken(lines), f"line {i + 1}: token {token!r} -> {lines[i][0]!r}"
    if op == "extra_field":
        extra = rng.choice([b" 0", b" x", b" " + lines[i][1], b"\t", b" ", b"\x0b", b" #"])
        lines[i][1] += extra
        return join_tiktoken(lines), f"line {i + 1}: {extra!r} appended"
    new = rng.choice([b"<|endoftext|>", b"<|im_start|>", b"<|extra_0|>", b"\0", b"\xff\xfe",
                      b"\xe4\xbd\xa0\xe5\xa5\xbd", b"def", b" return", b"x" * 1000,
                      base64.b64decode(token) + b"\x80", base64.b64decode(token)])
    lines.append([base64.b64encode(new), b"%d" % len(lines)])
    return join_tiktoken(lines), f"token {new[:20]!r} added at rank {len(lines) - 1}"


def mutate_tiktoken_file(rng, data: bytes) -> tuple[bytes, str]:
    """The file as a whole: line endings, a byte-order mark, an empty file, a line of 10^6
    characters, or so many tokens first that every rank lies past the model's vocabulary."""
    lines = tiktoken_lines(data)
    op = rng.choice(["crlf", "cr", "no_final_newline", "bom", "empty", "long_line",
                     "ranks_past_vocab"])
    if op == "crlf":
        return join_tiktoken(lines, b"\r\n"), "CRLF line endings"
    if op == "cr":
        return join_tiktoken(lines, b"\r"), "CR line endings"
    if op == "no_final_newline":
        return join_tiktoken(lines)[:-1], "no newline after the last line"
    if op == "bom":
        return b"\xef\xbb\xbf" + data, "UTF-8 byte-order mark first"
    if op == "empty":
        new = rng.choice([b"", b"\n", b"\r\n", b" "])
        return new, f"file = {new!r}"
    if op == "long_line":
        n = 10**6
        i = rng.randrange(len(lines) + 1)
        kind = rng.choice(["token", "not_base64", "rank", "no_newline"])
        if kind == "token":     # a valid token of 750,000 bytes, at rank i
            lines.insert(i, [base64.b64encode(rng.randbytes(n * 3 // 4)), b""])
            renumber(lines)
        elif kind == "not_base64":
            lines.insert(i, [b"!" * n, b"%d" % i])
        elif kind == "rank":
            lines.insert(i, [base64.b64encode(b"\0\1"), b"7" * n])
        else:
            return data + b"A" * n, "10^6 characters after the last line, no newline"
        return join_tiktoken(lines), f"line of 10^6 characters ({kind}) at line {i + 1}"
    k = rng.choice([100, 1000, 20_000])
    filler = [[base64.b64encode(b"\0fill%d" % n), b""] for n in range(k)]
    lines = filler + lines
    renumber(lines)
    return join_tiktoken(lines), f"{k} tokens first (every rank + {k})"


TIKTOKEN_MUTATORS = {"tiktoken_line": mutate_tiktoken_line, "tiktoken_rank": mutate_tiktoken_rank,
                     "tiktoken_token": mutate_tiktoken_token, "tiktoken_file": mutate_tiktoken_file}
