"""OpenAI's presence and frequency penalties, vLLM's min_p, and the sampling defaults of a
model's generation_config.json (model/sampling.py, formats/generation_config.py, the server's
job.sampling_of), each against numbers worked out by hand."""

import json
import shutil

import numpy as np
import pytest

import qwen_np
from conftest import fixture_path
from qwen_np.apps.serve.job import read_job, sampling_of
from qwen_np.apps.serve.openai_errors import ApiError
from qwen_np.errors import FormatError, InputError
from qwen_np.formats.generation_config import read_generation_defaults
from qwen_np.runtime.load import checked_generation_defaults
from qwen_np.model.sampling import (Sampling, apply_presence_frequency_penalties,
                                    divide_by_temperature, keep_min_p, sample_next,
                                    sampling_with_defaults)

# Qwen2.5-7B-Instruct's generation_config.json
QWEN25_INSTRUCT = {"bos_token_id": 151643, "pad_token_id": 151643, "do_sample": True,
                   "eos_token_id": [151645, 151643], "repetition_penalty": 1.05,
                   "temperature": 0.7, "top_p": 0.8, "top_k": 20,
                   "transformers_version": "4.37.0"}


def drawn(logits, sampling, n=600):
    rng = sampling.generator()
    return {sample_next(np.array(logits), rng, sampling) for _ in range(n)}


# -- presence and frequency penalties ----------------------------------------------------------

def test_presence_and_frequency_penalties_hand_worked():
    # generated: token 2 three times, token 0 once. logits[j] -= c[j] * 0.25 + (c[j] > 0) * 0.5
    #   token 0: 1.0 - (1 * 0.25 + 0.5) = 0.25
    #   token 2: 3.0 - (3 * 0.25 + 0.5) = 1.75;  tokens 1, 3, 4 not generated: unchanged
    out = apply_presence_frequency_penalties(np.array([1.0, 2.0, 3.0, 0.5, -1.0]),
                                             [2, 2, 0, 2], presence=0.5, frequency=0.25)
    assert out.tolist() == [0.25, 2.0, 1.75, 0.5, -1.0]
    # presence alone: once is as much as three times; frequency alone: per occurrence
    out = apply_presence_frequency_penalties(np.array([1.0, 2.0, 3.0]), [2, 2, 0, 2], 1.0, 0.0)
    assert out.tolist() == [0.0, 2.0, 2.0]
    out = apply_presence_frequency_penalties(np.array([1.0, 2.0, 3.0]), [2, 2, 0, 2], 0.0, 0.5)
    assert out.tolist() == [0.5, 2.0, 1.5]
    # a negative penalty favours what was generated: 1.0 + 1 = 2.0 > 1.5
    out = apply_presence_frequency_penalties(np.array([1.0, 1.5]), [0], -1.0, 0.0)
    assert out.tolist() == [2.0, 1.5]


def test_the_penalties_count_the_generated_tokens_only_and_apply_before_greedy():
    logits = np.array([1.0, 2.0, 3.0, 0.5, -1.0])
    greedy_penalized = Sampling(temperature=0, presence_penalty=0.5, frequency_penalty=0.25)
    # [0.25, 2.0, 1.75, 0.5, -1.0] as above: the argmax moves from token 2 to token 1
    assert sample_next(logits, None, greedy_penalized, [9, 2, 2, 0, 2], [2, 2, 0, 2]) == 1
    # token 2 in the prompt only is not penalized (OpenAI's and vLLM's definition)
    assert sample_next(logits, None, greedy_penalized, previous_ids=[2, 2, 2],
                       generated_ids=[]) == 2
    assert sample_next(logits, None, greedy_penalized, previous_ids=[2, 2, 2]) == 2


def test_the_repetition_penalty_comes_before_presence():
    # token 0 seen and generated; repetition 2 then presence 0.5: 4.0 / 2 - 0.5 = 1.5 < 1.6,
    # so token 1 wins (the other order, (4.0 - 0.5) / 2 = 1.75, would keep token 0)
    sampling = Sampling(repetition_penalty=2.0, presence_penalty=0.5)
    assert sample_next(np.array([4.0, 1.6]), None, sampling, [0], [0]) == 1


# -- min_p -------------------------------------------------------------------------------------

