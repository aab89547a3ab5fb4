"""`qwen-np bench` (qwen_np/apps/bench.py): interleaved pairs, medians and the ratios' range,
and the machine it names. The measuring children are tested in test_cli.py and
test_prompt_lookup.py; here the rounds are made up, so that every figure is worked by hand."""

import subprocess
import sys

from qwen_np.apps import bench as b

from conftest import fixture_path


def row(system, prefill, decode, ids=(1, 2)):
    return {"system": system, "isa": f"{system} code", "threads": 2, "prefill_tok_s": prefill,
            "decode_tok_s": decode, "ids": list(ids)}


def test_the_pairs_run_interleaved_each_in_a_fresh_process(monkeypatch):
    order = []
    monkeypatch.setattr(b, "run_json", lambda cmd: order.append(cmd[1]) or {"side": cmd[1]})
    rounds = b.bench("m.gguf", "numba", 2, 16, 8, "llama.cpp", "py", pairs=5)
    assert order == ["-m", "-c"] * 5               # qwen-np (python -m), llama.cpp (python -c)
    assert [[r["side"] for r in pair] for pair in rounds] == [["-m", "-c"]] * 5
    order.clear()
    assert len(b.bench("m.gguf", "numba", 2, 16, 8, None, "py", pairs=3)) == 3
    assert order == ["-m"] * 3


def test_the_table_gives_medians_and_the_median_ratio_with_its_range():
    rounds = [[row("qwen-np (numba)", 100, 20), row("llama.cpp", 200, 10)],    # 0.5, 2.0
              [row("qwen-np (numba)", 90, 30), row("llama.cpp", 100, 20)],     # 0.9, 1.5
              [row("qwen-np (numba)", 300, 12), row("llama.cpp", 250, 12)]]    # 1.2, 1.0
    text = b.format_table(rounds, 16)
    ours, theirs, ratio = [l for l in text.splitlines() if l.startswith("| ")][2:5]
    assert ours.split(" | ")[2] == "100.0" and ours.split(" | ")[5] == "20.00"   # medians
    assert theirs.split(" | ")[2] == "200.0" and theirs.split(" | ")[5] == "12.00"
    # the median of the pairs' ratios, not the ratio of the medians (0.5 and 1.667)
    assert ratio.split(" | ")[2] == "0.900 (0.500-1.200)"
    assert ratio.split(" | ")[5] == "1.500 (1.000-2.000)"
    assert "same greedy ids (first 16): True" in text
    assert "qwen-np (numba): 2 threads; qwen-np (numba) code" in text
    assert "llama.cpp: 2 threads; llama.cpp code" in text
    rounds[1][1]["ids"] = [1, 3]
    assert "same greedy ids (first 16): False" in b.format_table(rounds, 16)


def test_an_even_number_of_rounds_takes_the_middle_two():
    assert b.median([4.0, 1.0, 3.0, 2.0]) == 2.5 and b.median([3.0, 1.0, 2.0]) == 2.0


def test_the_cpu_line_names_the_model_and_the_isa():
    line = b.cpu_description()
    with open("/proc/cpuinfo") as f:
        flags = next(l for l in f if l.startswith("flags")).split(":")[1].split()
    assert line.startswith("CPU: ") and "family" in line
    assert ("avx2" in line.split("ISA:")[1].split()) == ("avx2" in flags)
    assert ("avx512f" in line.split("ISA:")[1].split()) == ("avx512f" in flags)


def test_bench_rounds_from_the_command_line():
    r = subprocess.run([sys.executable, "-m", "qwen_np", "bench", "-m",
                        fixture_path("qwen2-untied-bf16-sharded"), "--backend", "numba",
                        "--prompt-tokens", "6", "--gen-tokens", "3", "--pairs", "2"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "2 rounds (medians)" in r.stdout and "CPU: " in r.stdout
    assert "qwen-np (numba): " in r.stdout and "Numba " in r.stdout and "avx" in r.stdout
