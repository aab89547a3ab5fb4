"""Prompt lookup decoding: drafts as llama-cpp-python makes them, checked in one pass whose
rows are what decoding one token at a time computes, so that greedy output is the same bit for
bit; sampled decoding keeps each token's distribution."""

import importlib.util
import json
import math
import os
import shutil

import numpy as np
import pytest

from conftest import FIXTURE_MODELS, FIXTURES, Collect, fixture_path
from qwen_np.apps.fetch import default_model_path, is_fetched
from qwen_np.errors import CacheFull, InputError
from qwen_np.model.forward import forward, forward_as_decoded
from qwen_np.model.sampling import Sampling, accept_or_sample
from qwen_np.runtime import generate as generate_module
from qwen_np.runtime.prompt_lookup import lookup_draft

BACKENDS = ["numpy"] + (["numba"] if importlib.util.find_spec("numba") else [])
QWEN1 = ["qwen1/qwen1-f32-ntk-logn", "qwen1/qwen1-f32-cache-int8", "qwen1/qwen1-gptq-int4"]
QUANT = ["quant/gptqmodel-4bit-g32-descact-asym", "quant/gptqmodel-8bit-g64-sym",
         "quant/autoawq-4bit-g32-gemm"]
MOE = ["moe/qwen2moe-step2-f32", "moe/qwen3moe-headdim24-bf16-sharded"]
MODELS = ([(n, None) for n in FIXTURE_MODELS + QWEN1 + QUANT + MOE]
          + [("qwen2-tied-f32", "float16"), ("qwen3-bias-bf16-sharded", "int8")])
# a prompt that repeats itself, so that drafts are found
PROMPT = [5, 6, 7, 8, 9, 10, 5, 6, 7, 8, 9, 10, 5, 6]
# fixtures whose greedy output after PROMPT falls into loops, so that drafts are kept
LOOPING = {"qwen2-untied-bf16-sharded", "quant/autoawq-4bit-g32-gemm"}


def load(name, backend, kv_cache=None):
    import qwen_np
    return qwen_np.load(fixture_path(name), backend=backend, kv_cache=kv_cache,
                        prepared_cache=False)


def test_drafts_are_llama_cpp_pythons():
    """1,872 cases recorded from llama-cpp-python's LlamaPromptLookupDecoding
    (tools/make_prompt_lookup_fixtures.py): sequences of 1 to 60 tokens, n-grams of 1 to 3,
    1 to 10 drafted tokens."""
    with open(os.path.join(FIXTURES, "prompt_lookup", "llama_cpp_drafts.json")) as f:
        cases = json.load(f)["cases"]
    assert len(cases) > 1000 and sum(1 for c in cases if c["draft"]) > 500
    for c in cases:
        assert lookup_draft(c["ids"], c["k"], c["max_ngram"]) == c["draft"], c


def test_a_hand_worked_draft():
    # "( r" occurs first at 2; what followed it there
    history = [1, 40, 41, 42, 43, 44, 45, 9, 1, 40, 41]
    assert lookup_draft(history, 3) == [42, 43, 44]
    assert lookup_draft(history, 0) == [] and lookup_draft([3], 4) == []
    assert lookup_draft([1, 2, 3, 4], 4) == []                 # nothing occurs twice


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,kv", MODELS)
def test_a_checking_pass_gives_each_row_as_decoded_alone(backend, name, kv):
    """Five tokens through forward_as_decoded after a prompt: each row of its logits and the
    cache it leaves equal, bit for bit, five one-token passes. (The original Qwen's NTK
    fixture has seq_length 8: logn scaling starts inside the pass.)"""
    m = load(name, backend, kv)
    cfg, be = m.config, m.backend
    follow = [11, 3, 3, 12, 4]
    one, many = m.new_cache(32), m.new_cache(32)
    forward(cfg, m.weights, be, PROMPT[:6], one)
    forward(cfg, m.weights, be, PROMPT[:6], many)
    alone = [be.to_numpy(forward(cfg, m.weights, be, [t], one, last_only=True))[-1]
             for t in follow]
    together = be.to_numpy(forward_as_decoded(cfg, m.weights, be, follow, many))
    for t in range(len(follow)):
        assert np.array_equal(together[t], alone[t]), t
    assert one.length == many.length == 6 + len(follow)
    for a, b in zip(one.k + one.v, many.k + many.v):
        assert np.array_equal(be.to_numpy(a), be.to_numpy(b))


