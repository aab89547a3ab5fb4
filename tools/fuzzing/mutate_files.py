"""File-system mutations: the target file, or the model path itself, replaced by something
that is not a file (FIFO, folder, empty file, symlinks out of the folder or to /dev/zero)."""

from __future__ import annotations

import os
import shutil


def replace_path(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


FS_OPS = ["fifo", "directory", "empty", "symlink_outside", "symlink_outside_abs",
          "symlink_dev_zero", "dangling_symlink", "symlink_loop", "delete", "model_fifo",
          "model_symlink_outside", "model_other_kind"]


def mutate_fs(rng, ctx, target: str, ops=FS_OPS) -> str:
    """The target file (or the model path itself) replaced by something that is not a file."""
    op = rng.choice(ops)
    if op.startswith("model_"):
        target = ctx.model
    replace_path(target)
    rel = os.path.relpath(ctx.sentinel, os.path.dirname(target))
    if op in ("fifo", "model_fifo"):
        os.mkfifo(target)
    elif op == "directory":
        os.mkdir(target)
    elif op == "empty":
        open(target, "wb").close()
    elif op in ("symlink_outside", "model_symlink_outside"):
        os.symlink(rel, target)
    elif op == "symlink_outside_abs":
        os.symlink(ctx.sentinel, target)
    elif op == "symlink_dev_zero":
        os.symlink("/dev/zero", target)
    elif op == "dangling_symlink":
        os.symlink("missing-file", target)
    elif op == "symlink_loop":
        os.symlink(os.path.basename(target), target)
    elif op == "model_other_kind":
        if target.endswith(".gguf"):
            os.mkdir(target)
        else:
            open(target, "wb").close()
    return f"{op}"
