"""Where qwen-np keeps what it downloads and prepares, and the digest that checks a file.

    $QWEN_NP_CACHE, else ~/.cache/qwen-np     the default model (apps/fetch.py)
        prepared/                             prepared models (runtime/prepared/),
                                              unless $QWEN_NP_CACHE_DIR names another folder
"""

from __future__ import annotations

import hashlib
import os


def cache_dir() -> str:
    return os.environ.get("QWEN_NP_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                            "qwen-np")


def sha256_of(path: str, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
