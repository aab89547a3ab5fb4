"""The original Qwen's tokenizer from `qwen.tiktoken`, against tiktoken itself with the same
ranks (the oracle, as tokenization_qwen.py uses it): the same ids on a fixed list of strings,
the special tokens at their fixed ids, decoding back to the (NFC) text. The real ranks file
comes from the `dashscope` wheel on PyPI, cached and checked by sha256 (qwen_np.apps.fetch)."""

import base64
import os
import shutil
import unicodedata

import pytest

import qwen_np
from qwen_np.errors import FormatError
from qwen_np.apps.fetch import QWEN_TIKTOKEN, fetch_file
from qwen_np.runtime.tokenizer import QWEN2_SPLIT_REGEX, QWEN_V1_SPECIAL_TOKENS, Tokenizer

tiktoken = pytest.importorskip("tiktoken")

# tokenization_qwen.py's PAT_STR, written out here as the oracle has it
PAT_STR = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+"""
           r"""[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")
TEXTS = [
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "你好，世界！通义千问是阿里云研发的大语言模型。",
    "日本語のテキストと한국어 텍스트, and Русский текст",
    "emoji 🙂👍🏽🇨🇳 and symbols ½ ∑ ≠ ﬁ",
    "tabs\tand   spaces \n\n\n   and\r\nwindows line ends   ",
    "decomposed accents: cafe\u0301 nai\u0308ve (NFC makes them one character)",
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nhi<|im_end|>",
    "<|endoftext|><|extra_0|><|extra_204|> between words<|im_end|>",
    "x = {'a': [1, 2, 3], \"b\": None}  # 12345678901234567890 I'm you're we'll",
    " " * 40 + "a" * 100 + "\u200b\u00a0",
]


@pytest.fixture(scope="module")
def ranks_path():
    return fetch_file(QWEN_TIKTOKEN)


@pytest.fixture(scope="module")
def oracle(ranks_path):
    ranks = {}
    with open(ranks_path, "rb") as f:
        for line in f:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    specials = {t: len(ranks) + i for i, t in enumerate(QWEN_V1_SPECIAL_TOKENS)}
    return tiktoken.Encoding("qwen", pat_str=PAT_STR, mergeable_ranks=ranks,
                             special_tokens=specials)


@pytest.fixture(scope="module")
def tok(ranks_path):
    return Tokenizer.from_tiktoken(ranks_path)


def test_the_split_regex_is_qwens():
    assert QWEN2_SPLIT_REGEX == PAT_STR


@pytest.mark.parametrize("text", TEXTS)
def test_ids_equal_tiktoken(tok, oracle, text):
    nfc = unicodedata.normalize("NFC", text)
    ids = tok.encode(text)
    assert ids == oracle.encode(nfc, allowed_special="all")
    assert tok.decode(ids) == nfc


def test_special_tokens_at_their_fixed_ids(tok):
    assert tok.token_id("<|endoftext|>") == 151643
    assert tok.token_id("<|im_start|>") == 151644
    assert tok.token_id("<|im_end|>") == 151645
    assert tok.token_id("<|extra_0|>") == 151646
    assert tok.token_id("<|extra_204|>") == 151850
    assert tok.stop_ids() == [151643, 151645]


def test_load_tokenizer_finds_qwen_tiktoken_in_a_folder(tmp_path, ranks_path, oracle):
    shutil.copy(ranks_path, tmp_path / "qwen.tiktoken")
    tok = qwen_np.load_tokenizer(tmp_path)
    assert tok.encode(TEXTS[2]) == oracle.encode(TEXTS[2])


def test_a_folder_without_a_tokenizer(tmp_path):
    with pytest.raises(FormatError, match="no tokenizer.json or qwen.tiktoken"):
        qwen_np.load_tokenizer(tmp_path)


@pytest.mark.parametrize("content, message", [
    (b"IQ== 0\nIg== 2\n", "line 2: expected a new token of rank 1"),
    (b"IQ== 0\nIQ== 1\n", "line 2: expected a new token of rank 1"),
    (b"IQ== 0\n!!! 1\n", "line 2 is not 'base64-token rank'"),
    (b"IQ==\n", "line 1 is not 'base64-token rank'"),
    (b"", "no tokens"),
    (b"IQ== 0\n" + base64.b64encode(b"x" * 750000) + b" 1\n", "a token of 750000 bytes")])
def test_malformed_ranks_files(tmp_path, content, message):
    p = tmp_path / "qwen.tiktoken"
    p.write_bytes(content)
    with pytest.raises(FormatError, match=message) as e:
        qwen_np.load_tokenizer(tmp_path)
    assert str(p) in str(e.value) and "\n" not in str(e.value)


def test_fetched_file_is_the_checked_one(ranks_path):
    from qwen_np.apps.fetch import is_fetched, sha256_of
    assert is_fetched(QWEN_TIKTOKEN) and os.path.getsize(ranks_path) == QWEN_TIKTOKEN.size
    assert sha256_of(ranks_path) == QWEN_TIKTOKEN.sha256