def test_min_p_hand_worked():
    logits = np.log(np.array([0.5, 0.3, 0.12, 0.08]))
    # min_p 0.2: below 0.2 * 0.5 = 0.1 goes, so 0.08 goes and 0.12 stays
    assert np.isfinite(keep_min_p(logits, 0.2)).tolist() == [True, True, True, False]
    # min_p 0.25: below 0.125, so 0.12 goes too
    assert np.isfinite(keep_min_p(logits, 0.25)).tolist() == [True, True, False, False]
    assert np.isfinite(keep_min_p(logits, 0.0)).all()
    assert np.isfinite(keep_min_p(logits, 1.0)).tolist() == [True, False, False, False]


def test_min_p_applies_after_temperature():
    logits = np.log(np.array([0.5, 0.3, 0.12, 0.08]))
    # temperature 2: p ** (1/2), so each token's ratio to the top one is sqrt(p / 0.5):
    #   1, sqrt(0.6) = 0.775, sqrt(0.24) = 0.490, sqrt(0.16) = 0.4; min_p 0.45 drops token 3 only
    hot = divide_by_temperature(logits, 2.0)
    assert np.isfinite(keep_min_p(hot, 0.45)).tolist() == [True, True, True, False]
    assert drawn(logits, Sampling(temperature=2.0, min_p=0.45, seed=1)) == {0, 1, 2}
    # at temperature 1 the ratios are 1, 0.6, 0.24, 0.16: min_p 0.45 keeps tokens 0 and 1
    assert drawn(logits, Sampling(temperature=1.0, min_p=0.45, seed=1)) == {0, 1}


def test_min_p_comes_before_top_p_as_in_vllm():
    # probabilities 0.4, 0.3, 0.2, 0.1. min_p 0.4 drops below 0.16: token 3 (0.1).
    # top_p 0.75 on what is left, renormalized to 0.4/0.9, 0.3/0.9, 0.2/0.9: the mass ranked
    # above token 2 is 0.7/0.9 = 0.778 >= 0.75, so token 2 goes: {0, 1}.
    # (top_p first, on all four: the mass above token 2 is 0.7 < 0.75, so it would stay.)
    logits = np.log(np.array([0.4, 0.3, 0.2, 0.1]))
    assert drawn(logits, Sampling(temperature=1.0, min_p=0.4, top_p=0.75, seed=2)) == {0, 1}
    assert drawn(logits, Sampling(temperature=1.0, top_p=0.75, seed=2)) == {0, 1, 2}
    # top_k and min_p both keep the most likely tokens: together, the fewer of the two
    assert drawn(logits, Sampling(temperature=1.0, min_p=0.4, top_k=2, seed=2)) == {0, 1}
    assert drawn(logits, Sampling(temperature=1.0, min_p=0.6, top_k=3, seed=2)) == {0, 1}


# -- the settings themselves -------------------------------------------------------------------

@pytest.mark.parametrize("bad", [dict(presence_penalty=2.5), dict(presence_penalty=-2.01),
                                 dict(frequency_penalty=3), dict(frequency_penalty=float("nan")),
                                 dict(frequency_penalty=True), dict(presence_penalty="1"),
                                 dict(min_p=-0.1), dict(min_p=1.5), dict(min_p=None)])
def test_out_of_range_settings_are_refused_by_name(bad):
    with pytest.raises(InputError, match=f"^{next(iter(bad))} is "):
        Sampling(**bad)


def test_the_range_ends_are_accepted_and_greedy_means_an_unchanged_argmax():
    Sampling(presence_penalty=-2, frequency_penalty=2, min_p=1)
    Sampling(presence_penalty=2.0, frequency_penalty=-2.0, min_p=0)
    assert Sampling(min_p=0.5).greedy                   # never drops the top token
    assert not Sampling(presence_penalty=0.5).greedy
    assert not Sampling(frequency_penalty=-0.1).greedy


def test_given_settings_win_over_defaults_and_defaults_over_samplings_own():
    defaults = {"temperature": 0.7, "top_p": 0.8, "top_k": 20}
    s = sampling_with_defaults(defaults, temperature=None, top_p=0.5, presence_penalty=None)
    assert s == Sampling(temperature=0.7, top_p=0.5, top_k=20)
    assert sampling_with_defaults({}, temperature=None) == Sampling()


# -- generation_config.json ---------------------------------------------------------------------

def write_generation_config(folder, content):
    folder.mkdir(exist_ok=True)
    (folder / "generation_config.json").write_text(
        content if isinstance(content, str) else json.dumps(content))
    return str(folder)