@pytest.mark.skipif(not shutil.which("g++"), reason="the CUDA emulation needs g++")
@pytest.mark.parametrize("name", ["qwen2-tied-f32", "quant/gptqmodel-4bit-g32-descact-asym"])
def test_the_gpu_backends_checking_pass_and_decoding_agree(name):
    """The CuPy backend's code and kernels, run on the CPU (tests/cupy_on_cpu.py): the rows
    of a checking pass equal one-token passes, and greedy output with drafts is plain
    decoding's."""
    from cupy_on_cpu import emulated_cupy_backend
    import qwen_np
    m = qwen_np.load(fixture_path(name), backend=emulated_cupy_backend(), prepared_cache=False)
    cfg, be = m.config, m.backend
    one, many = m.new_cache(32), m.new_cache(32)
    forward(cfg, m.weights, be, PROMPT[:6], one)
    forward(cfg, m.weights, be, PROMPT[:6], many)
    follow = [11, 3, 3, 12]
    alone = [be.to_numpy(forward(cfg, m.weights, be, [t], one, last_only=True))[-1]
             for t in follow]
    together = be.to_numpy(forward_as_decoded(cfg, m.weights, be, follow, many))
    for t in range(len(follow)):
        assert np.array_equal(together[t], alone[t]), t
    plain = m.generate(PROMPT, max_new_tokens=12, stop_ids=[])
    assert m.generate(PROMPT, max_new_tokens=12, stop_ids=[], prompt_lookup=4) == plain


def test_a_checking_pass_past_the_cache_is_refused():
    m = load("qwen2-tied-f32", "numpy")
    cache = m.new_cache(8)
    forward(m.config, m.weights, m.backend, PROMPT[:6], cache)
    with pytest.raises(CacheFull, match="holds 8 positions; 9"):
        forward_as_decoded(m.config, m.weights, m.backend, [1, 2, 3], cache)
    assert cache.length == 6


class CountPasses:
    """Counts the generation loop's one-token passes and checking passes (the model's
    forward functions, wrapped)."""

    def __init__(self, monkeypatch):
        self.single, self.checks, self.drafted = 0, 0, 0
        real_forward, real_check = generate_module.forward, generate_module.forward_as_decoded

        def single(cfg, w, be, ids, cache, **kw):
            self.single += len(ids) == 1 and cache.length > 0
            return real_forward(cfg, w, be, ids, cache, **kw)

        def check(cfg, w, be, ids, cache):
            self.checks += 1
            self.drafted += len(ids) - 1
            return real_check(cfg, w, be, ids, cache)
        monkeypatch.setattr(generate_module, "forward", single)
        monkeypatch.setattr(generate_module, "forward_as_decoded", check)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,kv", MODELS)
def test_greedy_tokens_are_the_same_with_prompt_lookup(backend, name, kv, monkeypatch):
    """Greedy decoding with up to 1, 3 and 8 drafted tokens a step gives the tokens of plain
    decoding, and the cache is left at the same length. On the fixtures whose output loops,
    drafts are kept (fewer passes than tokens); on the others they are checked and dropped."""
    m = load(name, backend, kv)
    plain_cache = m.new_cache(64)
    plain = m.generate(PROMPT, max_new_tokens=40, stop_ids=[], cache=plain_cache)
    passes = []
    for k in (1, 3, 8):
        count = CountPasses(monkeypatch)
        cache = m.new_cache(64)
        streamed = []
        got = m.generate(PROMPT, max_new_tokens=40, stop_ids=[], cache=cache, prompt_lookup=k,
                         stream=streamed.append)
        assert got == plain and streamed == plain, k
        assert cache.length == plain_cache.length
        assert count.drafted > 0
        passes.append(count.single + count.checks)
        monkeypatch.undo()
    if name in LOOPING:
        assert min(passes) < (len(plain) - 1) * 0.75, passes


