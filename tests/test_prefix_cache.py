"""Prompt prefixes reused between requests (runtime/prefix_cache.py, runtime/batch.py): a
request that reuses a prefix, from a free slot or copied back from the saved prefixes, gets
bit for bit the logits and so the tokens of a fresh prefill, on every fixture model (those
with dynamic NTK or Qwen v1's int8 cache reuse nothing, and are checked for that) and on the
real GGUF; the store keeps to its byte budget."""

import importlib.util

import numpy as np
import pytest

import qwen_np
from conftest import FIXTURE_MODELS, fixture_path
from qwen_np.apps.fetch import default_model_path, is_fetched
from qwen_np.runtime.batch import Batcher
from qwen_np.runtime.prefix_cache import usable_prefix

BACKENDS = ["numpy"] + (["numba"] if importlib.util.find_spec("numba") else [])
QUANT = ["quant/" + n for n in ("gptqmodel-4bit-g32-descact-asym", "gptqmodel-4bit-g32-sym",
                                 "gptqmodel-8bit-g64-sym", "autoawq-4bit-g32-gemm",
                                 "qwen-np-4bit-g32-asym-v2", "qwen-np-4bit-g32-sym")]
MOE = ["moe/" + n for n in ("qwen2moe-step2-f32", "qwen2moe-allsparse-bf16",
                             "qwen3moe-allsparse-bf16", "qwen3moe-headdim24-bf16-sharded",
                             "gptqmodel-qwen3moe-4bit-g32-sym")]
YARN = ["yarn/qwen2-yarn4", "yarn/qwen3-yarn2-betas", "yarn/qwen3moe-yarn4"]
QWEN1_EXACT = ["qwen1/qwen1-f16-early-keys"]                  # no dynamic NTK
QWEN1_OFF = ["qwen1/" + n for n in ("qwen1-f32-ntk-logn", "qwen1-bf16-rotary-half",
                                     "qwen1-f32-cache-int8", "qwen1-gptq-int4")]
CHUNK = 4
SHARED = [5, 6, 7, 8, 9, 10, 11, 12, 13, 14]                 # 2 whole chunks and 2 tokens
PROMPT_A = SHARED + [20, 21, 22]
PROMPT_B = SHARED + [30, 31, 32, 33, 34]
OTHER = [40, 41, 42, 43, 44, 45, 46, 47, 48]


def test_usable_prefix_is_whole_chunks_of_the_common_beginning_and_leaves_one_token():
    assert usable_prefix((1, 2, 3, 4, 5, 6, 7, 8, 9), [1, 2, 3, 4, 5, 6, 0], 4) == 4
    assert usable_prefix((1, 2, 3, 4, 5, 6, 7, 8), [1, 2, 3, 4, 5, 6, 7, 8], 4) == 4
    assert usable_prefix((1, 2, 3, 4, 5, 6, 7, 8), [1, 2, 3, 4, 5, 6, 7, 8, 9], 4) == 8
    assert usable_prefix((), [1, 2, 3], 4) == 0 and usable_prefix((9,), [1, 2], 1) == 0


def logits_recorder(monkeypatch):
    """Record every row of logits the batcher chooses a token from, per request prompt."""
    import qwen_np.runtime.batch as batch
    rows = []
    real = batch.sample_next

    def recording(logits, rng, sampling, previous, *generated):
        rows.append(np.array(logits, copy=True))
        return real(logits, rng, sampling, previous, *generated)
    monkeypatch.setattr(batch, "sample_next", recording)
    return rows


def run(batcher, prompt, new, **kw):
    """One request alone through the batcher's turns (no thread): its generated tokens."""
    request = batcher.submit(prompt, new, stop_ids=[], **kw)
    while request.finish is None:
        batcher.turn()
    assert request.finish == "length", request.error
    return request


def fresh_logits(m, prompt, new, monkeypatch):
    rows = logits_recorder(monkeypatch)
    b = Batcher(m, max_batch=1, context=40, prefill_chunk=CHUNK)
    r = run(b, prompt, new, cache_prompt=False)
    assert r.cached_tokens == 0
    return r.generated, list(rows)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", FIXTURE_MODELS + QUANT + MOE + YARN + QWEN1_EXACT)
