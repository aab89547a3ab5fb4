"""tools/fuzz.py: the harness tells every outcome apart (planted failures in forked children),
the same seed makes the same inputs, and a fixed-seed run over every format finds nothing but
clean errors and loads."""

import importlib.util
import json
import os
import shutil
import stat
import subprocess
import sys
import time

from qwen_np.errors import FormatError

from conftest import TESTS, fixture_path

FUZZ = os.path.join(os.path.dirname(TESTS), "tools", "fuzz.py")
# about 1-2 minutes on 2 cores (60-140 inputs/s, measured; tools/README.md)
FUZZ_COUNT = 6000


def load_fuzz():
    """tools/fuzz.py, by its path; it puts tools/ on sys.path itself, so that its modules
    (tools/fuzzing/, where the dataclasses are) are imported by name as usual."""
    spec = importlib.util.spec_from_file_location("fuzz", FUZZ)
    module = importlib.util.module_from_spec(spec)
    sys.modules["fuzz"] = module     # the one module whoever imports "fuzz" by name gets
    spec.loader.exec_module(module)
    return module


fuzz = load_fuzz()
MARKER = "planted-marker-5f0c"


# what a child runs instead of loading a model; each returns a report or fails its own way
def planted_load(path):
    return {"new": [1, 2]}


def planted_clean(path):
    raise FormatError(f"{path}: bad header")


def planted_unnamed(path):
    raise FormatError("bad header")


class TwoLineError(FormatError):
    """The library keeps its own messages on one line; this one is not."""

    def __str__(self):
        return f"{self.args[0]}\nand a second line"


def planted_multiline(path):
    raise TwoLineError(f"{path}: bad header")


def planted_traceback(path):
    return {}["missing key"]


def planted_sleep(path):
    time.sleep(60)


def planted_allocation(path):
    return {"n": len(bytearray(1 << 44))}   # 16 TiB, past any address-space limit


def planted_abort(path):
    os.abort()


def planted_exit(path):
    os._exit(3)


def planted_leak(path):
    print(f"read: {MARKER}")
    return {}


def planted_cli_clean(path):
    print(f"qwen-np: error: {path}: bad header", file=sys.stderr)
    return {"rc": 1}


def planted_cli_two_lines(path):
    print("some warning", file=sys.stderr)
    print(f"qwen-np: error: {path}: bad header", file=sys.stderr)
    return {"rc": 1}


PLANTED = {planted_load: "load", planted_clean: "clean", planted_unnamed: "traceback",
           planted_multiline: "traceback", planted_traceback: "traceback", planted_sleep: "hang",
           planted_allocation: "memory", planted_abort: "crash", planted_exit: "crash",
           planted_leak: "leak", planted_cli_clean: "clean", planted_cli_two_lines: "traceback"}


def test_the_harness_tells_every_outcome_apart(tmp_path):
    tasks = []
    for i, target in enumerate(PLANTED):
        folder = tmp_path / target.__name__
        folder.mkdir()
        tasks.append(fuzz.Task(i, target.__name__, str(folder / "model"), str(folder), target))
    results = {}
    start = time.monotonic()
    fuzz.run_tasks(tasks, jobs=2, time_limit=3, memory_limit=64 << 30, marker=MARKER,
                   on_result=lambda r: results.__setitem__(r.task.target, r))
    assert time.monotonic() - start < 30
    assert {t.__name__: r.outcome for t, r in results.items()} == \
        {t.__name__: outcome for t, outcome in PLANTED.items()}
    assert results[planted_traceback].kind == "KeyError"
    assert results[planted_traceback].where.startswith("tests/test_fuzz.py:")
    assert "does not name the input" in results[planted_unnamed].why
    assert "planted_sleep" in results[planted_sleep].where     # faulthandler's dump, parsed
    assert results[planted_abort].kind == "killed by SIGABRT"
    assert results[planted_exit].kind == "exit status 3 without a report"