@pytest.mark.parametrize("max_new", [1, 2, 5, 13])
def test_stop_tokens_and_the_token_budget_end_it_as_plain_decoding_does(max_new):
    """A stop token that arrives as a kept draft ends the output there (and is not cached, as
    in plain decoding); max_new_tokens is never passed, whatever the draft length."""
    m = load("qwen2-tied-f32", "numpy")
    plain = m.generate(PROMPT, max_new_tokens=30, stop_ids=[])
    for stop in sorted(set(plain[1:12])):
        ref_cache, cache = m.new_cache(64), m.new_cache(64)
        want = m.generate(PROMPT, max_new_tokens=max_new, stop_ids=[stop], cache=ref_cache)
        got = m.generate(PROMPT, max_new_tokens=max_new, stop_ids=[stop], cache=cache,
                         prompt_lookup=8)
        assert got == want and cache.length == ref_cache.length, stop


def test_a_cache_with_no_room_for_drafts_decodes_plainly():
    """A cache sized for exactly the prompt and the new tokens: drafts are cut to the room."""
    m = load("qwen2-tied-f32", "numpy")
    want = m.generate(PROMPT, max_new_tokens=20, stop_ids=[])
    cache = m.new_cache(len(PROMPT) + 20)
    assert m.generate(PROMPT, max_new_tokens=20, stop_ids=[], cache=cache,
                      prompt_lookup=10) == want


def test_a_prompt_lookup_out_of_range_is_refused():
    m = load("qwen2-tied-f32", "numpy")
    for bad in (-1, 33):
        with pytest.raises(InputError, match=f"prompt_lookup is {bad}"):
            m.generate(PROMPT, max_new_tokens=4, prompt_lookup=bad)


@pytest.mark.parametrize("lookup", [0, 4])
def test_a_turn_after_cached_ids_decodes_as_the_whole_text_would(lookup):
    """A second turn (chat): the cache holds the first part, generate gets the rest and the
    cached ids. At temperature 0 with a repetition penalty (which reads the whole text) its
    tokens are those of the whole text decoded in one call; with prompt lookup, drafts come
    from the cached part too. Without cached_ids the penalty misses the first part and the
    output differs (the check that this test can fail)."""
    m = load("qwen2-untied-bf16-sharded", "numpy")
    first, rest = PROMPT[:10], [11, 12, 5, 6]
    sampling = Sampling(repetition_penalty=1.8)
    whole = m.generate(first + rest, max_new_tokens=20, stop_ids=[], sampling=sampling)

    def second_turn(cached_ids, k):
        cache = m.new_cache(64)
        forward(m.config, m.weights, m.backend, first, cache)
        return m.generate(rest, max_new_tokens=20, stop_ids=[], sampling=sampling,
                          cache=cache, cached_ids=cached_ids, prompt_lookup=k)
    assert second_turn(first, lookup) == whole
    assert second_turn((), 0) != whole


