"""Batched decoding (model.decode_step over cache.KVSlots) and continuous batching
(batch.Batcher): every sequence of a batch gets exactly what it gets decoded alone, whatever
its slot, its length, and the sequences beside it; requests join, stop, run out of room and
are cancelled while others decode."""

import importlib.util
import time

import numpy as np
import pytest

from conftest import FIXTURE_MODELS, Collect, fixture_path, run_all
from qwen_np.runtime.batch import Batcher, Closed, QueueFull
from qwen_np.model.kv_cache import new_kv_slots
from qwen_np.errors import CacheFull, InputError
from qwen_np.apps.fetch import default_model_path, is_fetched
from qwen_np.model.forward import decode_step, forward
from qwen_np.model.sampling import Sampling

BACKENDS = ["numpy"] + (["numba"] if importlib.util.find_spec("numba") else [])
QWEN1 = ["qwen1/qwen1-f32-ntk-logn", "qwen1/qwen1-f32-cache-int8", "qwen1/qwen1-gptq-int4"]
QUANT = ["quant/gptqmodel-4bit-g32-descact-asym", "quant/gptqmodel-8bit-g64-sym",
         "quant/autoawq-4bit-g32-gemm"]
MOE = ["moe/qwen2moe-step2-f32", "moe/qwen3moe-headdim24-bf16-sharded"]
PROMPTS = [[1, 2, 3], [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15], [4], [12, 13, 14, 15, 16, 17]]


def load(name, backend, kv_cache=None):
    import qwen_np
    return qwen_np.load(fixture_path(name), backend=backend, kv_cache=kv_cache,
                        prepared_cache=False)


def decode_alone(m, prompt, steps):
    """Greedy logits of `steps` decoded tokens after `prompt`, on a cache of its own."""
    cfg, be = m.config, m.backend
    cache = m.new_cache(64)
    logits = be.to_numpy(forward(cfg, m.weights, be, prompt, cache, last_only=True))[-1]
    rows = []
    for _ in range(steps):
        token = int(np.argmax(logits))
        logits = be.to_numpy(forward(cfg, m.weights, be, [token], cache, last_only=True))[-1]
        rows.append(logits)
    return rows


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,kv", [(n, None) for n in FIXTURE_MODELS + QWEN1 + QUANT + MOE]
                         + [("qwen2-tied-f32", "float16"), ("qwen3-bias-bf16-sharded", "int8")])
def test_each_row_of_a_decode_step_is_the_sequence_decoded_alone(backend, name, kv):
    """Four prompts of different lengths in slots 3, 0, 5, 2 of six, decoded together for
    five steps: each row's logits equal, bit for bit, those of the same sequence decoded
    alone. (The original Qwen's NTK fixture has seq_length 8, so these prompts choose
    different RoPE bases, and logn scaling starts mid-way.)"""
    m = load(name, backend, kv)
    cfg, be = m.config, m.backend
    slots = new_kv_slots(cfg, 6, 64, be, m.kv_cache)
    slot_ids = [3, 0, 5, 2]
    tokens = []
    for prompt, s in zip(PROMPTS, slot_ids):
        logits = forward(cfg, m.weights, be, prompt, slots.caches[s], last_only=True)
        tokens.append(int(np.argmax(be.to_numpy(logits)[-1])))
    together = []
    for _ in range(5):
        logits = be.to_numpy(decode_step(cfg, m.weights, be, tokens, slots, slot_ids))
        together.append(logits)
        tokens = [int(np.argmax(row)) for row in logits]
    for b, prompt in enumerate(PROMPTS):
        alone = decode_alone(m, prompt, 5)
        for step in range(5):
            assert np.array_equal(together[step][b], alone[step]), (b, step)
    assert [slots.caches[s].length for s in slot_ids] == [len(p) + 5 for p in PROMPTS]


def test_a_decode_step_into_a_full_slot_is_refused_before_anything_is_written():
    m = load("qwen2-tied-f32", "numpy")
    slots = new_kv_slots(m.config, 2, 4, m.backend)
    forward(m.config, m.weights, m.backend, [1, 2, 3, 4], slots.caches[1], last_only=True)
    forward(m.config, m.weights, m.backend, [5], slots.caches[0], last_only=True)
    before = [a.copy() for a in slots.k]
    with pytest.raises(CacheFull, match="holds 4 positions; 5"):
        decode_step(m.config, m.weights, m.backend, [7, 8], slots, [0, 1])
    assert all(np.array_equal(a, b) for a, b in zip(slots.k, before))
    assert [c.length for c in slots.caches] == [1, 4]


