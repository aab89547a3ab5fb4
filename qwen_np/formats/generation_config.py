"""A Hugging Face folder's generation_config.json as sampling defaults: the settings that
apply where a request or the command line does not give them. Qwen2.5-7B-Instruct's:

    {"do_sample": true, "temperature": 0.7, "top_p": 0.8, "top_k": 20,
     "repetition_penalty": 1.05, "bos_token_id": ..., "eos_token_id": [...], ...}
    -> {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05}

Only the keys the file sets are taken (as vLLM's `--generation-config auto` does), not
transformers' defaults for the others (its top_k 50, say). `do_sample: false` means greedy
whatever the temperature, as in transformers: temperature 0 (the repetition penalty still
applies, as it does to transformers' greedy search). A GGUF file has no such file: {}. The
same file's EOS ids are read with config.json (formats/hf_dir.py).
"""

from __future__ import annotations

import os

from qwen_np.errors import FormatError, short_repr
from qwen_np.formats.files import read_json

GENERATION_CONFIG = "generation_config.json"
SAMPLING_KEYS = ("temperature", "top_p", "top_k", "repetition_penalty", "min_p")


def read_generation_defaults(path: str) -> dict:
    """The sampling settings generation_config.json sets in the model folder `path` ({} for a
    GGUF file or a folder without one); a FormatError naming the file for bad JSON or a value
    the sampler would refuse."""
    file = os.path.join(path, GENERATION_CONFIG)
    if not os.path.isdir(path) or not os.path.lexists(file):
        return {}
    gen = read_json(file, GENERATION_CONFIG)
    if not isinstance(gen, dict):
        raise FormatError(f"{file}: not a JSON object")
    defaults = {key: gen[key] for key in SAMPLING_KEYS if gen.get(key) is not None}
    do_sample = gen.get("do_sample")
    if do_sample is not None and not isinstance(do_sample, bool):
        raise FormatError(f"{file}: do_sample is {short_repr(do_sample)}; expected true or false")
    if do_sample is False:
        defaults["temperature"] = 0.0
    for key, value in defaults.items():          # numbers; their ranges: Sampling, on load
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise FormatError(f"{file}: {key} is {short_repr(value)}; expected a number")
    return defaults
