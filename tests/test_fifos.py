"""FIFOs (named pipes) where a file is expected: every command refuses them with a one-line
error, or leaves them out, before opening them (opening a FIFO to read waits for a writer,
forever)."""

import json
import os
import shutil
import subprocess
import sys
from types import SimpleNamespace

import pytest

from conftest import fixture_path
from qwen_np.errors import FormatError

F32_DIR = fixture_path("qwen2-tied-f32")


def copy_of(src, tmp_path, name="model"):
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("name", [None, "config.json", "model.safetensors", "tokenizer.json"])
def test_a_fifo_is_refused_not_read(tmp_path, name):
    d = copy_of(F32_DIR, tmp_path)
    target = tmp_path / "pipe" if name is None else d / name
    if name is not None:
        target.unlink()
    os.mkfifo(target)
    r = subprocess.run([sys.executable, "-m", "qwen_np", "run", "-m", str(target if name is None
                        else d), "-p", "a", "-n", "1"], capture_output=True, text=True, timeout=60)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and "not a regular file" in lines[0], r.stderr


@pytest.mark.parametrize("name", ["x.gguf", "model"])
def test_inspect_refuses_a_fifo(tmp_path, name):
    """inspect sniffs a file's magic: a FIFO is refused before it is opened, not waited on."""
    fifo = tmp_path / name
    os.mkfifo(fifo)
    r = subprocess.run([sys.executable, "-m", "qwen_np", "inspect", str(fifo)],
                       capture_output=True, text=True, timeout=60)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert lines[0].startswith("qwen-np: error: ") and str(fifo) in lines[0], r.stderr


def test_ppl_and_trace_do_not_wait_on_a_fifo(tmp_path):
    """ppl's --text, and the model folder's files that trace hashes, may be FIFOs: a one-line
    error for the text, and the FIFO left out of the trace's file list."""
    fifo = tmp_path / "text.txt"
    os.mkfifo(fifo)
    r = subprocess.run([sys.executable, "-m", "qwen_np", "ppl", "-m",
                        fixture_path("qwen2-tied-f32"), "--text", str(fifo)],
                       capture_output=True, text=True, timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert f"{fifo}: not a regular file" in lines[0]
    from qwen_np.oracle.trace import model_identity
    folder = tmp_path / "model"
    shutil.copytree(fixture_path("qwen2-tied-f32"), folder)
    os.mkfifo(folder / "extra.json")
    from qwen_np.model.config import config_from_hf_dict
    config = config_from_hf_dict(json.loads((folder / "config.json").read_text()))
    identity = model_identity(SimpleNamespace(source=str(folder), config=config))
    assert "extra.json" not in identity["sha256"] and "config.json" in identity["sha256"]


def test_is_gguf_refuses_a_fifo(tmp_path):
    """is_gguf checks the file itself, whoever calls it. The FIFO is held open at both ends
    (O_RDWR, as Linux allows) with GGUF's magic in it, so that reading it would not block:
    read, it would pass for a GGUF file."""
    from qwen_np.formats.open import is_gguf
    fifo = tmp_path / "x.gguf"
    os.mkfifo(fifo)
    fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
    try:
        os.write(fd, b"GGUF")
        with pytest.raises(FormatError, match="not a regular file"):
            is_gguf(str(fifo))
    finally:
        os.close(fd)