def test_the_same_seed_makes_the_same_inputs(tmp_path):
    # two roots with paths of the same length, so that a path written into a file keeps its size
    seeds_a = fuzz.build_seeds(str(tmp_path / "a"), with_gguf=False)
    seeds_b = fuzz.build_seeds(str(tmp_path / "b"), with_gguf=False)
    formats = list(fuzz.FORMATS)
    made = {}
    for root, seeds in (("a", seeds_a), ("b", seeds_b)):
        made[root] = [fuzz.make_input(seeds, formats, 7, i, str(tmp_path / root / f"in{i}"), MARKER)
                      for i in range(40)]
    for a, b in zip(made["a"], made["b"]):
        assert (a.seed, a.fmt, a.mutator, a.description) == (b.seed, b.fmt, b.mutator, b.description)
        assert tree(a.dir, a.dir) == tree(b.dir, b.dir)
    assert len({x.mutator for x in made["a"]}) > 5
    assert {"tiktoken", "chat_template", "tokenizer_config"} <= {x.fmt for x in made["a"]}
    other = fuzz.make_input(seeds_a, formats, 8, 0, str(tmp_path / "a" / "other"), MARKER)
    assert other.description != made["a"][0].description or other.seed != made["a"][0].seed


def test_the_tiktoken_seed_holds_the_float_fixtures_vocabulary_as_ranks(tmp_path):
    import qwen_np
    seed = next(s for s in fuzz.build_seeds(str(tmp_path), with_gguf=False)
                if s.name == fuzz.TIKTOKEN_SEED)
    assert "tiktoken" in seed.targets and "tokenizer" not in seed.targets
    with open(os.path.join(fixture_path("qwen2-tied-f32"), "tokenizer.json")) as f:
        tok_json = json.load(f)
    added = {t["id"] for t in tok_json["added_tokens"]}
    assert added == {0, 1, 2}          # so the ranks are the other ids minus 3
    tok = qwen_np.load_tokenizer(seed.path)
    vocab = {t: i for t, i in tok_json["model"]["vocab"].items() if i not in added}
    assert {t: tok.token_id(t) for t in vocab} == {t: i - 3 for t, i in vocab.items()}
    assert fuzz.load_and_generate(seed.path)["new"]


