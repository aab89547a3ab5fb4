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

    def encode(self, text: str) -> list[int]:
        # Special tokens written in the text (e.g. <|im_start|>) become their single ids.
        return self._tok.encode(text).ids

    def decode(self, ids) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)

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
