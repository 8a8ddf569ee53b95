"""ModelCache: MiniLM plus a tiny random BERT within a budget that forces LRU eviction."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from constellation.config import EngineLimits
from constellation.engine.encoder.model import EncoderModel
from constellation.engine.model_cache import ModelCache
from constellation.engine.spec import BaseSpec
from constellation.errors import Overloaded

from .conftest import base_spec


def test_lru_eviction_between_minilm_and_tiny(minilm_path: Path, tiny_bert: Path) -> None:
    limits = EngineLimits(adapter_slots=2)
    resolves: list[str] = []

    def load(spec):  # type: ignore[no-untyped-def]
        resolves.append(spec.name)
        return EncoderModel(spec, limits)

    minilm, tiny = base_spec(minilm_path, "minilm"), base_spec(tiny_bert, "tiny")
    sizes = {n: load(s).nbytes for n, s in [("minilm", minilm), ("tiny", tiny)]}
    resolves.clear()
    # Room for MiniLM or tiny alone, not both.
    budget = sizes["minilm"] + sizes["tiny"] - 1
    cache: ModelCache[EncoderModel] = ModelCache(budget, load, lambda m: m.nbytes)
    with cache.use(minilm):
        pass
    with cache.use(tiny):
        assert cache.loaded() == ["tiny"]
    with cache.use(minilm):
        assert cache.loaded() == ["minilm"]
    assert resolves == ["minilm", "tiny", "minilm"]  # every (re)load resolves the artifact
    assert cache.evictions == 2
    sized = BaseSpec(name="tiny", task="embedding", resolve=lambda: tiny_bert, size_bytes=sizes["tiny"])
    with cache.use(minilm), pytest.raises(Overloaded, match="no room"):
        cache.acquire(sized)  # MiniLM is in use: never evicted


def test_concurrent_first_uses_load_once(tiny_bert: Path) -> None:
    calls: list[str] = []

    def load(spec: BaseSpec) -> str:
        calls.append(spec.name)
        return spec.name

    cache: ModelCache[str] = ModelCache(10, load, lambda m: 1)
    spec = base_spec(tiny_bert, "tiny")
    threads = [
        threading.Thread(target=lambda: cache.release(spec.name) if cache.acquire(spec) else None)
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == ["tiny"]