def test_the_seeds_carry_the_published_chat_templates_which_mutations_change(tmp_path):
    from qwen_np.formats.chat_templates import read_chat_templates
    from qwen_np.formats.gguf import read_gguf
    published = {}
    for name in ("qwen2.5-instruct.jinja", "qwen3.jinja"):
        with open(os.path.join(fixture_path("chat_templates"), name), encoding="utf-8") as f:
            published[name] = f.read()
    seeds = {s.name: s for s in fuzz.build_seeds(str(tmp_path / "seeds"))}
    expected = {"qwen2-f32": ("qwen2.5-instruct.jinja", ""),
                "qwen2-q4_0": ("qwen2.5-instruct.jinja", ""), "qwen3-f32": ("qwen3.jinja", ""),
                "qwen2-tied-f32": ("qwen2.5-instruct.jinja", "chat_template.jinja"),
                "qwen2-untied-bf16-sharded": ("qwen2.5-instruct.jinja",
                                              "chat_template.json#chat_template"),
                "qwen3-yarn": ("qwen3.jinja", "tokenizer_config.json#chat_template")}
    for name, (template, target) in expected.items():
        seed = seeds[name]
        assert seed.targets["chat_template"] == [target]
        assert read_chat_templates(seed.path).templates["default"] == published[template]
        assert fuzz.load_and_generate(seed.path)["chat_prompt_tokens"] > 100   # the tool's text
    named = read_chat_templates(seeds["gptq-4bit-g32-sym"].path)
    assert named.templates == {"default": published["qwen2.5-instruct.jinja"],
                               "tool_use": published["qwen2.5-instruct.jinja"]}
    assert named.special_tokens == {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
    assert "chat_template" not in seeds["qwen3moe-yarn-f32"].targets   # a GGUF with none

    # a GGUF's template mutated: its other metadata and every tensor as they were
    before, tensors = read_gguf(seeds["qwen3-f32"].path)
    changed = 0
    for i in range(200):
        inp = fuzz.make_input([seeds["qwen3-f32"]], ["chat_template"], 3, i,
                              str(tmp_path / f"in{i}"), MARKER)
        if inp.mutator == "fs":
            continue
        meta, after = read_gguf(inp.model)
        templates = {k: v for k, v in meta.items() if k.startswith("tokenizer.chat_template")}
        assert {k: plain(v) for k, v in meta.items() if k not in templates} == \
            {k: plain(v) for k, v in before.items() if k != "tokenizer.chat_template"}
        assert {k: bytes(t.data) for k, t in after.items()} == \
            {k: bytes(t.data) for k, t in tensors.items()}
        changed += templates != {"tokenizer.chat_template": before["tokenizer.chat_template"]}
        shutil.rmtree(tmp_path / f"in{i}")
    assert changed > 150


def plain(value):
    """A metadata value comparable with ==: arrays as lists."""
    return value.tolist() if hasattr(value, "tolist") else value


def tree(folder, root):
    """Every entry under folder: its kind and, for files, its bytes with root's path taken out."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, folder)
            if os.path.islink(path):
                out[rel] = ("link", os.readlink(path).replace(root, ""))
            elif os.path.isfile(path):
                with open(path, "rb") as f:
                    out[rel] = ("file", f.read().replace(root.encode(), b""))
            else:
                out[rel] = ("other", None)
    return out


def test_a_saved_input_keeps_its_fifos_and_points_at_its_own_files(tmp_path):
    src, dst = tmp_path / "work" / "000001-api", tmp_path / "out" / "000001-api-hang"
    (src / "model").mkdir(parents=True)
    (src / "sentinel.txt").write_text(MARKER)
    os.mkfifo(src / "model" / "config.json")
    os.symlink(src / "sentinel.txt", src / "model" / "tokenizer.json")
    (src / "model" / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": str(src / "sentinel.txt")}}))
    fuzz.copy_input(str(src), str(dst))
    assert stat.S_ISFIFO(os.lstat(dst / "model" / "config.json").st_mode)
    assert os.readlink(dst / "model" / "tokenizer.json") == str(dst / "sentinel.txt")
    index = json.loads((dst / "model" / "model.safetensors.index.json").read_text())
    assert index["weight_map"]["a"] == str(dst / "sentinel.txt")


def test_replay_runs_a_saved_input_in_the_foreground(tmp_path):
    saved = tmp_path / "000000-api-traceback"
    saved.mkdir()
    shutil.copytree(fixture_path("qwen2-tied-f32"), saved / "model")
    (saved / "replay.json").write_text(json.dumps({
        "mode": "api", "model": "model", "marker": MARKER, "description": "an unchanged fixture",
        "time_limit": 60, "memory_limit_gb": 64}))
    r = subprocess.run([sys.executable, FUZZ, "--replay", str(saved)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "outcome: load"


def test_a_fixed_seed_run_over_every_format_finds_only_clean_errors(tmp_path):
    r = subprocess.run([sys.executable, FUZZ, "--seed", "2024", "--count", str(FUZZ_COUNT),
                        "--cli-every", "25", "--out", str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=1800)
    failures = r.stdout[r.stdout.find("distinct failures"):] if "distinct failures" in r.stdout \
        else r.stdout[-3000:] + r.stderr[-3000:]
    assert f"total: {FUZZ_COUNT} inputs" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]
    assert r.returncode == 0, failures
    for fmt in fuzz.FORMATS:            # chat_template and tokenizer_config among them
        assert f"\n  {fmt} " in r.stdout, f"no {fmt} inputs"
