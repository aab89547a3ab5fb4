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

import os

from .errors import FormatError

# Qwen2's pre-tokenizer split (transformers' tokenization_qwen2.PRETOKENIZE_REGEX; Qwen v1's
# tokenization_qwen.PAT_STR is the same). GGUF files only name it ("pre = qwen2").
QWEN2_SPLIT_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                     r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
GGUF_CONTROL, GGUF_USER_DEFINED = 3, 4   # tokenizer.ggml.token_type values (llama.cpp)
QWEN2_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
DEFAULT_SYSTEM_BY_MODEL_TYPE = {"qwen2": QWEN2_DEFAULT_SYSTEM, "qwen3": None}
STOP_TOKENS = ("<|endoftext|>", "<|im_end|>")


class Tokenizer:
    """A thin wrapper: encode, decode, and the ids of Qwen's special tokens."""

    def __init__(self, tok, source: str):
        self._tok = tok
        self.source = source

    @classmethod
    def from_file(cls, path: str) -> "Tokenizer":
        from tokenizers import Tokenizer as HFTokenizer
        if not os.path.isfile(path):
            raise FormatError(f"{path}: tokenizer file not found")
        try:
            return cls(HFTokenizer.from_file(path), path)
        except Exception as e:  # the library raises a bare Exception on malformed JSON
            raise FormatError(f"{path}: cannot read tokenizer ({str(e).splitlines()[0]})") from None

    @classmethod
    def from_gguf_metadata(cls, meta: dict, source: str) -> "Tokenizer":
        """Qwen2's byte-level BPE, rebuilt from a GGUF file's tokenizer.ggml.* metadata:
        the vocabulary (`tokens`, already in GPT-2's byte-to-unicode alphabet), the `merges`
        ("a b" strings), NFC, Qwen2's split regex, byte-level mapping and decoding. Tokens
        typed CONTROL become special tokens, USER_DEFINED ones plain added tokens; both are
        matched whole in the text."""
        from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers
        from tokenizers import Tokenizer as HFTokenizer
        model = meta.get("tokenizer.ggml.model")
        pre = meta.get("tokenizer.ggml.pre")
        if model != "gpt2" or pre not in ("qwen2", "default", None):
            raise FormatError(f"{source}: tokenizer {model!r} with pre-tokenizer {pre!r} is not "
                              f"supported (Qwen2's: model 'gpt2', pre 'qwen2')")
        tokens = meta.get("tokenizer.ggml.tokens")
        merges = meta.get("tokenizer.ggml.merges")
        if tokens is None or merges is None:
            raise FormatError(f"{source}: no tokenizer in the GGUF metadata (tokens/merges missing)")
        vocab = {t: i for i, t in enumerate(tokens)}
        bpe = models.BPE(vocab=vocab, merges=[tuple(m.split(" ", 1)) for m in merges],
                         unk_token=None, fuse_unk=False, byte_fallback=False)
        tok = HFTokenizer(bpe)
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        tok.decoder = decoders.ByteLevel()
        types = meta.get("tokenizer.ggml.token_type")
        if types is not None:
            tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                    for t, k in zip(tokens, types) if k == GGUF_CONTROL])
            tok.add_tokens([AddedToken(t, special=False, normalized=False)
                            for t, k in zip(tokens, types) if k == GGUF_USER_DEFINED])
        return cls(tok, source)

    def encode(self, text: str) -> list[int]:
        # Special tokens written in the text (e.g. <|im_start|>) become their single ids.
        return self._tok.encode(text).ids

    def decode(self, ids) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)

    def save(self, path: str) -> None:
        """Write it as a tokenizer.json."""
        self._tok.save(path)

    def token_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def stop_ids(self) -> list[int]:
        return [i for i in (self.token_id(t) for t in STOP_TOKENS) if i is not None]


def format_chatml(messages: list[dict], default_system: str | None,
                  add_generation_prompt: bool = True) -> str:
    """messages: [{"role": "system"|"user"|"assistant", "content": str}, ...] -> ChatML text."""
    if default_system is not None and (not messages or messages[0]["role"] != "system"):
        messages = [{"role": "system", "content": default_system}] + list(messages)
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    if add_generation_prompt:
        text += "<|im_start|>assistant\n"
    return text