@pytest.mark.parametrize("backend", BACKENDS)
def test_requests_joining_mid_stream_get_their_greedy_tokens(backend):
    """Six requests, four slots, prompts split into chunks of 2: two wait for a slot, one
    joins only after another has produced three tokens; each gets generate()'s tokens."""
    m = load("qwen3-bias-bf16-sharded", backend)
    b = Batcher(m, max_batch=4, context=64, prefill_chunk=2)
    prompts = PROMPTS + [[30, 31, 32, 33, 34], [40] * 9]
    got = [Collect() for _ in range(7)]
    requests = [b.submit(p, 6 + i, Sampling(), stop_ids=[], emit=got[i])
                for i, p in enumerate(prompts)]
    late = []

    def submit_late(token, finish):
        got[0](token, finish)
        if len(got[0].tokens) == 3 and not late:
            late.append(b.submit([7, 8, 9], 5, Sampling(), stop_ids=[], emit=got[6]))
    requests[0].emit = submit_late
    run_all(b, requests)
    deadline = time.time() + 60
    while not (late and late[0].finish) and time.time() < deadline:
        time.sleep(0.01)
    for i, p in enumerate(prompts + [[7, 8, 9]]):
        n = 6 + i if i < 6 else 5
        assert got[i].tokens == m.generate(p, max_new_tokens=n, stop_ids=[]), i
        assert got[i].finish == ["length"], i


def test_stop_ids_end_a_request_without_being_emitted_and_seeded_sampling_repeats():
    m = load("qwen2-tied-f32", "numpy")
    greedy = m.generate(PROMPTS[1], max_new_tokens=8, stop_ids=[])
    b = Batcher(m, max_batch=2, context=64)
    stopped, sampled, again = Collect(), Collect(), Collect()
    hot = Sampling(temperature=0.9, top_p=0.9, seed=5)
    requests = [b.submit(PROMPTS[1], 8, Sampling(), stop_ids=[greedy[3]], emit=stopped),
                b.submit(PROMPTS[0], 8, hot, stop_ids=[], emit=sampled),
                b.submit(PROMPTS[0], 8, hot, stop_ids=[], emit=again)]
    run_all(b, requests)
    first = greedy.index(greedy[3])
    assert stopped.tokens == greedy[:first] and stopped.finish == ["stop"]
    assert requests[0].generated == greedy[:first + 1]
    assert sampled.tokens == again.tokens == m.generate(PROMPTS[0], 8, hot, stop_ids=[])


def test_a_full_slot_ends_with_length_and_a_prompt_that_fills_the_context_is_refused():
    m = load("qwen2-tied-f32", "numpy")
    b = Batcher(m, max_batch=1, context=8)
    with pytest.raises(InputError, match="context holds 8"):
        b.submit(list(range(1, 9)), 4)
    with pytest.raises(InputError, match="at least 1"):
        b.submit([1, 2], 0)
    with pytest.raises(InputError, match="outside the vocabulary"):
        b.submit([m.config.vocab_size], 4)
    got = Collect()
    r = b.submit([1, 2, 3, 4, 5], 100, stop_ids=[], emit=got)
    run_all(b, [r])
    assert got.finish == ["length"] and len(got.tokens) == 3      # positions 5, 6, 7


def test_cancelled_requests_free_their_slots_and_a_full_line_is_refused():
    m = load("qwen2-tied-f32", "numpy")
    b = Batcher(m, max_batch=1, context=64, max_waiting=1)
    first, second = Collect(), Collect()
    running = b.submit([1, 2, 3], 50, stop_ids=[], emit=first)
    b.submit([4, 5], 50, stop_ids=[], emit=second)
    with pytest.raises(QueueFull):
        b.submit([6], 5, stop_ids=[])
    b.cancel(running)
    waiting = b.waiting[0]
    b.cancel(waiting)
    third = Collect()
    last = b.submit([7, 8], 3, stop_ids=[], emit=third)
    run_all(b, [running, waiting, last])
    assert first.finish == ["cancelled"] and second.finish == ["cancelled"]
    assert second.tokens == []
    assert third.tokens == m.generate([7, 8], max_new_tokens=3, stop_ids=[])
    assert b.free == [0] and b.load == (0, 0)


