"""Text <-> token ids through the `tokenizers` library, and Qwen's ChatML chat format.

ChatML, as Qwen's chat templates write it (written here in code, no Jinja):

    <|im_start|>system
    You are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>
    <|im_start|>user
    Hello<|im_end|>
    <|im_start|>assistant
                                   <- the generation prompt; the model writes from here

Qwen2/2.5 templates insert the default system turn when the conversation has none;
Qwen3's template inserts none.
"""

from __future__ import annotations

import base64
import os
import binascii
from contextlib import contextmanager

import numpy as np

from qwen_np.errors import FormatError
from qwen_np.formats.files import first_line_of, regular_file
from qwen_np.errors import short_repr

# Qwen2's pre-tokenizer split (transformers' tokenization_qwen2.PRETOKENIZE_REGEX; Qwen v1's
# tokenization_qwen.PAT_STR is the same). GGUF files only name it ("pre = qwen2").
QWEN2_SPLIT_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                     r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
GGUF_CONTROL, GGUF_USER_DEFINED = 3, 4   # tokenizer.ggml.token_type values (llama.cpp)
QWEN2_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
QWEN_V1_DEFAULT_SYSTEM = "You are a helpful assistant."   # qwen_generation_utils.make_context
DEFAULT_SYSTEM_BY_MODEL_TYPE = {"qwen": QWEN_V1_DEFAULT_SYSTEM, "qwen2": QWEN2_DEFAULT_SYSTEM,
                                "qwen3": None}
STOP_TOKENS = ("<|endoftext|>", "<|im_end|>")
# the original Qwen's special tokens, at ids len(ranks), len(ranks) + 1, ... (151643 onwards)
QWEN_V1_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>",
                          *(f"<|extra_{i}|>" for i in range(205)))