def test_bench_measures_the_same_tokens_with_prompt_lookup():
    """`qwen-np bench --prompt-lookup K`: the measuring child decodes the same greedy ids
    through the drafting loop, and the command prints its setting."""
    from qwen_np.apps.bench import measure_here
    import subprocess
    import sys
    name = fixture_path("qwen2-untied-bf16-sharded")
    plain = measure_here(name, "numpy", None, 12, 14, prepared_cache=False)
    drafted = measure_here(name, "numpy", None, 12, 14, prepared_cache=False, prompt_lookup=4)
    assert drafted["ids"] == plain["ids"] and len(plain["ids"]) == 15
    r = subprocess.run([sys.executable, "-m", "qwen_np", "bench", "-m", name, "--backend",
                        "numpy", "--prompt-tokens", "12", "--gen-tokens", "6",
                        "--prompt-lookup", "4"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "prompt lookup 4" in r.stdout and "| qwen-np (numpy) |" in r.stdout


def hand_softmax(logits):
    e = [math.exp(x - max(logits)) for x in logits]
    return [x / sum(e) for x in e]


@pytest.mark.parametrize("draft", [0, 2, 3])
def test_the_acceptance_rule_keeps_the_distribution(draft):
    """Speculative sampling with a certain draft: over 40,000 draws the tokens' frequencies
    are softmax(logits / T), computed by hand here (chi-square, 3 degrees of freedom, below
    the 0.1% point 16.27)."""
    logits = np.array([2.0, 1.0, 0.5, -1.0])
    p = hand_softmax([x / 0.8 for x in logits])
    rng = np.random.default_rng(7)
    sampling = Sampling(temperature=0.8)
    n = 40_000
    counts = np.bincount([accept_or_sample(logits, draft, rng, sampling) for _ in range(n)],
                         minlength=4)
    chi2 = sum((c - n * q) ** 2 / (n * q) for c, q in zip(counts, p))
    assert chi2 < 16.27, (counts, p)


def test_the_acceptance_rule_is_the_argmax_when_greedy_or_at_temperature_zero():
    logits = np.array([0.1, 3.0, 2.9])
    rng = np.random.default_rng(0)
    assert accept_or_sample(logits, 2, rng, Sampling()) == 1
    # a repetition penalty at temperature 0: the argmax of the penalized logits
    assert accept_or_sample(logits, 1, rng, Sampling(repetition_penalty=2.0), [1]) == 2


def test_sampled_decoding_with_prompt_lookup_keeps_the_first_tokens_distribution():
    """Sampled generation with drafts: the first token's draw is untouched (no draft yet), and
    a seed repeats the whole output."""
    m = load("qwen2-tied-f32", "numpy")
    s = Sampling(temperature=0.7, seed=3)
    a = m.generate(PROMPT, max_new_tokens=16, stop_ids=[], sampling=s, prompt_lookup=4)
    b = m.generate(PROMPT, max_new_tokens=16, stop_ids=[], sampling=s, prompt_lookup=4)
    c = m.generate(PROMPT, max_new_tokens=16, stop_ids=[], sampling=s)
    assert a == b and a[0] == c[0] and len(a) == 16


EDIT_PROMPT = '''<|im_start|>user
Add type hints to this function. Answer with the code only.

def word_counts(text, lower):
    counts = {}
    for word in text.split():
        if lower:
            word = word.lower()
        counts[word] = counts.get(word, 0) + 1
    return counts
<|im_end|>
<|im_start|>assistant
'''


@pytest.mark.real_model
def test_real_gguf_greedy_tokens_are_the_same_with_prompt_lookup(monkeypatch):
    """The real Qwen2.5-Coder-0.5B GGUF on a code edit (type hints), numba backend: 60 greedy
    tokens with up to 10 drafted tokens a step equal plain decoding's, in fewer passes.
    (The NumPy backend's checking pass is the same code, tested on every fixture above.)"""
    if not is_fetched():
        pytest.skip("the real model is not fetched (qwen-np fetch)")
    pytest.importorskip("numba")
    import qwen_np
    m = qwen_np.load(default_model_path(), backend="numba")
    ids = m.tokenizer.encode(EDIT_PROMPT)
    plain = m.generate(ids, max_new_tokens=60, stop_ids=[])
    count = CountPasses(monkeypatch)
    got = m.generate(ids, max_new_tokens=60, stop_ids=[], prompt_lookup=10)
    assert got == plain
    assert count.single + count.checks < 40, (count.single, count.checks)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,kv", [("qwen2-untied-bf16-sharded", None),
                                     ("quant/autoawq-4bit-g32-gemm", None),
                                     ("qwen3-bias-bf16-sharded", "int8"),
                                     ("qwen1/qwen1-f32-ntk-logn", None),
                                     ("moe/qwen2moe-step2-f32", None)])
