"""The reference against transformers' outputs committed in tests/fixtures
(made by tools/make_fixtures.py)."""

import numpy as np
import pytest

import qwen_np
from conftest import FIXTURE_MODELS, fixture_path, rel_err
from qwen_np.model.kv_cache import new_kv_cache
from qwen_np.model.forward import forward


def reference(name):
    return np.load(fixture_path(name) + ".reference.npz")


def test_fixture_set_covers_the_variants():
    assert len(FIXTURE_MODELS) >= 5
    types = {qwen_np.load(fixture_path(n)).config.model_type for n in FIXTURE_MODELS}
    assert types == {"qwen2", "qwen3"}


@pytest.mark.parametrize("name", FIXTURE_MODELS)
def test_float32_logits_match_transformers(name):
    ref = reference(name)
    model = qwen_np.load(fixture_path(name))
    for k in (0, 1):
        logits = model.logits(ref[f"ids_{k}"])
        assert logits.dtype == np.float32
        assert logits.shape == ref[f"logits32_{k}"].shape
        assert rel_err(logits, ref[f"logits32_{k}"]) < 1e-5
        assert ref[f"logits32_{k}"].std() > 0.5  # the fixture is not flat


@pytest.mark.parametrize("name", FIXTURE_MODELS)
def test_float64_logits_match_transformers_float64(name):
    ref = reference(name)
    model = qwen_np.load(fixture_path(name), dtype="float64")
    for k in (0, 1):
        logits = model.logits(ref[f"ids_{k}"])
        assert logits.dtype == np.float64
        assert rel_err(logits, ref[f"logits64_{k}"]) < 1e-10


@pytest.mark.parametrize("name", FIXTURE_MODELS)
def test_cached_decoding_equals_full_forward(name):
    ref = reference(name)
    model = qwen_np.load(fixture_path(name))
    ids = ref["ids_1"].tolist()
    full = model.logits(ids)
    cache = new_kv_cache(model.config, len(ids) + 3, model.backend)
    parts = [forward(model.config, model.weights, model.backend, ids[:5], cache)]  # prefill 5
    parts += [forward(model.config, model.weights, model.backend, [t], cache) for t in ids[5:8]]
    parts += [forward(model.config, model.weights, model.backend, ids[8:], cache)]  # a chunk
    assert cache.length == len(ids)
    assert rel_err(np.concatenate(parts), full) < 1e-5


@pytest.mark.parametrize("name", FIXTURE_MODELS)
def test_greedy_continuation_matches_transformers_generate(name):
    ref = reference(name)
    model = qwen_np.load(fixture_path(name))
    new = model.generate(ref["prompt"], max_new_tokens=len(ref["greedy"]))
    assert new == ref["greedy"].tolist()


def test_streaming_calls_back_every_new_token():
    name = FIXTURE_MODELS[0]
    ref = reference(name)
    model = qwen_np.load(fixture_path(name))
    seen = []
    new = model.generate(ref["prompt"], max_new_tokens=6, stream=seen.append)
    assert seen == new and len(new) == 6


def test_generation_stops_on_eos():
    name = FIXTURE_MODELS[0]
    ref = reference(name)
    model = qwen_np.load(fixture_path(name))
    greedy = ref["greedy"].tolist()
    # declare the 4th greedy token a stop token: generation must end right there, including it
    new = model.generate(ref["prompt"], max_new_tokens=16, stop_ids=[greedy[3]])
    assert new == greedy[:greedy.index(greedy[3]) + 1]


def test_generation_continues_over_a_kept_cache():
    """Chat keeps the cache between turns: turn 2 fed on top of turn 1's cache gives what a
    fresh run over the whole history gives."""
    name = FIXTURE_MODELS[0]
    ref = reference(name)
    model = qwen_np.load(fixture_path(name))
    prompt = ref["prompt"].tolist()
    cache = new_kv_cache(model.config, 64, model.backend)
    first = model.generate(prompt, max_new_tokens=5, stop_ids=[], cache=cache)
    follow = [first[-1], 7, 8, 9]
    second = model.generate(follow, max_new_tokens=5, stop_ids=[], cache=cache)
    history = prompt + first[:-1] + follow
    assert second == model.generate(history, max_new_tokens=5, stop_ids=[])