def test_a_failing_step_ends_its_requests_with_error_and_the_loop_goes_on(monkeypatch):
    m = load("qwen2-tied-f32", "numpy")
    b = Batcher(m, max_batch=2, context=64)
    real = b.prefill_chunk_of
    calls = []

    def fail_once(request):
        calls.append(request)
        if len(calls) == 1:
            raise RuntimeError("boom")
        real(request)
    monkeypatch.setattr(b, "prefill_chunk_of", fail_once)
    bad, good = Collect(), Collect()
    requests = [b.submit([1, 2], 3, stop_ids=[], emit=bad),
                b.submit([3, 4], 3, stop_ids=[], emit=good)]
    run_all(b, requests)
    assert bad.finish == ["error"] and "boom" in requests[0].error
    assert good.tokens == m.generate([3, 4], max_new_tokens=3, stop_ids=[])


def test_an_emit_that_raises_cancels_only_its_own_request():
    m = load("qwen2-tied-f32", "numpy")
    b = Batcher(m, max_batch=2, context=64)

    def broken(token, finish):
        raise OSError("the client's pipe is gone")
    good = Collect()
    requests = [b.submit([1, 2], 20, stop_ids=[], emit=broken),
                b.submit([3, 4], 6, stop_ids=[], emit=good)]
    run_all(b, requests)
    assert requests[0].finish == "cancelled" and len(requests[0].generated) <= 2
    assert good.tokens == m.generate([3, 4], max_new_tokens=6, stop_ids=[])


def test_start_warms_up_on_scratch_slots_and_a_failing_warm_up_is_raised(monkeypatch):
    m = load("qwen2-tied-f32", "numpy")
    b = Batcher(m, max_batch=2, context=16).start()
    assert [c.length for c in b.slots.caches] == [0, 0] and b.free == [0, 1]
    assert b.slots.k[0][:2, :2].any()          # the warm-up's two passes wrote there
    got = Collect()
    r = b.submit([1, 2, 3], 4, stop_ids=[], emit=got)
    deadline = time.time() + 60
    while r.finish is None and time.time() < deadline:
        time.sleep(0.005)
    b.close()
    assert got.tokens == m.generate([1, 2, 3], max_new_tokens=4, stop_ids=[])

    broken = Batcher(m, max_batch=2, context=16)

    def fail():
        raise RuntimeError("no kernels today")
    monkeypatch.setattr(broken, "warm_up", fail)
    with pytest.raises(RuntimeError, match="no kernels today"):
        broken.start()


def test_close_ends_what_is_left_and_the_thread_stops():
    m = load("qwen2-tied-f32", "numpy")
    b = Batcher(m, max_batch=1, context=64).start()
    got = Collect()
    b.submit([1, 2, 3], 50, stop_ids=[], emit=got)
    b.close()
    assert not b.thread.is_alive()
    assert got.finish in (["cancelled"], ["length"])
    with pytest.raises(Closed, match="stopping"):
        b.submit([1], 1)


REAL_PROMPTS = ["def fibonacci(n):", "import numpy as np\n", "x", "# Sort a list of numbers",
                "class Stack:\n    def __init__(self):", "SELECT name FROM", "for i in",
                "The quick brown fox jumps over the lazy dog. " * 3]


@pytest.mark.real_model
@pytest.mark.skipif(not is_fetched(), reason="run `qwen-np fetch` first")
@pytest.mark.parametrize("backend,n_prompts,new", [("numba", 8, 12), ("numpy", 3, 3)])
def test_real_gguf_batch_gives_each_prompt_its_greedy_tokens(backend, n_prompts, new):
    """The real Qwen2.5-Coder-0.5B GGUF: 1 to 8 prompts of different lengths served together
    (they join one by one, as their prefills finish), each equal to its own greedy run."""
    import qwen_np
    m = qwen_np.load(default_model_path(), backend=backend)
    prompts = [m.tokenizer.encode(p) for p in REAL_PROMPTS[:n_prompts]]
    b = Batcher(m, max_batch=8, context=128)
    got = [Collect() for _ in prompts]
    requests = [b.submit(p, new, stop_ids=[], emit=g) for p, g in zip(prompts, got)]
    run_all(b, requests, timeout=600)
    for p, g in zip(prompts, got):
        assert g.tokens == m.generate(p, max_new_tokens=new, stop_ids=[])