class Tokenizer:
    """A thin wrapper: encode, decode, and the ids of Qwen's special tokens."""

    def __init__(self, tok, source: str):
        self._tok = tok
        self.source = source

    @classmethod
    def from_path(cls, path: str) -> "Tokenizer":
        """A tokenizer file by its kind: a .tiktoken ranks file, else a tokenizer.json."""
        return cls.from_tiktoken(path) if path.endswith(".tiktoken") else cls.from_file(path)

    @classmethod
    def from_file(cls, path: str) -> "Tokenizer":
        from tokenizers import Tokenizer as HFTokenizer
        regular_file(path)
        with library_errors(path, "cannot read tokenizer"):
            return cls(HFTokenizer.from_file(path), path)

    @classmethod
    def from_gguf_metadata(cls, meta: dict, source: str) -> "Tokenizer":
        """Qwen2's byte-level BPE, rebuilt from a GGUF file's tokenizer.ggml.* metadata:
        the vocabulary (`tokens`, already in GPT-2's byte-to-unicode alphabet), the `merges`
        ("a b" strings), NFC, Qwen2's split regex, byte-level mapping and decoding. Tokens
        typed CONTROL become special tokens, USER_DEFINED ones plain added tokens; both are
        matched whole in the text."""
        from tokenizers import AddedToken, models
        from tokenizers import Tokenizer as HFTokenizer
        model = meta.get("tokenizer.ggml.model")
        pre = meta.get("tokenizer.ggml.pre")
        if not isinstance(model, str) or model != "gpt2" or not (pre is None or (isinstance(pre, str) and
                                                  pre in ("qwen2", "default"))):
            raise FormatError(f"{source}: tokenizer {short_repr(model)} with pre-tokenizer "
                              f"{short_repr(pre)} is not supported (Qwen2's: model 'gpt2', "
                              f"pre 'qwen2')")
        tokens, merges, types = gguf_vocabulary(meta, source)
        vocab = {t: i for i, t in enumerate(tokens)}
        with library_errors(source, "cannot build the tokenizer"):
            bpe = models.BPE(vocab=vocab, merges=merges, unk_token=None, fuse_unk=False,
                             byte_fallback=False)
            tok = HFTokenizer(bpe)
            set_qwen_byte_level(tok)
            if types is not None:
                tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                        for t, k in zip(tokens, types) if k == GGUF_CONTROL])
                tok.add_tokens([AddedToken(t, special=False, normalized=False)
                                for t, k in zip(tokens, types) if k == GGUF_USER_DEFINED])
        return cls(tok, source)

    @classmethod
    def from_tiktoken(cls, path: str) -> "Tokenizer":
        """The original Qwen's tokenizer from its `qwen.tiktoken` ranks file, as a `tokenizers`
        byte-level BPE that encodes exactly as tiktoken does with those ranks:

            qwen.tiktoken, one line per token:  base64(token bytes) <space> rank
                                                "IQ== 0"  is the byte "!" with rank 0

        tiktoken merges, again and again, the adjacent pair whose concatenation has the lowest
        rank. A BPE whose merges are every pair (a, b) with a, b and a + b all tokens, in the
        order of rank(a + b), does the same (tiktoken_merges). Then NFC, Qwen's split regex,
        the byte-to-unicode mapping, and the special tokens at their fixed ids after the
        ranks: <|endoftext|>, <|im_start|>, <|im_end|>, <|extra_0|> ... <|extra_204|>
        (tokenization_qwen.py)."""
        from tokenizers import AddedToken, Tokenizer as HFTokenizer, models
        ranks = read_tiktoken_ranks(path)
        table = {b: ord(c) for b, c in byte_to_unicode().items()}

        def text(b: bytes) -> str:   # each byte as its printable stand-in (a table lookup in C)
            return b.decode("latin-1").translate(table)
        vocab = {text(b): r for b, r in ranks.items()}
        merges = [(text(a), text(b)) for a, b in tiktoken_merges(ranks)]
        with library_errors(path, "cannot build the tokenizer"):
            tok = HFTokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=None,
                                         fuse_unk=False, byte_fallback=False))
            set_qwen_byte_level(tok)
            tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                    for t in QWEN_V1_SPECIAL_TOKENS])
        return cls(tok, path)

    def encode(self, text: str) -> list[int]:
        # Special tokens written in the text (e.g. <|im_start|>) become their single ids.
        with library_errors(self.source, "cannot encode with this tokenizer", reading=False):
            return self._tok.encode(text).ids

    def encode_plain(self, text: str) -> list[int]:
        """Ids of `text` with special-token strings in it encoded as ordinary text (tiktoken's
        allowed_special=set(), disallowed_special=()): how Qwen v1's chat prompt encodes a role
        or a message, so that a user cannot type <|im_end|> into the prompt."""
        with library_errors(self.source, "cannot encode with this tokenizer", reading=False):
            self._tok.encode_special_tokens = True
            try:
                return self._tok.encode(text).ids
            finally:
                self._tok.encode_special_tokens = False

    def decode(self, ids) -> str:
        with library_errors(self.source, "cannot decode with this tokenizer", reading=False):
            return self._tok.decode(list(ids), skip_special_tokens=False)

    def decode_stream(self):
        """A function step(token_id) -> the text that token completes, or None while it ends
        in an unfinished UTF-8 character: tokenizers' DecodeStream, which decodes only a
        few tokens around the new one, so that a token costs the same at position 2,000 as
        at 10. The pieces joined are decode(ids) up to the unfinished tail."""
        from tokenizers.decoders import DecodeStream
        stream = DecodeStream(skip_special_tokens=False)

        def step(token_id: int) -> str | None:
            with library_errors(self.source, "cannot decode with this tokenizer", reading=False):
                return stream.step(self._tok, token_id)
        return step

    def save(self, path: str) -> None:
        """Write it as a tokenizer.json."""
        self._tok.save(path)

    def to_json(self) -> str:
        """The whole tokenizer as tokenizer.json text (what `save` writes); `from_json` of
        it encodes and decodes exactly as this one does, whatever it was built from."""
        return self._tok.to_str()

    @classmethod
    def from_json(cls, text: str, source: str) -> "Tokenizer":
        """A tokenizer from tokenizer.json text, named after `source` (the file it came from)."""
        from tokenizers import Tokenizer as HFTokenizer
        with library_errors(source, "cannot read tokenizer"):
            return cls(HFTokenizer.from_str(text), source)

    def token_bytes(self, token_id: int) -> bytes:
        """The exact bytes one token stands for: its byte-level string with each character
        mapped back to its byte (a special token's text is ASCII, which maps to itself)."""
        piece = self._tok.id_to_token(int(token_id)) or ""
        if not hasattr(self, "_byte_of"):
            self._byte_of = {c: b for b, c in byte_to_unicode().items()}
        if all(c in self._byte_of for c in piece):
            return bytes(self._byte_of[c] for c in piece)
        return piece.encode("utf-8")

    def longest_token_bytes(self) -> int:
        """An upper bound on the bytes of text one token stands for: the longest token's
        string in UTF-8 (a byte-level token's string writes each byte as one character of
        1 or 2 UTF-8 bytes, so this is at least its bytes)."""
        return max(len(t.encode("utf-8")) for t in self._tok.get_vocab(with_added_tokens=True))

    def token_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def stop_ids(self) -> list[int]:
        return [i for i in (self.token_id(t) for t in STOP_TOKENS) if i is not None]


