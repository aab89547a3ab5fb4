"""`qwen-np chat` renders the whole conversation with the model's template every turn and runs
only what the KV cache does not already hold; `run --chat --no-think` gives Qwen3 its empty
think block."""

import builtins
import json
import os
import shutil

import pytest

import qwen_np
from conftest import FIXTURES
from qwen_np.apps.cli import main
from qwen_np.runtime import load as load_module

TEMPLATES = os.path.join(FIXTURES, "chat_templates")


@pytest.fixture(scope="module")
def qwen3_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("chat") / "qwen3"
    shutil.copytree(os.path.join(FIXTURES, "qwen3-headdim12-f32"), folder)
    shutil.copy(os.path.join(TEMPLATES, "qwen3.jinja"), folder / "chat_template.jinja")
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>"}))
    return str(folder)


def test_chat_rerenders_each_turn_and_reuses_the_common_prefix(qwen3_folder, monkeypatch,
                                                                capsys):
    calls = []
    real_generate = load_module.Model.generate

    def spy(self, ids, max_new_tokens=64, sampling=None, stream=None, stop_ids=None,
            cache=None, **kwargs):
        calls.append((list(ids), cache.length))
        return real_generate(self, ids, max_new_tokens, sampling, stream, stop_ids, cache,
                             **kwargs)
    monkeypatch.setattr(load_module.Model, "generate", spy)
    lines = iter(["What is 2+2?", "And 3+3?"])

    def fake_input(prompt=""):
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None
    monkeypatch.setattr(builtins, "input", fake_input)
    assert main(["chat", "-m", qwen3_folder, "--backend", "numpy", "--max-new-tokens", "6",
                 "--temperature", "0", "--no-think"]) == 0
    assert len(calls) == 2
    monkeypatch.undo()

    model = qwen_np.load(qwen3_folder, backend="numpy")
    tok, stop = model.tokenizer, model.stop_ids()
    first = model.chat_prompt_ids([{"role": "user", "content": "What is 2+2?"}],
                                  enable_thinking=False)
    assert calls[0] == (first, 0)
    answer = model.generate(first, max_new_tokens=6)
    text = tok.decode(answer[:-1] if answer[-1] in stop else answer)
    second = model.chat_prompt_ids([{"role": "user", "content": "What is 2+2?"},
                                    {"role": "assistant", "content": text},
                                    {"role": "user", "content": "And 3+3?"}],
                                   enable_thinking=False)
    held = first + answer[:-1]              # what the cache held after the first answer
    keep = next(i for i, (a, b) in enumerate(zip(held + [None], second)) if a != b)
    assert calls[1] == (second[keep:], keep)
    # the second answer is the one a fresh run of the whole second prompt gives
    fresh = model.generate(second, max_new_tokens=6)
    out = capsys.readouterr().out
    fresh_text = tok.decode(fresh[:-1] if fresh[-1] in stop else fresh)
    assert out.endswith(fresh_text + "\n")


def test_qwen3_earlier_thinking_is_dropped_from_the_next_turns_prompt(qwen3_folder):
    model = qwen_np.load(qwen3_folder, backend="numpy")
    ids = model.chat_prompt_ids([{"role": "user", "content": "Q1"},
                                 {"role": "assistant", "content": "<think>\nhmm\n</think>\n\nA1"},
                                 {"role": "user", "content": "Q2"}])
    text = model.tokenizer.decode(ids)
    assert "hmm" not in text and "<|im_start|>assistant\nA1<|im_end|>" in text


def test_run_chat_no_think_writes_the_empty_think_block(qwen3_folder, monkeypatch):
    seen = []
    real_generate = load_module.Model.generate

    def spy(self, ids, *args, **kwargs):
        seen.append(list(ids))
        return real_generate(self, ids, *args, **kwargs)
    monkeypatch.setattr(load_module.Model, "generate", spy)
    for flag, ending in (("--no-think", "<think>\n\n</think>\n\n"),
                         ("--think", "<|im_start|>assistant\n")):
        assert main(["run", "-m", qwen3_folder, "--backend", "numpy", "--chat", "-p", "Hi",
                     "-n", "2", flag]) == 0
        text = qwen_np.load(qwen3_folder, backend="numpy").tokenizer.decode(seen[-1])
        assert text.endswith(ending) and text.startswith("<|im_start|>user\nHi")
