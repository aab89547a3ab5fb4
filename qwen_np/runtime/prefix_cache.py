"""Prompt prefixes reused between requests: a new request whose prompt begins as an earlier
one's did skips prefilling that beginning, and gets the same tokens as a fresh prefill.

Where a prefix is kept:

    in a slot     each KV cache slot remembers the token ids whose keys and values it holds
                  (`held`); a free slot keeps them until another request takes it
    in the LRU    when a request takes a slot whose prefix it does not share, that prefix is
                  copied out into a least-recently-used store within a byte budget
                  (--prefix-cache-bytes); the oldest are dropped to stay within it

A new request takes the free slot with the longest usable prefix, or, if a saved prefix is
longer, a free slot into which that prefix is copied back.

**Exactness.** The batcher prefills a prompt in chunks of `chunk` tokens at positions 0,
chunk, 2 chunk, ... A chunk's keys and values depend only on its tokens and on the cache
before it, computed by the same kernels on the same shapes, so they are bit for bit those of
any other prefill that reaches that chunk with the same tokens. Keys and values written
otherwise (a last, partial chunk; a decode step, batched with other rows) could differ in
their last bits. So a slot holds as its prefix only the whole prompt chunks it prefilled,
and reuse stops at a multiple of `chunk`: the prefill that follows splits exactly where a
fresh prefill splits, and every logit is the one a fresh prefill gives (tested on every
fixture and on the real GGUF).

At least one prompt token is always prefilled (its logits choose the first new token).
Reuse is off where it cannot be exact (runtime/batch.py): the original Qwen's dynamic NTK,
whose RoPE base depends on the whole prompt's length, and its chunk-scaled int8 cache.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from qwen_np.model.kv_cache import KVCache

CACHE_FIELDS = ("k", "v", "k_scale", "k_zero", "v_scale", "v_zero")


def whole_chunks(n: int, chunk: int) -> int:
    """n rounded down to a multiple of chunk."""
    return n - n % chunk


def usable_prefix(held: tuple[int, ...], ids: list[int], chunk: int) -> int:
    """How many of the prompt `ids` can be taken from a cache holding `held`: their common
    beginning, leaving at least one token to prefill, rounded down to whole chunks."""
    n = 0
    for a, b in zip(held, ids):
        if a != b:
            break
        n += 1
    return whole_chunks(min(n, len(ids) - 1), chunk)


@dataclass
class SavedPrefix:
    """A prefix copied out of a slot: its token ids and, per cache array (k, v and an int8
    cache's scales and zeros) per layer, its first len(ids) positions."""
    ids: tuple[int, ...]
    arrays: dict[str, list]
    nbytes: int


def copy_prefix(cache: KVCache, n: int) -> tuple[dict[str, list], int]:
    """The first n positions of every array of `cache` (copies), and their bytes."""
    arrays = {name: [a[:n].copy() for a in getattr(cache, name)]
              for name in CACHE_FIELDS if getattr(cache, name) is not None}
    return arrays, sum(int(a.nbytes) for layers in arrays.values() for a in layers)


def restore_prefix(cache: KVCache, saved: SavedPrefix) -> None:
    """Write a saved prefix back into positions 0..len-1 of `cache`."""
    n = len(saved.ids)
    for name, layers in saved.arrays.items():
        for target, source in zip(getattr(cache, name), layers):
            target[:n] = source


@dataclass
class PrefixStore:
    """The LRU of saved prefixes, within `budget` bytes, and the reuse counters."""
    budget: int
    saved: OrderedDict = field(default_factory=OrderedDict)   # id -> SavedPrefix, oldest first
    bytes: int = 0
    hits: int = 0            # requests that reused a prefix
    tokens: int = 0          # prompt tokens not prefilled thanks to reuse
    evictions: int = 0       # saved prefixes dropped for the budget

    def best(self, ids: list[int], chunk: int) -> tuple[SavedPrefix | None, int]:
        """The saved prefix that gives `ids` the most reuse, and how much."""
        best, most = None, 0
        for saved in self.saved.values():
            n = usable_prefix(saved.ids, ids, chunk)
            if n > most:
                best, most = saved, n
        return best, most

    def add(self, ids: tuple[int, ...], cache: KVCache) -> None:
        """Save the first len(ids) positions of `cache` (nothing if they would not fit)."""
        if not ids or self.budget <= 0:
            return
        for saved in self.saved.values():
            if saved.ids[:len(ids)] == ids:          # already kept, as long or longer
                return
        arrays, nbytes = copy_prefix(cache, len(ids))
        if nbytes > self.budget:
            return
        while self.bytes + nbytes > self.budget:
            _, dropped = self.saved.popitem(last=False)
            self.bytes -= dropped.nbytes
            self.evictions += 1
        self.saved[id(arrays)] = SavedPrefix(ids, arrays, nbytes)
        self.bytes += nbytes

    def take(self, saved: SavedPrefix) -> None:
        """Remove a saved prefix (it is going back into a slot, which holds it from now)."""
        self.saved = OrderedDict((k, s) for k, s in self.saved.items() if s is not saved)
        self.bytes -= saved.nbytes

    def stats(self) -> dict:
        return {"hits": self.hits, "tokens": self.tokens, "evictions": self.evictions,
                "bytes": self.bytes, "saved": len(self.saved)}
