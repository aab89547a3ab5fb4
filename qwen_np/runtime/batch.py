"""Continuous batching: sequences join and leave one running batch of decode steps.

The server (apps/serve/) hands requests to a Batcher, whose loop runs in a thread of its own.
Each turn of the loop:

    1. waiting requests take free slots of the KV cache (one slot per sequence, at most
       max_batch of them; model/kv_cache.py's KVSlots)
    2. one chunk of one new sequence's prompt (prefill_chunk tokens) goes through the model,
       through its slot's cache; after its last chunk its first token is chosen
    3. every sequence past its prompt decodes one token, all in one pass (model.decode_step:
       each weight is read once for the whole batch); a request with prompt lookup adds the
       tokens drafted from its text (runtime/prompt_lookup.py) as rows of the same pass and
       keeps those its sampler agrees with

so a request that arrives while others decode joins at the next turn, and a long prompt holds
the running streams up for one chunk at a time, not for the whole prompt. A sequence's tokens
are those it gets decoded alone (model.decode_step): its own slot, positions and sampler.

Tokens reach each request through its `emit(token, finish)` callback, called from the loop's
thread (or, for a request cancelled while it waits, from cancel's caller), which must be quick
(it holds up the whole batch); if it raises, its request is cancelled. emit(token, None) for
each new token, then emit(None, reason) once, with reason
"stop" (a stop id was generated; it is not emitted), "length" (max_new_tokens, or the slot is
full), "cancelled" (cancel() was called) or "error" (the step failed; the message is in
request.error). A finished or cancelled request's slot is free for the next one.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from qwen_np.model.kv_cache import new_kv_slots
from qwen_np.errors import InputError, QwenNpError
from qwen_np.runtime.process_memory import release_free_heap
from qwen_np.model.forward import decode_step, forward
from qwen_np.model.logprobs import token_logprobs, top_logprobs
from qwen_np.model.sampling import GREEDY, Sampling, accept_or_sample, sample_next
from qwen_np.runtime.prompt_lookup import MAX_PROMPT_LOOKUP, lookup_draft
from qwen_np.runtime.prefix_cache import PrefixStore, restore_prefix, usable_prefix, whole_chunks


# A prompt scored for its own log-probabilities (echo) of up to this many tokens goes through
# the model in one pass, as `qwen-np ppl` scores a window, so that the two agree bit for bit
# (chunks of other sizes run the kernels on other shapes, which moves the last bits). Longer
# ones go in chunks: one pass would hold [T, vocab] float32 logits at once.
SCORED_PROMPT_PASS = 512


class QueueFull(QwenNpError):
    """Every slot is taken and the waiting line is full: try again later."""


class Closed(QwenNpError):
    """The batcher is closing (the server is stopping): no new request is taken."""


@dataclass(eq=False)
class Request:
    """One sequence: its prompt, how to choose and when to stop, and where it stands."""
    ids: list[int]
    max_new_tokens: int
    sampling: Sampling
    stop_ids: frozenset
    emit: Callable[[int | None, str | None], None]
    generated: list[int] = field(default_factory=list)   # every new token, a stop id included
    slot: int = -1                 # its KV cache slot while it holds one
    prefilled: int = 0             # prompt tokens already in the cache
    finish: str | None = None      # why it ended, once it has
    error: str | None = None
    cancelled: bool = False
    rng: np.random.Generator | None = None
    cache_prompt: bool = True      # may reuse a cached prompt prefix (runtime/prefix_cache.py)
    cached_tokens: int = 0         # prompt tokens taken from a cached prefix, not prefilled
    logprobs: int | None = None    # report each new token's log-probability and this many
                                   # alternatives (model/logprobs.py); None: none reported
    prompt_logprobs: bool = False  # also the prompt's tokens' (every position's logits)
    token_logprobs: list = field(default_factory=list)    # per new token: (logprob, top)
    prompt_token_logprobs: list = field(default_factory=list)  # per prompt token 1..: same
    constraint: object = None      # runtime/constraint.py's Constraint: only tokens its
                                   # grammar allows are sampled; None: any token
    prompt_lookup: int = 0         # tokens drafted a step from its text (0: none)

    @property
    def decoding(self) -> bool:
        return self.prefilled == len(self.ids) and self.finish is None


class Batcher:
    """The loop of continuous batching over one model (see the module docstring)."""

    def __init__(self, model, max_batch: int = 8, context: int = 2048,
                 prefill_chunk: int = 128, max_waiting: int = 64, prefix_cache_bytes: int = 0,
                 prompt_lookup: int = 0):
        if max_batch < 1 or context < 2 or prefill_chunk < 1 or max_waiting < 0 \
                or not 0 <= prompt_lookup <= MAX_PROMPT_LOOKUP:
            raise InputError(f"max_batch {max_batch}, context {context}, prefill_chunk "
                             f"{prefill_chunk}, max_waiting {max_waiting}, prompt_lookup "
                             f"{prompt_lookup}: out of range")
        self.prompt_lookup = prompt_lookup   # drafted tokens a step, for requests not saying
        self.model = model
        self.context = context
        self.prefill_chunk = prefill_chunk
        self.max_waiting = max_waiting
        self.slots = new_kv_slots(model.config, max_batch, context, model.backend,
                                  model.kv_cache)
        # prompt prefixes (runtime/prefix_cache.py): what each slot holds, the saved ones,
        # and whether reuse can be exact for this model at all
        self.held: list[tuple[int, ...]] = [() for _ in range(max_batch)]
        self.prefixes = PrefixStore(prefix_cache_bytes)
        self.reuse = not (model.config.dynamic_ntk or self.slots.caches[0].qwen_v1_quantizer)
        self.free = list(range(max_batch))
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []          # the sequences holding slots
        self.lock = threading.Condition()
        self.thread: threading.Thread | None = None
        self.closing = False
        self.draining = False          # drain(): no new requests; the running ones go on
        self.looping = False           # run() is in its loop (what /health reports)
        self.failure: str | None = None   # why the loop died, if it did

    # -- from any thread -----------------------------------------------------------------------
    def submit(self, ids, max_new_tokens: int, sampling: Sampling = GREEDY, stop_ids=None,
               emit: Callable[[int | None, str | None], None] = lambda t, f: None,
               cache_prompt: bool = True, logprobs: int | None = None,
               prompt_logprobs: bool = False, constraint=None,
               prompt_lookup: int | None = None) -> Request:
        """Queue a sequence. A prompt that leaves no room in a slot for one new token is an
        InputError; a full waiting line is QueueFull. With cache_prompt False it prefills its
        whole prompt, reusing no cached prefix. With `logprobs` (k), each new token's
        log-probability and the k most likely tokens' are kept in request.token_logprobs
        before the token is emitted; with prompt_logprobs, the prompt's in
        request.prompt_token_logprobs (its whole prompt is then prefilled), and
        max_new_tokens may be 0 (the prompt scored, nothing generated). With a `constraint`
        (runtime/constraint.py, a fresh one per request) each token is sampled from the
        tokens its grammar allows; the request ends "stop" once its output is complete.
        `prompt_lookup` (k): up to k tokens a step drafted from its text and checked in the
        same pass (runtime/generate.py's rule: greedy output unchanged); None: the
        batcher's own setting."""
        if self.closing or self.draining:
            raise Closed("the server is stopping; it takes no new requests")
        ids = self.model._check_ids(ids)
        if len(ids) >= self.context:
            raise InputError(f"the prompt is {len(ids)} tokens; the context holds "
                             f"{self.context}, and one more is needed for the answer")
        if max_new_tokens < (0 if prompt_logprobs else 1):
            raise InputError(f"max_tokens is {max_new_tokens}; it must be at least 1")
        if prompt_lookup is None:
            prompt_lookup = self.prompt_lookup
        if isinstance(prompt_lookup, bool) or not isinstance(prompt_lookup, int) \
                or not 0 <= prompt_lookup <= MAX_PROMPT_LOOKUP:
            raise InputError(f"prompt_lookup is {prompt_lookup!r}; it must be an integer "
                             f"from 0 (off) to {MAX_PROMPT_LOOKUP}")
        stop = self.model.stop_ids() if stop_ids is None else stop_ids
        request = Request(ids, min(max_new_tokens, self.context - len(ids)), sampling,
                          frozenset(int(i) for i in stop), emit, rng=sampling.generator(),
                          cache_prompt=cache_prompt and not prompt_logprobs,
                          logprobs=logprobs, prompt_logprobs=prompt_logprobs,
                          constraint=constraint, prompt_lookup=prompt_lookup)
        with self.lock:
            # (requests waiting for the next turn take the free slots first)
            queued = len(self.waiting) - len(self.free)       # those left without a slot
            if queued >= self.max_waiting:
                raise QueueFull(f"all {len(self.slots.caches)} slots are taken and {queued} "
                                f"requests wait for one (at most {self.max_waiting}); "
                                f"try again later")
            self.waiting.append(request)
            self.lock.notify()
        return request

    def cancel(self, request: Request) -> None:
        """End a request: now if it is still waiting, else at the next turn (its slot is
        freed); emit(None, "cancelled")."""
        request.cancelled = True
        with self.lock:
            if request in self.waiting:
                self.end(request, "cancelled")
            self.lock.notify()

    def start(self) -> "Batcher":
        """Run the loop in a thread of its own, returning once it has warmed up there.

        Kernels run fastest when one thread runs them all: each thread that runs an OpenMP
        kernel (Numba's threading layer here) keeps a team of worker threads, and once there
        are more workers than cores libgomp cuts their spinning short, so that every kernel
        waits for its workers to wake (measured: one stream decoded at 32 tokens/s instead of
        55 after the calling thread had run a kernel). A program that loads the model and
        then calls start() does best to run the loop itself instead (run(), after warm_up()),
        as `qwen-np serve` does."""
        ready = threading.Event()
        failed = []

        def warm_up_then_run():
            try:
                self.warm_up()
            except BaseException as e:      # start() raises it in the caller's thread
                failed.append(e)
                return
            finally:
                ready.set()
            self.run()
        self.thread = threading.Thread(target=warm_up_then_run, name="qwen-np batcher",
                                       daemon=True)
        self.thread.start()
        ready.wait()
        if failed:
            raise failed[0]
        return self

    def warm_up(self) -> None:
        """Run each kind of pass once, on scratch tokens in two free slots: a prompt of two
        tokens, one of one, and a decode step of both. The backend's kernels are compiled
        (or loaded from their cache) here, not at the first request that needs them (the
        Numba backend's first batched step compiled for about 9 s mid-stream)."""
        if len(self.free) < 2:
            return
        m, (a, b) = self.model, self.free[:2]
        scratch = [self.slots.caches[a], self.slots.caches[b]]
        forward(m.config, m.weights, m.backend, [0, 0], scratch[0], last_only=True)
        forward(m.config, m.weights, m.backend, [0], scratch[1], last_only=True)
        decode_step(m.config, m.weights, m.backend, [0, 0], self.slots, [a, b])
        for cache in scratch:
            cache.length, cache.ntk_alpha = 0, 1.0
        self.held[a] = self.held[b] = ()

    def drain(self) -> None:
        """Take no new requests (submit raises Closed); those running and waiting go on."""
        self.draining = True

    def close(self) -> None:
        with self.lock:
            self.closing = True
            self.lock.notify()
        if self.thread is not None:
            self.thread.join()

    @property
    def n_slots(self) -> int:
        return len(self.slots.caches)

    @property
    def kv_bytes(self) -> int:
        """Bytes of the slots' KV cache (every array, allocated at the start)."""
        arrays = [self.slots.k, self.slots.v, self.slots.k_scale, self.slots.k_zero,
                  self.slots.v_scale, self.slots.v_zero]
        return sum(int(a.nbytes) for layers in arrays if layers is not None for a in layers)

    def prefix_cache_stats(self) -> dict:
        """The prefix cache's counters: hits, tokens (reused), evictions, bytes, saved."""
        return self.prefixes.stats()

    @property
    def alive(self) -> bool:
        """The loop is running (in its thread, if start() made one)."""
        return self.looping and (self.thread is None or self.thread.is_alive())

    @property
    def load(self) -> tuple[int, int]:
        """(sequences holding slots, requests waiting for one)."""
        return len(self.running), len(self.waiting)

    # -- the loop's thread ---------------------------------------------------------------------
    def run(self) -> None:
        """The loop (module docstring), until close(). A failure outside any one step (a
        defect of the loop itself) ends every request with "error" and is raised."""
        self.looping = True
        try:
            while True:
                with self.lock:
                    while not (self.closing or self.waiting or self.running):
                        self.lock.wait()
                    if self.closing:
                        break
                self.turn()
        except BaseException as e:
            self.failure = f"{type(e).__name__}: {e}"
            for request in list(self.running) + list(self.waiting):
                request.error = self.failure
                self.end(request, "error")
            raise
        finally:
            self.looping = False
        for request in list(self.running) + list(self.waiting):
            self.end(request, "cancelled")

    def turn(self) -> None:
        """One turn: admit, one prefill chunk, one decode step for all (module docstring)."""
        self.admit()
        for request in [r for r in self.running if r.cancelled]:
            self.end(request, "cancelled")
        new = next((r for r in self.running if r.prefilled < len(r.ids)), None)
        if new is not None:
            self.guarded([new], lambda: self.prefill_chunk_of(new))
        batch = [r for r in self.running if r.decoding and r is not new]
        if batch:
            self.guarded(batch, lambda: self.decode(batch))

    def admit(self) -> None:
        """Waiting requests into free slots, each into the one that spares it the most
        prefill (runtime/prefix_cache.py)."""
        while True:
            with self.lock:
                if not (self.free and self.waiting):
                    return
                request = self.waiting.popleft()
                if request.cancelled:
                    self.end(request, "cancelled")
                    continue
                slot, reused, saved = self.choose_slot(request)
                self.free.remove(slot)
                request.slot = slot
                self.running.append(request)
            self.reuse_prefix(request, reused, saved)

    def choose_slot(self, request: Request):
        """(free slot, prompt tokens it can reuse, the saved prefix to copy in or None).
        With nothing to reuse: the free slot holding the shortest prefix (the least lost)."""
        free = sorted(self.free, key=lambda s: len(self.held[s]))
        if not (self.reuse and request.cache_prompt):
            return free[0], 0, None
        chunk = self.prefill_chunk
        slot = max(free, key=lambda s: usable_prefix(self.held[s], request.ids, chunk))
        in_slot = usable_prefix(self.held[slot], request.ids, chunk)
        saved, in_store = self.prefixes.best(request.ids, chunk)
        if in_store > in_slot:
            return free[0], in_store, saved
        if in_slot == 0:
            return free[0], 0, None
        return slot, in_slot, None

    def reuse_prefix(self, request: Request, reused: int, saved) -> None:
        """Set the request's slot up to hold `reused` prompt tokens: from the slot itself, or
        copied in from `saved`. A prefix the slot held that is not kept goes to the store."""
        slot = request.slot
        cache = self.slots.caches[slot]
        if saved is not None:                # out of the store first: it is not evicted below
            self.prefixes.take(saved)
        if len(self.held[slot]) > reused:
            self.prefixes.add(self.held[slot], cache)
        if saved is not None:
            restore_prefix(cache, saved)
        cache.length, cache.ntk_alpha = reused, 1.0
        self.held[slot] = tuple(request.ids[:reused])
        request.prefilled = request.cached_tokens = reused
        if reused:
            self.prefixes.hits += 1
            self.prefixes.tokens += reused

    def prefill_chunk_of(self, request: Request) -> None:
        """The next chunk of the prompt into the request's slot; after the last, its first
        token. (The original Qwen's int8 cache quantizer scales a pass's chunk as one block:
        its prompt goes in one pass, as in its own code and in runtime/generate.py.)"""
        m = self.model
        cache = self.slots.caches[request.slot]
        one_pass = cache.qwen_v1_quantizer or (request.prompt_logprobs and
                                               len(request.ids) <= SCORED_PROMPT_PASS)
        chunk = len(request.ids) if one_pass else self.prefill_chunk
        at = request.prefilled
        ids = request.ids[at:at + chunk]
        logits = forward(m.config, m.weights, m.backend, ids, cache,
                         last_only=not request.prompt_logprobs, prompt_length=len(request.ids))
        if request.prompt_logprobs:      # row i predicts prompt token at + i + 1
            rows = m.backend.to_numpy(logits)
            following = request.ids[at + 1:at + 1 + len(ids)]
            request.prompt_token_logprobs += logprob_entries(
                rows[:len(following)], following, request.logprobs or 0)
        request.prefilled += len(ids)
        if self.reuse:            # whole prompt chunks: a prefix later prompts may reuse
            self.held[request.slot] = () if one_pass else tuple(
                request.ids[:whole_chunks(request.prefilled, self.prefill_chunk)])
        if request.prefilled == len(request.ids):
            if request.max_new_tokens == 0:                  # the prompt scored: done
                self.end(request, "length")
                return
            self.take(request, m.backend.to_numpy(logits)[-1])

    def decode(self, batch: list[Request]) -> None:
        """One pass: each request's last token, and after it the tokens drafted for it."""
        m = self.model
        drafts = [self.draft_of(r) for r in batch]
        tokens = [t for r, d in zip(batch, drafts) for t in [r.generated[-1]] + d]
        slot_ids = [r.slot for r, d in zip(batch, drafts) for _ in range(1 + len(d))]
        logits = m.backend.to_numpy(decode_step(m.config, m.weights, m.backend, tokens,
                                                self.slots, slot_ids))
        at = 0
        for request, draft in zip(batch, drafts):    # a request's sampling fails it alone
            rows, at = logits[at:at + 1 + len(draft)], at + 1 + len(draft)
            self.guarded([request], lambda: self.take_drafted(request, rows, draft))

    def draft_of(self, request: Request) -> list[int]:
        """The tokens prompt lookup drafts after the request's last, as many as its budget
        and its slot leave room for (runtime/generate.py's bound)."""
        if not request.prompt_lookup:
            return []
        room = min(request.max_new_tokens - len(request.generated) - 1,
                   self.context - self.slots.caches[request.slot].length - 1)
        return lookup_draft(request.ids + request.generated, min(request.prompt_lookup, room))

    def take_drafted(self, request: Request, rows, draft: list[int]) -> None:
        """Tokens from rows [1 + d, V] (row j follows draft[:j]): the drafts the sampler
        keeps, then its own token; the slot's cache is cut back to what those tokens left."""
        cache = self.slots.caches[request.slot]
        start = cache.length - len(rows)
        for j, row in enumerate(rows):
            cache.length = start + 1 + j         # what the cache holds before row j's token
            guess = draft[j] if j < len(draft) else None
            token = self.take(request, row, guess)
            if request.finish is not None or token != guess:
                break

    def take(self, request: Request, logits, draft: int | None = None) -> int:
        """Choose the request's next token from its logits [V], emit it or end the request;
        the token. A constrained request samples from a copy with the tokens its grammar
        forbids at -inf; its logprobs stay the model's own (as vLLM's default, raw_logprobs),
        and a stop token its grammar allows ends it as one of its stop ids would. `draft`:
        the token prompt lookup guessed here (model/sampling.py:accept_or_sample)."""
        model_logits, constraint = logits, request.constraint
        if constraint is not None:
            logits = constraint.mask(logits)
        history = request.ids + request.generated
        if draft is None:
            token = sample_next(logits, request.rng, request.sampling, history,
                                request.generated)
        else:
            token = accept_or_sample(logits, draft, request.rng, request.sampling, history,
                                     request.generated)
        if constraint is not None:
            constraint.accept(token)
        if request.logprobs is not None:
            request.token_logprobs += logprob_entries(np.asarray(model_logits)[None], [token],
                                                      request.logprobs)
        request.generated.append(token)
        if token in request.stop_ids or (constraint is not None and token in constraint.stop_ids):
            self.end(request, "stop")
            return token
        deliver(request, token, None)
        if constraint is not None and constraint.finished:    # only a stop token may follow
            self.end(request, "stop")
            return token
        cache_full = self.slots.caches[request.slot].length + 1 > self.context
        if len(request.generated) >= request.max_new_tokens or cache_full:
            self.end(request, "length")
        return token

    def guarded(self, requests: list[Request], step: Callable[[], None]) -> None:
        """Run a step; if it fails, its requests end with "error" and the loop goes on."""
        try:
            step()
        except Exception as e:     # noqa: BLE001 (one bad request must not stop the others)
            for request in requests:
                request.error = f"{type(e).__name__}: {e}"
                self.end(request, "error")

    def end(self, request: Request, reason: str) -> None:
        with self.lock:
            if request.finish is not None:
                return
            request.finish = reason
            if request in self.running:
                self.running.remove(request)
                self.free.append(request.slot)
                self.free.sort()
            elif request in self.waiting:
                self.waiting.remove(request)
            idle = not self.running and not self.waiting
        if idle:
            release_free_heap()         # the last step's temporaries go back to the system
        deliver(request, None, reason)


def logprob_entries(logits, tokens, k: int) -> list:
    """(log p of tokens[i] under row i of logits [T, V], the k most likely of that row)."""
    chosen = token_logprobs(logits, tokens)
    return [(float(lp), top_logprobs(row, k)) for lp, row in zip(chosen, logits)]


def deliver(request: Request, token: int | None, finish: str | None) -> None:
    """request.emit(token, finish); an emit that raises cancels its request (and only it)."""
    try:
        request.emit(token, finish)
    except Exception:       # noqa: BLE001 (the caller's callback: its failure is its own)
        request.cancelled = True