def test_batched_requests_with_prompt_lookup_get_their_greedy_tokens(backend, name, kv,
                                                                    monkeypatch):
    """Five requests in four slots, three with drafts (up to 2, 5 and 8 a step) and two
    without, decoded in shared passes where one slot has several rows: each gets generate()'s
    greedy tokens; the one whose stop id arrives as a draft ends there; a short context ends
    one with "length" exactly where plain decoding does."""
    from qwen_np.runtime import batch
    from conftest import run_all
    kept = []
    real_accept = batch.accept_or_sample

    def accept(logits, draft, *args):
        token = real_accept(logits, draft, *args)
        kept.append(token == draft)
        return token
    monkeypatch.setattr(batch, "accept_or_sample", accept)
    m = load(name, backend, kv)
    b = batch.Batcher(m, max_batch=4, context=48, prefill_chunk=4)
    prompts = [PROMPT, PROMPT[3:], [4, 4, 4, 4, 4, 4], PROMPT[:9], [9, 8, 7, 9, 8, 7, 9]]
    looks = [8, 0, 5, 2, 0]
    plain = [m.generate(p, max_new_tokens=30, stop_ids=[]) for p in prompts]
    stop = plain[2][6]                  # a stop id for the third request, as it runs
    got = [Collect() for _ in prompts]
    requests = [b.submit(p, 30, Sampling(), stop_ids=[stop] if i == 2 else [], emit=g,
                         prompt_lookup=k)
                for i, (p, g, k) in enumerate(zip(prompts, got, looks))]
    run_all(b, requests)
    for i, p in enumerate(prompts):
        cut = min(30, 48 - len(p))
        want = plain[i][:cut]
        if i == 2:
            want = want[:want.index(stop)]
        assert got[i].tokens == want, i
        assert got[i].finish == ["stop" if i == 2 else "length"], i
    assert kept and (name not in LOOPING or sum(kept) > 10), (sum(kept), len(kept))


def test_a_request_asking_too_many_drafts_is_refused():
    from qwen_np.runtime.batch import Batcher
    b = Batcher(load("qwen2-tied-f32", "numpy"), max_batch=1, context=16)
    for bad in (-1, 33, 2.0, True):
        with pytest.raises(InputError, match="prompt_lookup is"):
            b.submit([1, 2], 4, prompt_lookup=bad)


def test_run_with_prompt_lookup_prints_the_same_text(capsys):
    """`qwen-np run --prompt-lookup K`: the text of plain greedy decoding; K past the cap is
    argparse's usage error."""
    from qwen_np.apps.cli import main
    model = fixture_path("qwen2-untied-bf16-sharded")
    args = ["run", "-m", model, "--backend", "numpy", "-p", "hello hello hello", "-n", "30",
            "--no-prepared-cache"]
    assert main(args) == 0
    plain = capsys.readouterr().out
    assert main(args + ["--prompt-lookup", "6"]) == 0
    assert capsys.readouterr().out == plain
    with pytest.raises(SystemExit) as e:
        main(args + ["--prompt-lookup", "33"])
    assert e.value.code == 2 and "33 is more than 32" in capsys.readouterr().err


def test_the_server_drafts_by_default_or_per_request_and_the_answers_stay_greedy():
    """`qwen-np serve --prompt-lookup 6` on a fixture whose output loops: completions (with
    the server's default, with "prompt_lookup": 0 and 12 in the body) equal a greedy run
    alone; a bad value is a 400 naming the field."""
    openai = pytest.importorskip("openai")
    pytest.importorskip("starlette")
    from serving import client_of, raw, server_process, single_stream
    import qwen_np
    name = "qwen2-untied-bf16-sharded"
    m = qwen_np.load(fixture_path(name), backend="numpy", prepared_cache=False)
    prompt = "one two one two one two"
    want = single_stream(m, m.tokenizer.encode(prompt), 24)
    with server_process("--backend", "numpy", "--prompt-lookup", "6", "--no-prepared-cache",
                        model=fixture_path(name)) as s:
        client = client_of(s.url)
        for extra in ({}, {"prompt_lookup": 0}, {"prompt_lookup": 12}):
            r = client.completions.create(model="x", prompt=prompt, max_tokens=24,
                                          temperature=0, extra_body=extra)
            assert (r.choices[0].text, r.choices[0].finish_reason,
                    r.usage.completion_tokens) == want, extra
        for bad in (-1, 33, "4", 2.5):
            status, _, body = raw(s.url, "POST", "/v1/completions",
                                  body=json.dumps({"prompt": prompt, "prompt_lookup": bad}))
            assert status == 400 and body["error"]["param"] == "prompt_lookup", bad
    assert openai