def test_a_reused_prefix_gives_the_logits_of_a_fresh_prefill(backend, name, monkeypatch):
    """B after A reuses A's two whole chunks from the slot; B after A and then an unrelated
    prompt reuses them from the saved prefixes. Both give B's fresh logits exactly."""
    m = qwen_np.load(fixture_path(name), backend=backend, prepared_cache=False)
    expected_tokens, expected_rows = fresh_logits(m, PROMPT_B, 5, monkeypatch)
    for between in ([], [OTHER]):
        b = Batcher(m, max_batch=1, context=40, prefill_chunk=CHUNK,
                    prefix_cache_bytes=1 << 24)
        run(b, PROMPT_A, 3)
        for prompt in between:
            run(b, prompt, 2)
        rows = logits_recorder(monkeypatch)
        r = run(b, PROMPT_B, 5)
        assert r.cached_tokens == 2 * CHUNK
        assert r.generated == expected_tokens
        assert len(rows) == len(expected_rows)
        for got, want in zip(rows, expected_rows):
            assert np.array_equal(got, want)
        assert b.prefix_cache_stats()["hits"] == 1
        assert b.prefix_cache_stats()["tokens"] == 2 * CHUNK


@pytest.mark.parametrize("name", QWEN1_OFF)
def test_reuse_is_off_where_it_cannot_be_exact(name, monkeypatch):
    """The original Qwen's dynamic NTK (RoPE base from the whole prompt's length) and its
    chunk-scaled int8 cache: nothing is reused, and B gets its fresh tokens."""
    m = qwen_np.load(fixture_path(name), backend="numpy", prepared_cache=False)
    expected, _ = fresh_logits(m, PROMPT_B, 4, monkeypatch)
    b = Batcher(m, max_batch=1, context=40, prefill_chunk=CHUNK, prefix_cache_bytes=1 << 24)
    assert not b.reuse
    run(b, PROMPT_A, 3)
    r = run(b, PROMPT_B, 4)
    assert r.cached_tokens == 0 and r.generated == expected


def test_cache_prompt_false_reuses_nothing_and_a_free_slot_with_the_prefix_is_chosen():
    m = qwen_np.load(fixture_path("qwen2-tied-f32"), backend="numpy")
    b = Batcher(m, max_batch=3, context=40, prefill_chunk=CHUNK)
    first = run(b, OTHER, 2)
    second = run(b, PROMPT_A, 2)
    assert (first.slot, second.slot) == (0, 1)
    alone = run(b, PROMPT_B, 2, cache_prompt=False)      # into the slot that held nothing
    assert alone.cached_tokens == 0 and alone.slot == 2
    again = run(b, PROMPT_B, 2)                          # all 3 of its whole chunks, slot 2's
    assert again.cached_tokens == 3 * CHUNK and again.slot == 2


def test_the_saved_prefixes_keep_to_their_byte_budget():
    m = qwen_np.load(fixture_path("qwen2-tied-f32"), backend="numpy")
    one = 2 * CHUNK * sum(a[0].nbytes for a in (m.new_cache(1).k, m.new_cache(1).v)) \
        * m.config.num_hidden_layers
    b = Batcher(m, max_batch=1, context=40, prefill_chunk=CHUNK, prefix_cache_bytes=one)
    prompts = [[p] * 9 for p in (50, 51, 52, 53)]         # each leaves 2 whole chunks
    for p in prompts:
        run(b, p, 1)
    stats = b.prefix_cache_stats()
    assert stats["bytes"] == one and stats["saved"] == 1 and stats["evictions"] == 2
    assert run(b, prompts[2] + [1], 1).cached_tokens == 2 * CHUNK   # the one kept
    assert run(b, prompts[0] + [1], 1).cached_tokens == 0           # dropped


@pytest.mark.real_model
@pytest.mark.skipif(not is_fetched(), reason="run `qwen-np fetch` first")
@pytest.mark.skipif("numba" not in BACKENDS, reason="numba is not installed")
def test_real_gguf_reuse_gives_the_logits_of_a_fresh_prefill(monkeypatch):
    """A 300-token shared system prompt and two user turns, in the real chat format, at the
    batcher's own chunk of 128 tokens: the second turn reuses 256 tokens. (The numba backend,
    the one the server runs; the numpy backend's reuse is held to the same bar on every
    fixture above.)"""
    from qwen_np.runtime.chat import messages_prompt_ids
    m = qwen_np.load(default_model_path(), backend="numba")
    system = " ".join(f"Rule {i}: answer in plain words." for i in range(36))

    def prompt(question):
        return messages_prompt_ids(m.tokenizer, "qwen2", [
            {"role": "system", "content": system}, {"role": "user", "content": question}],
            None)
    a, bq = prompt("What is a list?"), prompt("Name three rivers.")
    assert 256 < len(a) < 384 and a[:256] == bq[:256]
    rows = logits_recorder(monkeypatch)
    fresh = Batcher(m, max_batch=1, context=512)
    expected = run(fresh, bq, 4, cache_prompt=False).generated
    expected_rows = list(rows)
    rows.clear()
    b = Batcher(m, max_batch=1, context=512)
    run(b, a, 2)
    rows.clear()
    r = run(b, bq, 4)
    assert r.cached_tokens == 256 and r.generated == expected
    assert all(np.array_equal(g, w) for g, w in zip(rows, expected_rows))
