"""Prometheus metrics for one app instance (its own registry: no process globals that tests
must reset): HTTP requests by route template, token latencies, and the engines' and the
ledger's own counters, read when /metrics is scraped rather than pushed from their hot paths."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from constellation.api.state import AppState
    from constellation.engine.decoder.sequence import Delta

# Token latencies span a millisecond (a decode step on a GPU) to a minute (a long queue).
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "constellation_http_requests",
            "HTTP requests answered, by method, route template and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "constellation_http_request_duration_seconds",
            "Seconds from a request's arrival to the end of its response",
            ["method", "route"],
            registry=self.registry,
        )
        self.ttft = Histogram(
            "constellation_time_to_first_token_seconds",
            "Seconds from a generation's submission to the engine to its first token",
            buckets=TOKEN_BUCKETS,
            registry=self.registry,
        )
        self.itl = Histogram(
            "constellation_inter_token_latency_seconds",
            "Seconds between consecutive generated tokens of one sequence",
            buckets=TOKEN_BUCKETS,
            registry=self.registry,
        )
        self.queue = Histogram(
            "constellation_request_queue_time_seconds",
            "Seconds a request waited in an engine's queue before its first step, as the engine reports it",
            ["engine"],
            buckets=TOKEN_BUCKETS,
            registry=self.registry,
        )

    def watch(self, state: Callable[[], AppState | None]) -> None:
        """Read the engines' and the ledger writer's counters from the app's state (None until
        its lifespan has opened it) per scrape."""
        self.registry.register(EngineCollector(state))
        self.registry.register(LedgerCollector(state))


async def timed(deltas: AsyncIterator[Delta], metrics: Metrics) -> AsyncIterator[Delta]:
    """`deltas` (a decoder stream) unchanged, observing TTFT, inter-token latency and, when the
    engine reports it, queue time; closing this closes (aborts) the engine's stream at once."""
    start = last = time.perf_counter()
    first = True
    try:
        async for d in deltas:
            now, n = time.perf_counter(), len(d.token_ids)
            if n and first:
                metrics.ttft.observe(now - start)
                first = False
            elif n:
                for _ in range(n):  # a delta holds several tokens when a stop sequence held text back
                    metrics.itl.observe((now - last) / n)
            last = now if n else last
            queue_ns = getattr(d, "queue_ns", None)
            if queue_ns is not None:
                metrics.queue.labels("decoder").observe(queue_ns / 1e9)
            yield d
    finally:
        await deltas.aclose()  # type: ignore[attr-defined]  # an async generator


# Engine stat -> (metric, is a counter, help). `*_ns` stats are exposed in seconds. Stats not
# named here go out as constellation_engine_stat{engine, stat}, so a new one is never lost.
ENGINE_STATS: dict[str, tuple[str, bool, str]] = {
    "steps": ("constellation_engine_steps", True, "Engine steps (one forward pass each)"),
    "rows": (
        "constellation_engine_batch_rows",
        True,
        "Sequences summed over steps: rate(rows) / rate(steps) is the mean batch size",
    ),
    "requests": ("constellation_engine_requests", True, "Requests the engine finished"),
    "tokens": ("constellation_engine_input_tokens", True, "Input tokens computed"),
    "padded_tokens": ("constellation_engine_padded_tokens", True, "Tokens computed, padding included"),
    "tokens_out": ("constellation_engine_output_tokens", True, "Tokens generated"),
    "busy_ns": ("constellation_engine_busy_seconds", True, "Seconds the engine spent computing"),
    "queue_depth": ("constellation_engine_queue_depth", False, "Requests waiting for the engine"),
    "queue_wait_ns": (
        "constellation_engine_queue_wait_seconds",
        True,
        "Seconds requests spent queued before their first step, summed: / requests is the mean",
    ),
    "queued": ("constellation_engine_queue_depth", False, "Requests waiting for the engine"),
    "running": ("constellation_engine_running_sequences", False, "Sequences in the running batch"),
    "bases": ("constellation_engine_loaded_bases", False, "Base models loaded"),
    "workers": ("constellation_engine_workers", False, "Engine worker processes serving"),
    "base_loads": ("constellation_base_model_loads", True, "Base models loaded from disk"),
    "base_evictions": ("constellation_base_model_evictions", True, "Base models evicted"),
    "kv_blocks": ("constellation_kv_cache_blocks", False, "KV cache blocks"),
    "kv_free_blocks": ("constellation_kv_cache_free_blocks", False, "KV cache blocks free"),
    "adapter_hits": ("constellation_adapter_cache_hits", True, "Adapter uses that found it in a slot"),
    "adapter_misses": ("constellation_adapter_cache_misses", True, "Adapter uses that had to load it"),
    "adapter_evictions": ("constellation_adapter_cache_evictions", True, "Adapters evicted from slots"),
    "adapter_host_hits": ("constellation_adapter_host_cache_hits", True, "Adapter loads from host memory"),
    "adapter_host_misses": ("constellation_adapter_host_cache_misses", True, "Adapter loads from disk"),
    "adapter_host_evictions": (
        "constellation_adapter_host_cache_evictions",
        True,
        "Adapters evicted from host memory",
    ),
}


class EngineCollector(Collector):
    """`engines.stats()` per engine, under conventional names and units, at scrape time."""

    def __init__(self, state: Callable[[], AppState | None]) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        state = self.state()
        engines = state.engines if state is not None else None
        families: dict[str, CounterMetricFamily | GaugeMetricFamily] = {}
        other = GaugeMetricFamily(
            "constellation_engine_stat",
            "Engine statistics without a metric of their own",
            labels=["engine", "stat"],
        )
        for engine, stats in (engines.stats() if engines is not None else {}).items():
            for stat, value in stats.items():
                if stat not in ENGINE_STATS:
                    other.add_metric([engine, stat], float(value))
                    continue
                name, counter, help_ = ENGINE_STATS[stat]
                if name not in families:
                    kind = CounterMetricFamily if counter else GaugeMetricFamily
                    families[name] = kind(name, help_, labels=["engine"])
                families[name].add_metric([engine], value / 1e9 if stat.endswith("_ns") else float(value))
        yield from families.values()
        yield other


class LedgerCollector(Collector):
    """The ledger writer's committed postings and write-offs, at scrape time."""

    def __init__(self, state: Callable[[], AppState | None]) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        state = self.state()
        writer = getattr(state.meter, "_writer", None) if state is not None else None  # one per process
        if writer is None:
            return
        postings = getattr(writer, "postings", None)
        if postings is not None:
            yield CounterMetricFamily(
                "constellation_ledger_postings", "Ledger transactions committed (one per request)", postings
            )
        written_off = getattr(writer, "written_off_nanos", None)
        if written_off is not None:
            yield CounterMetricFamily(
                "constellation_ledger_written_off_usd",
                "Charges written off because a tenant's balance could not cover them, in USD",
                written_off / 1e9,
            )
