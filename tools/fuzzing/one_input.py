"""One input: which mutators each format gets, make_input (input i of a run seed, drawn from
its own random.Random and written to a new folder), and copy_input (which saves one)."""

from __future__ import annotations

import json
import os
import random
import shutil
import stat
from dataclasses import dataclass

from fuzzing.mutate_bytes import mutate_bytes
from fuzzing.mutate_chat_template import TEMPLATE_MUTATORS, mutate_chat_template
from fuzzing.mutate_files import FS_OPS, mutate_fs, replace_path
from fuzzing.mutate_gguf import mutate_gguf_field, mutate_gguf_kv
from fuzzing.mutate_json import JSON_MUTATORS, dump_json
from fuzzing.mutate_safetensors import mutate_st_entry, mutate_st_header
from fuzzing.mutate_tiktoken import TIKTOKEN_MUTATORS
from fuzzing.seeds import QWEN3_TEMPLATE, QWEN25_TEMPLATE, Seed, published_template


MUTATORS = {
    "gguf": ["gguf_field", "gguf_field", "gguf_kv", "gguf_kv", "bytes", "fs"],
    "safetensors": ["st_entry", "st_entry", "st_header", "bytes", "fs"],
    "index": ["index_shards", "index_shards", "json_value", "json_keys", "json_known",
              "json_deep", "bytes", "fs"],
}
for _fmt in ("config", "generation_config", "quant_config", "tokenizer", "tokenizer_config"):
    MUTATORS[_fmt] = ["json_value", "json_keys", "json_known", "json_known", "json_deep",
                      "bytes", "fs"]
MUTATORS["tokenizer"] += ["tokenizer_ids"]
MUTATORS["tiktoken"] = [*TIKTOKEN_MUTATORS, "bytes", "fs"]
MUTATORS["config"] += ["swap"]
MUTATORS["safetensors"] += ["swap"]
MUTATORS["chat_template"] = [*TEMPLATE_MUTATORS, "template_splice", "template_splice", "fs"]
# A model's own files may be symlinks to anywhere (formats/files.py: Hugging Face's cache links
# them to blobs), and a template file's text is the prompt: the planted file's marker in the
# prompt, read through chat_template.jinja linked to it, is what the user asked for, no leak.
TEMPLATE_FS_OPS = [op for op in FS_OPS if op not in ("symlink_outside", "symlink_outside_abs")]


@dataclass
class InputContext:
    model: str        # the path handed to qwen_np.load: a folder or a .gguf file
    sentinel: str     # the planted file outside the model, holding the marker
    sentinel_rel: str  # the same, relative to the model folder


@dataclass
class Input:
    index: int
    seed: str
    fmt: str
    mutator: str
    target: str
    description: str
    dir: str          # holds the model, the sentinel, the child's output
    model: str


def make_input(seeds: list[Seed], formats: list[str], run_seed: int, index: int,
               dest: str, marker: str) -> Input:
    """Input `index` of run `run_seed`, written under dest (a new folder). Every choice is drawn
    from one random.Random(f"{run_seed}/{index}"), so it is the same every time."""
    rng = random.Random(f"{run_seed}/{index}")
    usable = [f for f in formats if any(f in s.targets for s in seeds)]
    fmt = rng.choice(usable)
    seed = rng.choice([s for s in seeds if fmt in s.targets])
    mutator = rng.choice(MUTATORS[fmt])
    target = rng.choice(seed.targets[fmt])
    if "#" in target and mutator not in JSON_MUTATORS and fmt != "chat_template":
        mutator = "json_known"

    os.makedirs(dest)
    model = os.path.join(dest, "model.gguf" if seed.path.endswith(".gguf") else "model")
    (shutil.copyfile if os.path.isfile(seed.path) else shutil.copytree)(seed.path, model)
    sentinel = os.path.join(dest, "sentinel.txt")
    with open(sentinel, "w") as f:
        f.write(f"{marker}\n")
    ctx = InputContext(model, sentinel, os.path.relpath(sentinel, model))
    file_path = model if target == "" else os.path.join(model, target.split("#")[0])

    if mutator == "swap":
        donor = rng.choice(donor_files(seeds, seed, fmt))
        replace_path(file_path)
        shutil.copyfile(donor, file_path)
        desc = f"replaced by {os.path.relpath(donor, os.path.dirname(seed.path))}"
    elif mutator == "fs":
        desc = mutate_fs(rng, ctx, file_path, TEMPLATE_FS_OPS if fmt == "chat_template" else FS_OPS)
    elif mutator in TEMPLATE_MUTATORS:
        others = [published_template(t) for t in (QWEN25_TEMPLATE, QWEN3_TEMPLATE)]
        desc = mutate_chat_template(rng, mutator, file_path, target, ctx, others)
    elif mutator in JSON_MUTATORS:
        with open(file_path, encoding="utf-8") as f:
            whole = json.load(f)
        subtree = target.partition("#")[2]
        obj = whole[subtree] if subtree else whole
        obj, desc = JSON_MUTATORS[mutator](rng, obj, fmt, ctx)
        if subtree:
            whole[subtree] = obj
            desc = f"{subtree}: {desc}"
        else:
            whole = obj
        with open(file_path, "w", encoding="utf-8") as f:
            f.write(dump_json(whole))
    else:
        with open(file_path, "rb") as f:
            data = f.read()
        binary = {"bytes": mutate_bytes, "st_entry": mutate_st_entry, "st_header": mutate_st_header,
                  "gguf_field": mutate_gguf_field, "gguf_kv": mutate_gguf_kv,
                  **TIKTOKEN_MUTATORS}[mutator]
        data, desc = binary(rng, data)
        with open(file_path, "wb") as f:
            f.write(data)
    name = target or os.path.basename(model)
    return Input(index, seed.name, fmt, mutator, target, f"{seed.name} {name}: {desc}", dest, model)


def donor_files(seeds: list[Seed], seed: Seed, fmt: str) -> list[str]:
    """Files of the same format from the other folder seeds: two checkpoints mixed up."""
    return [os.path.join(s.path, t) for s in seeds if s is not seed and os.path.isdir(s.path)
            for t in s.targets.get(fmt, []) if "#" not in t]


def copy_input(src: str, dst: str, top: tuple[str, str] | None = None) -> None:
    """Copy an input folder that may hold FIFOs and symlinks (shutil would block on a FIFO),
    rewriting absolute paths into src (in symlinks and small files) to point into dst."""
    old, new = top or (src, dst)
    os.makedirs(dst)
    for name in sorted(os.listdir(src)):
        s, d = os.path.join(src, name), os.path.join(dst, name)
        mode = os.lstat(s).st_mode
        if stat.S_ISLNK(mode):
            os.symlink(os.readlink(s).replace(old, new), d)
        elif stat.S_ISDIR(mode):
            copy_input(s, d, (old, new))
        elif stat.S_ISFIFO(mode):
            os.mkfifo(d)
        elif stat.S_ISREG(mode):
            with open(s, "rb") as f:
                data = f.read()
            if len(data) < 2**20:
                data = data.replace(old.encode(), new.encode())
            with open(d, "wb") as f:
                f.write(data)
