"""YaRN RoPE scaling against transformers' outputs committed in tests/fixtures/yarn (made by
tools/make_yarn_fixtures.py): prompts longer than original_max_position_embeddings, dense and
MoE models, both config spellings, both CPU backends."""

import importlib.util
import json
import shutil

import numpy as np
import pytest

import qwen_np
from conftest import fixture_path, rel_err

BACKENDS = ["numpy"] + (["numba"] if importlib.util.find_spec("numba") else [])
YARN = ["yarn/qwen2-yarn4", "yarn/qwen3-yarn2-betas", "yarn/qwen3moe-yarn4"]


def reference(name):
    return np.load(fixture_path(name) + ".reference.npz")


def load(path, backend="numpy"):
    return qwen_np.load(path, backend=backend, prepared_cache=False)


def old_spelling(name, tmp_path):
    """The folder with its config in Qwen2.5's published spelling: rope_theta at the top
    level and {"type": "yarn", ...} under rope_scaling."""
    dst = tmp_path / "old"
    shutil.copytree(fixture_path(name), dst)
    cfg = json.loads((dst / "config.json").read_text())
    rope = cfg.pop("rope_parameters")
    cfg["rope_theta"] = rope.pop("rope_theta")
    rope.pop("rope_type")
    cfg["rope_scaling"] = {"type": "yarn", **rope}
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def test_the_fixtures_use_yarn_beyond_the_original_length():
    for name in YARN:
        cfg = load(fixture_path(name)).config
        assert cfg.yarn is not None and cfg.yarn.factor > 1
        assert len(reference(name)["ids_0"]) > cfg.yarn.original_max_position_embeddings


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spelling", ["rope_parameters", "rope_scaling"])
@pytest.mark.parametrize("name", YARN)
def test_float32_logits_match_transformers(name, spelling, backend, tmp_path):
    ref = reference(name)
    path = fixture_path(name) if spelling == "rope_parameters" else old_spelling(name, tmp_path)
    model = load(path, backend)
    for k in (0, 1):
        logits = model.logits(ref[f"ids_{k}"])
        assert rel_err(logits, ref[f"logits32_{k}"]) < 1e-5
        assert ref[f"logits32_{k}"].std() > 0.5


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", YARN)
def test_greedy_40_tokens_match_transformers_generate(name, backend):
    ref = reference(name)
    model = load(fixture_path(name), backend)
    new = model.generate(ref["prompt"], max_new_tokens=len(ref["greedy"]), stop_ids=[])
    assert new == ref["greedy"].tolist()


def test_without_yarn_the_logits_differ():
    """The scaling matters at these lengths: the same weights with plain RoPE are far off."""
    name = YARN[0]
    ref = reference(name)
    model = load(fixture_path(name))
    from dataclasses import replace
    model.config = replace(model.config, yarn=None)
    assert rel_err(model.logits(ref["ids_1"]), ref["logits32_1"]) > 1e-2