def test_generation_config_defaults(tmp_path):
    folder = write_generation_config(tmp_path / "m", QWEN25_INSTRUCT)
    assert read_generation_defaults(folder) == {"temperature": 0.7, "top_p": 0.8, "top_k": 20,
                                                "repetition_penalty": 1.05}
    # do_sample false: greedy whatever the temperature (transformers' meaning)
    folder = write_generation_config(tmp_path / "g", {**QWEN25_INSTRUCT, "do_sample": False,
                                                      "min_p": 0.05})
    defaults = read_generation_defaults(folder)
    assert defaults == {"temperature": 0.0, "top_p": 0.8, "top_k": 20,
                        "repetition_penalty": 1.05, "min_p": 0.05}
    assert sampling_with_defaults(defaults).temperature == 0.0
    # no file, or a GGUF file: none
    (tmp_path / "empty").mkdir()
    assert read_generation_defaults(str(tmp_path / "empty")) == {}
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    assert read_generation_defaults(str(tmp_path / "m.gguf")) == {}
    # only what the file sets (the fixtures': EOS ids only)
    assert read_generation_defaults(fixture_path("qwen2-tied-f32")) == {}


@pytest.mark.parametrize("content, needle", [
    ("{not json", "not valid JSON"), ("[]", "not a JSON object"),
    ('{"top_p": 0}', "top_p"), ('{"temperature": "hot"}', "temperature"),
    ('{"top_k": 2.5}', "top_k"), ('{"do_sample": "yes"}', "do_sample")])
def test_a_bad_generation_config_is_a_format_error_naming_the_file(tmp_path, content, needle):
    folder = write_generation_config(tmp_path / "m", content)
    with pytest.raises(FormatError, match="generation_config.json") as e:
        checked_generation_defaults(folder)     # the file's types, then the sampler's ranges
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_the_loaded_model_carries_its_generation_defaults(tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(fixture_path("qwen2-tied-f32"), folder)
    gen = json.loads((folder / "generation_config.json").read_text())
    write_generation_config(folder, {**gen, "do_sample": True, "temperature": 0.6,
                                     "top_k": 20})
    model = qwen_np.load(str(folder), backend="numpy", prepared_cache=False)
    assert model.generation_defaults == {"temperature": 0.6, "top_k": 20}
    plain = qwen_np.load(fixture_path("qwen2-tied-f32"), backend="numpy", prepared_cache=False)
    assert plain.generation_defaults == {}


# -- the server's request body ------------------------------------------------------------------

# Qwen3's non-thinking request for vLLM, as published in Qwen's docs
# (qwen.readthedocs.io, deployment/vllm.html, "Thinking & Non-Thinking Modes")
QWEN3_NON_THINKING = {
    "model": "Qwen/Qwen3-8B",
    "messages": [{"role": "user", "content": "Give me a short introduction to large language "
                                             "models."}],
    "temperature": 0.7, "top_p": 0.8, "top_k": 20, "max_tokens": 8192,
    "presence_penalty": 1.5, "chat_template_kwargs": {"enable_thinking": False}}


def test_qwens_published_request_is_accepted():
    assert sampling_of(QWEN3_NON_THINKING) == Sampling(temperature=0.7, top_p=0.8, top_k=20,
                                                       presence_penalty=1.5)
    job = read_job(QWEN3_NON_THINKING, [1, 2, 3], default_max_tokens=16, chat=True)
    assert job.sampling.presence_penalty == 1.5 and job.max_tokens == 8192
    body = {"frequency_penalty": -0.5, "min_p": 0.05}
    assert sampling_of(body) == Sampling(temperature=1.0, frequency_penalty=-0.5, min_p=0.05)


def test_the_body_falls_back_to_the_models_defaults_then_openais():
    defaults = {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05}
    assert sampling_of({}, defaults) == Sampling(**defaults)
    assert sampling_of({"temperature": 0, "top_k": -1}, defaults) == Sampling(
        temperature=0, top_p=0.8, top_k=0, repetition_penalty=1.05)
    assert sampling_of({}) == Sampling(temperature=1.0)              # OpenAI's default
    job = read_job({}, [1], default_max_tokens=16, sampling_defaults=defaults)
    assert job.sampling == Sampling(**defaults)


@pytest.mark.parametrize("field, value", [("presence_penalty", 2.5), ("frequency_penalty", -3),
                                          ("frequency_penalty", "x"), ("min_p", 1.5),
                                          ("min_p", -0.1)])
def test_out_of_range_body_values_are_400_naming_the_field(field, value):
    with pytest.raises(ApiError) as e:
        read_job({field: value}, [1], default_max_tokens=16)
    assert e.value.status == 400 and e.value.param == field and field in e.value.message
