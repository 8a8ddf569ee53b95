"""AdapterCache: load once under concurrent first requests, pinned never evicted, LRU tiers."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from constellation.engine.lora.adapters import LoadedAdapter, LoRAWeights, load_adapter
from constellation.engine.lora.cache import AdapterCache
from constellation.engine.lora.layer import NO_ADAPTER, LoRAContext, MultiLoRALinear
from constellation.engine.spec import AdapterSpec
from constellation.errors import InvalidInput, Overloaded

from ..conftest import make_adapter


def _spec(name: str) -> AdapterSpec:
    return AdapterSpec(name=name, base="b", resolve=lambda: Path("/nonexistent"))


class _Loader:
    """Fake disk: counts loads; `hold()` makes it wait until released (threads collide)."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.lock = threading.Lock()
        self.gate: Callable[[], None] = lambda: None

    def __call__(self, spec: AdapterSpec) -> LoadedAdapter:
        with self.lock:
            self.calls[spec.name] = self.calls.get(spec.name, 0) + 1
        self.gate()
        w = LoRAWeights(A=torch.ones(2, 4), B=torch.ones(4, 2), scale=1.0)
        return LoadedAdapter(name=spec.name, rank=2, scale=1.0, modules={"lin": w})


def _cache(slots: int, host_bytes: int = 10**9) -> tuple[AdapterCache, _Loader]:
    layer = MultiLoRALinear(nn.Linear(4, 4), LoRAContext(slots), slots, 4)
    loader = _Loader()
    return AdapterCache({"lin": layer}, slots, host_bytes, loader=loader), loader


class _Watched(dict[str, threading.Event]):
    """The cache's in-flight loads, counting the look-ups that precede waiting on one."""

    def __init__(self) -> None:
        super().__init__()
        self.looked = threading.Condition()
        self.lookups = 0

    def get(self, key: str, default: Any = None) -> Any:
        with self.looked:
            self.lookups += 1
            self.looked.notify_all()
        return super().get(key, default)


def test_concurrent_first_requests_load_once() -> None:
    n = 16
    cache, loader = _cache(4)
    loading = cache._loading = _Watched()

    def gate() -> None:  # the load finishes only once every other caller is waiting on it
        with loading.looked:
            assert loading.looked.wait_for(lambda: loading.lookups >= n, timeout=60), loading.lookups

    loader.gate = gate
    threads = [threading.Thread(target=cache.acquire, args=([_spec("a")],)) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert loading.lookups == n  # every caller found the load in flight, or started it
    assert loader.calls == {"a": 1}
    assert cache.slot_writes == 1


def test_pinned_adapter_is_never_evicted() -> None:
    cache, _ = _cache(2)
    held = cache.acquire([_spec("a")])
    for name in "bcdef":
        slots = cache.acquire([_spec(name)])
        cache.release([_spec(name)])
        assert slots != held
    assert "a" in cache.resident()
    cache.acquire([_spec("x")])  # pins the other slot
    with pytest.raises(Overloaded, match="slots are in use"):
        cache.acquire([_spec("y")])
    assert cache.pinned() == {"a", "x"}


def test_slots_are_lru_and_none_maps_to_no_adapter() -> None:
    cache, _ = _cache(2)
    for name in ["a", "b", "a", "c"]:  # c evicts b, the least recently used
        cache.acquire([_spec(name)])
        cache.release([_spec(name)])
    assert cache.resident() == ["a", "c"]
    assert cache.acquire([None, _spec("a")])[0] == NO_ADAPTER
    with pytest.raises(Overloaded, match="3 adapters but only 2 slots"):
        cache.acquire([_spec("a"), _spec("b"), _spec("c")])


def test_slot_and_host_hits_misses_and_evictions_are_counted() -> None:
    """What /metrics exports as constellation_adapter_cache_{hits,misses,evictions}_total."""
    cache, _ = _cache(2)
    for name in ["a", "b", "a", "c", "b"]:  # c evicts b, then b evicts a
        cache.acquire([_spec(name)])
        cache.release([_spec(name)])
    assert cache.counts["adapter_hits"] == 1  # the second "a"
    assert cache.counts["adapter_misses"] == 4 and cache.counts["adapter_evictions"] == 2
    assert cache.counts["adapter_host_misses"] == 3 and cache.counts["adapter_host_hits"] == 1  # b again


def test_host_tier_evicts_lru_within_budget() -> None:
    one = LoadedAdapter(
        name="x", rank=2, scale=1.0, modules={"lin": LoRAWeights(torch.ones(2, 4), torch.ones(4, 2), 1.0)}
    )
    cache, loader = _cache(8, host_bytes=2 * one.nbytes)
    for name in ["a", "b", "c", "a"]:
        cache.prefetch(_spec(name))
    assert loader.calls == {"a": 2, "b": 1, "c": 1}  # a was evicted by c, then reloaded


def test_loads_peft_dir_and_refuses_pickle(tiny_bert: Path, tmp_path: Path) -> None:
    spec = make_adapter(tiny_bert, tmp_path / "ad", rank=4, seed=0)
    loaded = load_adapter(spec)
    assert loaded.rank == 4 and loaded.scale == 2.0
    assert "encoder.layer.0.attention.self.query" in loaded.modules
    (tmp_path / "ad" / "adapter_model.safetensors").rename(tmp_path / "ad" / "adapter_model.bin")
    with pytest.raises(InvalidInput, match="pickle"):
        load_adapter(spec)