def set_qwen_byte_level(tok) -> None:
    """What every Qwen tokenizer does around its BPE: NFC, Qwen's split regex, bytes mapped to
    printable characters (GPT-2's byte-to-unicode table) and back when decoding."""
    from tokenizers import Regex, decoders, normalizers, pre_tokenizers
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()


MAX_TIKTOKEN_BYTES = 1024   # qwen.tiktoken's longest token has 128 bytes; deriving merges
                            # costs the square of a token's length


def read_tiktoken_ranks(path: str) -> dict[bytes, int]:
    """token bytes -> rank from a .tiktoken file; the ranks must be 0, 1, 2 ... in order."""
    regular_file(path)
    ranks = {}
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            try:
                token, rank = base64.b64decode(parts[0], validate=True), int(parts[1])
            except (IndexError, ValueError, binascii.Error):
                raise FormatError(f"{path}: line {n} is not 'base64-token rank'") from None
            if len(parts) != 2 or rank != len(ranks) or token in ranks or not token:
                raise FormatError(f"{path}: line {n}: expected a new token of rank "
                                  f"{len(ranks)}")
            if len(token) > MAX_TIKTOKEN_BYTES:
                raise FormatError(f"{path}: line {n}: a token of {len(token)} bytes (this "
                                  f"reader takes up to {MAX_TIKTOKEN_BYTES})")
            ranks[token] = rank
    if not ranks:
        raise FormatError(f"{path}: no tokens")
    return ranks


def tiktoken_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """Every split (a, b) of every token with a and b tokens too, ordered by the rank of
    a + b (then by the ranks of a and b). With these merges a BPE merges the pair whose
    concatenation has the lowest rank first: tiktoken's rule."""
    lengths = sorted({len(t) for t in ranks})
    merges = []
    for token, rank in ranks.items():
        # a split leaves two tokens, so only the lengths tokens have are tried: a token of a
        # million bytes costs a few cuts, not a million (real files: some 90 lengths)
        n = len(token)
        cuts = range(1, n) if n <= len(lengths) else [i for i in lengths if i < n]
        splits = [(ranks[token[:i]], ranks[token[i:]], token[:i], token[i:])
                  for i in cuts if token[:i] in ranks and token[i:] in ranks]
        merges.extend((rank, ra, rb, a, b) for ra, rb, a, b in splits)
    merges.sort(key=lambda m: m[:3])
    return [(a, b) for _, _, _, a, b in merges]


def byte_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in for each byte: printable Latin-1 bytes stand for
    themselves, the other 68 bytes become U+0100, U+0101, ... in byte order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]
    moved = [b for b in range(256) if b not in keep]
    return {**{b: chr(b) for b in keep}, **{b: chr(256 + i) for i, b in enumerate(moved)}}


