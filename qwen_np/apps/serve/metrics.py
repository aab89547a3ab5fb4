"""The server's Prometheus metrics (GET /metrics, prometheus-client's text format).

    qwen_np_requests_total{path, status}       requests answered, by path and HTTP status
    qwen_np_prompt_tokens_total                 prompt tokens of the requests admitted
    qwen_np_completion_tokens_total             tokens generated
    qwen_np_time_to_first_token_seconds         from the request's arrival to its first token
    qwen_np_inter_token_seconds                 between one token of a request and its next
    qwen_np_running / qwen_np_waiting           sequences holding slots / waiting for one
    qwen_np_slots                               KV cache slots (max batch)
    qwen_np_kv_cache_bytes                      the slots' KV cache, allocated at start
    qwen_np_prefix_cache_hits_total             requests that reused a cached prompt prefix
    qwen_np_prefix_cache_tokens_total           prompt tokens not prefilled thanks to it
    qwen_np_prefix_cache_bytes                  the evicted prefixes kept (prefix cache LRU)
    qwen_np_prefix_cache_evictions_total        prefixes dropped from that LRU

Every metric lives in the app's own registry (no process-wide state), and the gauges are
read from the batcher when /metrics is scraped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

TOKEN_SECONDS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
FIRST_TOKEN_SECONDS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass(frozen=True)
class ServerMetrics:
    registry: CollectorRegistry
    requests: Counter
    prompt_tokens: Counter
    completion_tokens: Counter
    time_to_first_token: Histogram
    inter_token: Histogram


def server_metrics(batcher) -> ServerMetrics:
    """The metrics of a server over `batcher`, in a registry of their own."""
    registry = CollectorRegistry()
    gauges = {
        "qwen_np_running": ("sequences holding KV cache slots", lambda: batcher.load[0]),
        "qwen_np_waiting": ("requests waiting for a slot", lambda: batcher.load[1]),
        "qwen_np_slots": ("KV cache slots (sequences decoded together at most)",
                          lambda: batcher.n_slots),
        "qwen_np_kv_cache_bytes": ("bytes of the slots' KV cache", lambda: batcher.kv_bytes),
        "qwen_np_prefix_cache_bytes": ("bytes of evicted prompt prefixes kept for reuse",
                                       lambda: batcher.prefix_cache_stats()["bytes"]),
    }
    for name, (doc, read) in gauges.items():
        Gauge(name, doc, registry=registry).set_function(read)
    registry.register(BatcherCounters(batcher))
    return ServerMetrics(
        registry,
        Counter("qwen_np_requests", "requests answered", ["path", "status"], registry=registry),
        Counter("qwen_np_prompt_tokens", "prompt tokens of admitted requests",
                registry=registry),
        Counter("qwen_np_completion_tokens", "tokens generated", registry=registry),
        Histogram("qwen_np_time_to_first_token_seconds", "request arrival to first token",
                  buckets=FIRST_TOKEN_SECONDS, registry=registry),
        Histogram("qwen_np_inter_token_seconds", "time between a request's tokens",
                  buckets=TOKEN_SECONDS, registry=registry))


class RequestTiming:
    """One request's tokens as they reach the event loop: the time to its first token (from
    `started`, the request's arrival), the time between tokens, and the tokens counted."""

    def __init__(self, metrics: ServerMetrics | None, started: float):
        self.metrics, self.last = metrics, None
        self.started = started

    def token(self) -> None:
        if self.metrics is None:
            return
        now = time.monotonic()
        if self.last is None:
            self.metrics.time_to_first_token.observe(now - self.started)
        else:
            self.metrics.inter_token.observe(now - self.last)
        self.last = now
        self.metrics.completion_tokens.inc()


class BatcherCounters:
    """The counters the batcher keeps itself (its prefix cache's), read when scraped."""
    COUNTERS = {"qwen_np_prefix_cache_hits": ("requests that reused a cached prompt prefix",
                                              "hits"),
                "qwen_np_prefix_cache_tokens": ("prompt tokens reused instead of prefilled",
                                                "tokens"),
                "qwen_np_prefix_cache_evictions": ("prefixes dropped from the prefix cache",
                                                   "evictions")}

    def __init__(self, batcher):
        self.batcher = batcher

    def collect(self):
        return self.families(self.batcher.prefix_cache_stats())

    def describe(self):
        """Their names, for the registry (without reading the batcher)."""
        return self.families({key: 0 for _, key in self.COUNTERS.values()})

    def families(self, values: dict):
        from prometheus_client.core import CounterMetricFamily
        return [CounterMetricFamily(name, doc, value=values[key])
                for name, (doc, key) in self.COUNTERS.items()]
