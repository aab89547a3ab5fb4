"""The tokenizer in a prepared-model cache file: what is stored of it, and the factory that
builds it again from what was stored (the index's "tokenizer" entry, drawn in
file_format.py).

A cold load builds the tokenizer of the real GGUF from its metadata in 0.4 s, so a GGUF's
(and a qwen.tiktoken) tokenizer is stored as the tokenizer.json text of the one built; a
folder's tokenizer.json is stored as it is. Either way it is built on first use, as after a
cold load.
"""

from __future__ import annotations

import os

from qwen_np.errors import QwenNpError
from qwen_np.tensors.mapped import drop_pages
from qwen_np.runtime.tokenizer import Tokenizer


def stored_tokenizer(model_path: str, make_tokenizer):
    """(what the cache stores of the tokenizer, the factory to keep using):
    - a folder's tokenizer.json: its text as it is, the tokenizer not built (a cold load
      builds it only when it is first used; and `tokenizers` serializes what it has built
      through a table as long as its largest id, which a malformed file can make 2^31 long);
    - a GGUF's or a qwen.tiktoken tokenizer: built (as it would be on first use) and
      serialized, since building it is what the cache saves; its ids are dense from 0;
    - "source" where the text is too long or building it fails (it is then built, and
      refused with the same error, on use); None where the model has none."""
    from qwen_np.formats.hf_dir import tokenizer_file
    from qwen_np.formats.files import MAX_JSON_BYTES
    if make_tokenizer is None:
        return None, None
    if os.path.isdir(model_path) and tokenizer_file(model_path).endswith("tokenizer.json"):
        with open(tokenizer_file(model_path), "rb") as f:
            text = f.read(MAX_JSON_BYTES + 1)
        return ("source" if len(text) > MAX_JSON_BYTES else (text, "tokenizer.json"),
                make_tokenizer)
    try:
        tok = make_tokenizer()
    except QwenNpError:
        return "source", make_tokenizer
    name = "" if tok.source == model_path else os.path.basename(tok.source)
    return (tok.to_json().encode("utf-8"), name), lambda: tok


def tokenizer_factory(tok, array, model_path: str):
    """The model's tokenizer, built on first use (as after a cold load): from the stored
    tokenizer.json text, or from the model's own files ("source"); None if it has none."""
    if tok is None:
        return None
    if tok == "source":
        from qwen_np.runtime.tokenizer import load_tokenizer
        return lambda: load_tokenizer(model_path)
    text = array(tok["json"], first=True)
    source = tokenizer_source(tok, model_path)

    def make() -> Tokenizer:
        json_text = text.tobytes().decode("utf-8")
        drop_pages(text)          # the text's pages are not needed once it is a tokenizer
        return Tokenizer.from_json(json_text, source)
    return make


def tokenizer_source(tok: dict, model_path: str) -> str:
    """The file a stored tokenizer came from: a file of the model's folder, or the model."""
    return os.path.join(model_path, tok["source"]) if tok["source"] else model_path


def built_meanwhile(make_tokenizer):
    """The tokenizer built now, as a factory; where building it fails, the factory itself,
    which fails the same way when the tokenizer is first used (as after a cold load)."""
    if make_tokenizer is None:
        return None
    try:
        tokenizer = make_tokenizer()
    except Exception:   # noqa: BLE001 (raised again, as a cold load raises it, on first use)
        return make_tokenizer
    return lambda: tokenizer