def gguf_vocabulary(meta: dict, source: str):
    """(tokens, merges as pairs, token types or None) from GGUF metadata, checked: tokens and
    merges are strings, every merge is two tokens whose concatenation is a token too (what
    the BPE model needs), and there is one type per token."""
    tokens = meta.get("tokenizer.ggml.tokens")
    merges = meta.get("tokenizer.ggml.merges")
    if tokens is None or merges is None:
        raise FormatError(f"{source}: no tokenizer in the GGUF metadata (tokens/merges missing)")
    for key, items in (("tokens", tokens), ("merges", merges)):
        if not isinstance(items, list) or not all(isinstance(t, str) for t in items):
            raise FormatError(f"{source}: tokenizer.ggml.{key} is not an array of strings")
    vocab = set(tokens)
    pairs = []
    for i, m in enumerate(merges):
        a, space, b = m.partition(" ")
        if not space or a not in vocab or b not in vocab or a + b not in vocab:
            raise FormatError(f"{source}: tokenizer.ggml.merges[{i}] {short_repr(m)} does not "
                              f"merge two tokens of the vocabulary into a third")
        pairs.append((a, b))
    types = meta.get("tokenizer.ggml.token_type")
    if types is not None and (not isinstance(types, np.ndarray) or types.dtype.kind not in "iu"
                              or types.shape != (len(tokens),)):
        raise FormatError(f"{source}: tokenizer.ggml.token_type is not one integer per token")
    return tokens, pairs, types


@contextmanager
def library_errors(source: str, what: str, reading: bool = True):
    """The `tokenizers` library reports a malformed tokenizer with a bare Exception while
    `reading` it, and an inconsistent one can make its Rust code panic later (a
    PanicException, which is not even an Exception): both become a FormatError naming the
    tokenizer's file."""
    try:
        yield
    except Exception as e:
        if not reading:
            raise
        raise FormatError(f"{source}: {what} ({first_line_of(e)})") from None
    except BaseException as e:
        if type(e).__name__ != "PanicException":
            raise
        raise FormatError(f"{source}: {what} (the tokenizers library failed: "
                          f"{first_line_of(e)})") from None


def format_chatml(messages: list[dict], default_system: str | None,
                  add_generation_prompt: bool = True) -> str:
    """messages: [{"role": "system"|"user"|"assistant", "content": str}, ...] -> ChatML text."""
    if default_system is not None and (not messages or messages[0]["role"] != "system"):
        messages = [{"role": "system", "content": default_system}] + list(messages)
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    if add_generation_prompt:
        text += "<|im_start|>assistant\n"
    return text


def tokenizer_from(source) -> Tokenizer:
    """The tokenizer a model's files name (formats/open.py TokenizerSource): its folder's
    tokenizer.json or qwen.tiktoken, or a GGUF file's metadata."""
    if source.gguf_metadata is not None:
        return Tokenizer.from_gguf_metadata(source.gguf_metadata, source.path)
    return Tokenizer.from_path(source.path)


def load_tokenizer(path: str) -> Tokenizer:
    """The tokenizer of a model folder (its tokenizer.json, else its qwen.tiktoken) or of a
    GGUF file (its metadata), without loading the weights: the same tokenizer as
    `load(path).tokenizer`. A lone tokenizer.json or .tiktoken file is read too."""
    from qwen_np.formats.gguf import read_gguf
    from qwen_np.formats.hf_dir import tokenizer_file
    from qwen_np.formats.open import is_gguf, reading
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FormatError(f"{path}: no such file or folder")
    with reading(path):
        if os.path.isdir(path):
            file = tokenizer_file(path)
            if file is None:
                raise FormatError(f"{path}: no tokenizer.json or qwen.tiktoken")
            return Tokenizer.from_path(file)
        regular_file(path)
        if is_gguf(path):
            meta, _ = read_gguf(path)
            return Tokenizer.from_gguf_metadata(meta, path)
        if path.endswith(".tiktoken"):
            return Tokenizer.from_tiktoken(path)
        return Tokenizer.from_file(path)
