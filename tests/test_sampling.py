import numpy as np

import pytest

from qwen_np.errors import InputError
from qwen_np.model.sampling import (Sampling, apply_repetition_penalty, keep_top_k, keep_top_p,
                              sample_next, softmax)

NEG = -np.inf


def test_greedy_is_argmax_and_ignores_the_rng():
    logits = np.array([0.1, 2.0, -1.0, 1.9])
    assert sample_next(logits, np.random.default_rng(0), Sampling(temperature=0)) == 1
    assert sample_next(logits, None, Sampling(temperature=0)) == 1


def test_repetition_penalty_hand_worked():
    # positive logits are divided by the penalty, negative ones multiplied (CTRL / transformers)
    out = apply_repetition_penalty(np.array([2.0, -1.0, 3.0, 0.5]), [0, 1, 1], 2.0)
    assert out.tolist() == [1.0, -2.0, 3.0, 0.5]
    # with the penalty, greedy moves from token 0 to token 2
    assert sample_next(np.array([3.0, 0.0, 2.0]), None, Sampling(repetition_penalty=2.0),
                       previous_ids=[0]) == 2


def test_top_k_hand_worked():
    assert keep_top_k(np.array([1.0, 5.0, 3.0, 4.0]), 2).tolist() == [NEG, 5.0, NEG, 4.0]
    assert keep_top_k(np.array([1.0, 2.0]), 0).tolist() == [1.0, 2.0]


def test_top_p_hand_worked():
    # probabilities 0.5, 0.3, 0.15, 0.05 (logs of them as logits)
    logits = np.log(np.array([0.15, 0.5, 0.05, 0.3]))
    assert np.isfinite(keep_top_p(logits, 0.5)).tolist() == [False, True, False, False]
    assert np.isfinite(keep_top_p(logits, 0.7)).tolist() == [False, True, False, True]
    assert np.isfinite(keep_top_p(logits, 0.81)).tolist() == [True, True, False, True]
    assert np.isfinite(keep_top_p(logits, 1.0)).all()


def test_seeded_sampling_is_reproducible_and_follows_the_distribution():
    logits = np.log(np.array([0.1, 0.6, 0.3]))
    draw = lambda seed: [sample_next(logits, rng, Sampling(temperature=1.0))  # noqa: E731
                         for rng in [np.random.default_rng(seed)] for _ in range(3000)]
    a, b = draw(7), draw(7)
    assert a == b
    freq = np.bincount(a, minlength=3) / len(a)
    assert np.allclose(freq, [0.1, 0.6, 0.3], atol=0.03)


def test_temperature_sharpens():
    logits = np.log(np.array([0.2, 0.8]))
    rng = np.random.default_rng(1)
    cold = [sample_next(logits, rng, Sampling(temperature=0.25)) for _ in range(2000)]
    # p ∝ p^(1/T): 0.8^4 / (0.8^4 + 0.2^4) = 0.9961
    assert abs(np.mean(cold) - 0.9961) < 0.01


def test_top_k_one_is_greedy_even_when_sampling():
    logits = np.array([0.0, 1.0, 0.9])
    rng = np.random.default_rng(3)
    assert {sample_next(logits, rng, Sampling(temperature=2.0, top_k=1)) for _ in range(50)} == {1}


def test_softmax_sums_to_one():
    assert np.isclose(softmax(np.array([1000.0, 1000.0, -np.inf])).sum(), 1.0)


@pytest.mark.parametrize("bad", [dict(temperature=-0.1), dict(temperature=float("nan")),
                                 dict(top_p=0.0), dict(top_p=1.5), dict(top_k=-1),
                                 dict(repetition_penalty=0.0), dict(temperature="hot"),
                                 dict(seed=1.5), dict(seed=True), dict(seed=-1),
                                 dict(top_k=2.0)])
def test_sampling_settings_out_of_range_are_refused_by_name(bad):
    with pytest.raises(InputError, match=next(iter(bad))):
        Sampling(**bad)


def test_greedy_settings():
    assert Sampling().greedy and Sampling(top_p=0.5).greedy
    assert not Sampling(temperature=0.7).greedy and not Sampling(repetition_penalty=1.1).greedy
