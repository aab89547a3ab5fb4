"""The qwen-np command, run as a real subprocess."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import fixture_path

FIX = fixture_path("qwen2-tied-f32")


def qwen_np(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "qwen_np", *args], capture_output=True,
                          text=True, input=stdin, timeout=120)


def assert_one_line_error(r, *needles):
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("qwen-np: error: ")
    for n in needles:
        assert n in lines[0]


def test_run_prints_the_prompt_and_its_continuation():
    r = qwen_np("run", "-m", FIX, "-p", "def fibonacci(n):", "-n", "8")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("def fibonacci(n):")
    assert len(r.stdout) > len("def fibonacci(n):\n")


def test_run_is_reproducible_with_a_seed_and_chat_mode_works():
    a = qwen_np("run", "-m", FIX, "-p", "hi", "-n", "6", "--temperature", "0.8", "--seed", "3")
    b = qwen_np("run", "-m", FIX, "-p", "hi", "-n", "6", "--temperature", "0.8", "--seed", "3")
    assert a.returncode == 0 and a.stdout == b.stdout
    c = qwen_np("run", "-m", FIX, "-p", "hi", "-n", "4", "--chat", "--dtype", "float64")
    assert c.returncode == 0, c.stderr


def test_chat_reads_turns_from_stdin():
    r = qwen_np("chat", "-m", FIX, "-n", "4", stdin="hello\nand again\n/exit\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("\n") >= 2  # one line per answer


def test_inspect_groups_tensors_by_dtype():
    r = qwen_np("inspect", fixture_path("qwen2-untied-bf16-sharded"))
    assert r.returncode == 0, r.stderr
    assert "model_type                 qwen2" in r.stdout
    assert "bfloat16       27" in r.stdout


@pytest.mark.parametrize("cmd", [[], ["run"], ["chat"], ["inspect"]])
def test_help(cmd):
    r = qwen_np(*cmd, "--help")
    assert r.returncode == 0 and "usage: qwen-np" in r.stdout


def test_missing_path():
    assert_one_line_error(qwen_np("run", "-m", "/no/such/model", "-p", "x"), "/no/such/model")
    assert_one_line_error(qwen_np("inspect", "/no/such/model"), "/no/such/model")


def test_unsupported_model_type(tmp_path):
    d = tmp_path / "m"
    shutil.copytree(FIX, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "llama"
    (d / "config.json").write_text(json.dumps(cfg))
    assert_one_line_error(qwen_np("run", "-m", str(d), "-p", "x"),
                          "config.json", "model_type 'llama' is not supported")


def test_truncated_safetensors(tmp_path):
    d = tmp_path / "m"
    shutil.copytree(FIX, d)
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[: os.path.getsize(f) // 2])
    assert_one_line_error(qwen_np("run", "-m", str(d), "-p", "x"), "model.safetensors", "truncated")


def test_missing_tokenizer(tmp_path):
    d = tmp_path / "m"
    shutil.copytree(FIX, d)
    os.remove(d / "tokenizer.json")
    assert_one_line_error(qwen_np("run", "-m", str(d), "-p", "x"), "no tokenizer.json")


def test_bench_prints_the_table_and_refuses_a_missing_llama_cpp():
    r = qwen_np("bench", "-m", FIX, "--prompt-tokens", "5", "--gen-tokens", "3")
    assert r.returncode == 0, r.stderr
    assert "| qwen-np (numba) |" in r.stdout and "decode (tok/s)" in r.stdout   # auto: numba
    assert_one_line_error(qwen_np("bench", "-m", FIX, "--vs", "llama.cpp", "--llama-python",
                                  sys.executable + "-missing"), "cannot import llama_cpp")


def test_the_cli_module_runs_as_a_script_with_every_command_defined():
    """`python -m qwen_np.apps.cli` (the module itself, not the package's __main__) defines
    every command before it dispatches: each command's help prints."""
    commands = ["run", "chat", "serve", "quantize", "memory", "bench", "fetch", "inspect",
                "trace", "compare", "ppl"]
    r = subprocess.run([sys.executable, "-m", "qwen_np.apps.cli", "--help"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    for c in commands:
        assert c in r.stdout
    for c in commands:
        r = subprocess.run([sys.executable, "-m", "qwen_np.apps.cli", c, "--help"],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and f"usage: qwen-np {c}" in r.stdout, (c, r.stderr[-500:])
