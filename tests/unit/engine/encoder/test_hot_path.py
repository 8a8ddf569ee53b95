"""The encoder's hot path: holding a base only if it is loaded (ModelCache.try_acquire), an
adapter only if it is in host memory (AdapterCache.in_host), the Rust tokenizer called directly,
inline tokenisation on the event loop, and the batcher's quiet rule."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from constellation.config import EngineLimits
from constellation.engine.encoder.engine import INLINE_CHARS, EncoderEngine
from constellation.engine.encoder.model import EncoderModel
from constellation.engine.lora.adapters import LoadedAdapter, LoRAWeights
from constellation.engine.lora.cache import AdapterCache
from constellation.engine.lora.layer import LoRAContext, MultiLoRALinear
from constellation.engine.model_cache import ModelCache
from constellation.engine.spec import AdapterSpec, BaseSpec
from constellation.errors import InvalidInput

from ..conftest import base_spec, make_adapter

LONG = "serving many small models on one shared base " * 20  # ~160 tokens; the tiny BERT takes 64


# -- ModelCache.try_acquire --------------------------------------------------------------------


def _cache(budget: int, load: list[str]) -> ModelCache[str]:
    """A cache of strings, one byte each, recording every load."""

    def loader(spec: BaseSpec) -> str:
        load.append(spec.name)
        return f"model:{spec.name}"

    return ModelCache(budget, loader, lambda m: 1)


def _spec(name: str) -> BaseSpec:
    return BaseSpec(name=name, task="embedding", resolve=lambda: Path("/nonexistent"), size_bytes=0)


def test_try_acquire_does_not_load() -> None:
    loads: list[str] = []
    cache = _cache(10, loads)
    assert cache.try_acquire(_spec("a")) is None
    assert loads == [] and cache.loaded() == [] and cache.loads == 0


def test_try_acquire_holds_a_loaded_base_against_eviction() -> None:
    loads: list[str] = []
    cache = _cache(1, loads)  # room for one base
    cache.acquire(_spec("a"))
    cache.release("a")
    assert cache.try_acquire(_spec("a")) == "model:a"
    with cache.use(_spec("b")):  # over budget, but "a" is held
        assert cache.loaded() == ["a", "b"]
    assert cache.evictions == 0
    cache.release("a")
    with cache.use(_spec("c")):  # no longer held: evicted
        assert "a" not in cache.loaded()
    assert loads == ["a", "b", "c"] and cache.evictions == 2


def test_try_acquire_refreshes_lru_order() -> None:
    cache = _cache(2, [])
    for name in "ab":
        cache.acquire(_spec(name))
        cache.release(name)
    assert cache.try_acquire(_spec("a")) == "model:a"
    cache.release("a")
    with cache.use(_spec("c")):  # evicts the least recently used: b, not a
        assert cache.loaded() == ["a", "c"]


def test_try_acquire_is_none_while_loading() -> None:
    started, go = threading.Event(), threading.Event()

    def slow(spec: BaseSpec) -> str:
        started.set()
        go.wait(5)
        return spec.name

    cache: ModelCache[str] = ModelCache(10, slow, lambda m: 1)
    t = threading.Thread(target=cache.acquire, args=(_spec("a"),))
    t.start()
    try:
        assert started.wait(5)
        assert cache.try_acquire(_spec("a")) is None
    finally:
        go.set()
        t.join(5)
    assert cache.try_acquire(_spec("a")) == "a"


# -- AdapterCache.in_host -----------------------------------------------------------------------


def _adapter_cache(host_bytes: int = 10**9) -> tuple[AdapterCache, dict[str, int]]:
    calls: dict[str, int] = {}

    def loader(spec: AdapterSpec) -> LoadedAdapter:
        calls[spec.name] = calls.get(spec.name, 0) + 1
        w = LoRAWeights(A=torch.ones(2, 4), B=torch.ones(4, 2), scale=1.0)
        return LoadedAdapter(name=spec.name, rank=2, scale=1.0, modules={"lin": w})

    layer = MultiLoRALinear(nn.Linear(4, 4), LoRAContext(2), 2, 4)
    return AdapterCache({"lin": layer}, 2, host_bytes, loader=loader), calls


def _aspec(name: str) -> AdapterSpec:
    return AdapterSpec(name=name, base="b", resolve=lambda: Path("/nonexistent"))


def test_in_host_never_loads() -> None:
    cache, calls = _adapter_cache()
    assert cache.in_host(_aspec("a")) is None
    assert calls == {} and cache.loads == 0
    loaded = cache.prefetch(_aspec("a"))
    assert cache.in_host(_aspec("a")) is loaded
    assert cache.in_host(_aspec("a")) is loaded
    assert calls == {"a": 1}


def test_in_host_refreshes_lru_order() -> None:
    one = LoadedAdapter(
        name="x", rank=2, scale=1.0, modules={"lin": LoRAWeights(torch.ones(2, 4), torch.ones(4, 2), 1.0)}
    )
    cache, calls = _adapter_cache(host_bytes=2 * one.nbytes)
    cache.prefetch(_aspec("a"))
    cache.prefetch(_aspec("b"))
    assert cache.in_host(_aspec("a")) is not None
    cache.prefetch(_aspec("c"))  # evicts b, the least recently used
    assert cache.in_host(_aspec("a")) is not None
    assert cache.in_host(_aspec("b")) is None
    assert calls == {"a": 1, "b": 1, "c": 1}


# -- EncoderModel.tokenize ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tiny_bert: Path) -> EncoderModel:
    return EncoderModel(base_spec(tiny_bert), EngineLimits(adapter_slots=2))


def _hf(model: EncoderModel, texts: list[str]) -> list[list[int]]:
    return [list(x) for x in model.tokenizer(texts, add_special_tokens=True)["input_ids"]]


@pytest.mark.parametrize("path", ["rust", "wrapper"])
@pytest.mark.parametrize(
    "texts", [["The cat sat on the mat."], ["ok", "A longer sentence, with punctuation!", "naïve café"]]
)
def test_tokenize_equals_the_hf_tokenizer(
    tiny_model: EncoderModel, texts: list[str], path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert tiny_model._fast is not None  # the tiny BERT's tokenizer is a fast one
    if path == "wrapper":
        monkeypatch.setattr(tiny_model, "_fast", None)
    ids = tiny_model.tokenize(texts, truncate=False)
    assert ids == _hf(tiny_model, texts)
    assert all(type(row) is list for row in ids)


def test_tokenize_refuses_or_truncates_too_long(tiny_model: EncoderModel) -> None:
    full = _hf(tiny_model, [LONG])[0]
    n = tiny_model.max_length
    assert len(full) > n
    with pytest.raises(InvalidInput, match=rf"input\[1\] has {len(full)} tokens .* at most {n}"):
        tiny_model.tokenize(["short", LONG], truncate=False)
    with pytest.raises(InvalidInput, match="truncate"):
        tiny_model.tokenize([LONG], truncate=False)
    short, cut = tiny_model.tokenize(["short", LONG], truncate=True)
    assert short == _hf(tiny_model, ["short"])[0]
    assert len(cut) == n and cut == full[: n - 1] + full[-1:]
    assert cut[-1] == full[-1] == tiny_model.tokenizer.sep_token_id


def test_hf_wrapper_still_truncates_after_load(tiny_bert: Path) -> None:
    model = EncoderModel(base_spec(tiny_bert), EngineLimits(adapter_slots=2))
    row = model.tokenizer([LONG], truncation=True, max_length=8)["input_ids"][0]
    assert len(row) == 8 and row[-1] == model.tokenizer.sep_token_id


def test_hf_wrapper_truncation_does_not_leak_into_tokenize(tiny_bert: Path) -> None:
    model = EncoderModel(base_spec(tiny_bert), EngineLimits(adapter_slots=2))
    model.tokenizer([LONG], truncation=True, max_length=8)
    with pytest.raises(InvalidInput):
        model.tokenize([LONG], truncate=False)


# -- EncoderEngine._tokenize_inline --------------------------------------------------------------


@pytest.fixture
def engine() -> Iterator[EncoderEngine]:
    e = EncoderEngine(EngineLimits(adapter_slots=2))
    yield e
    e.close()


def test_tokenize_inline_needs_the_base_loaded(engine: EncoderEngine, tiny_bert: Path) -> None:
    base, texts = base_spec(tiny_bert), ["The cat sat on the mat.", "ok"]
    assert engine._tokenize_inline(base, None, texts, False, "embed") is None
    assert engine.model_cache.loaded() == [] and engine.model_cache.loads == 0
    want = engine._tokenize(base, None, texts, False, "embed")  # loads it
    assert engine._tokenize_inline(base, None, texts, False, "embed") == want
    assert want[0] == engine.model_cache.acquire(base).tokenize(texts, truncate=False)
    engine.model_cache.release(base.name)
    assert engine.model_cache.loads == 1


def test_tokenize_inline_releases_the_base(tiny_bert: Path) -> None:
    engine = EncoderEngine(EngineLimits(adapter_slots=2, base_model_bytes=1))  # room for one idle base
    try:
        base = base_spec(tiny_bert)
        engine._tokenize(base, None, ["x"], False, "embed")
        assert engine._tokenize_inline(base, None, ["x"], False, "embed") is not None
        with pytest.raises(InvalidInput):
            engine._tokenize_inline(base, None, [LONG], False, "embed")  # refused, and released
        engine._tokenize(base_spec(tiny_bert, "other"), None, ["x"], False, "embed")
        assert engine.model_cache.loaded() == ["other"]  # "tiny" was idle, so evicted
    finally:
        engine.close()


def test_tokenize_inline_hops_for_long_text(engine: EncoderEngine, tiny_bert: Path) -> None:
    base = base_spec(tiny_bert)
    engine._tokenize(base, None, ["x"], False, "embed")
    at_limit = "a" * INLINE_CHARS
    assert engine._tokenize_inline(base, None, [at_limit], True, "embed") is not None
    assert engine._tokenize_inline(base, None, [at_limit + "a"], True, "embed") is None
    halves = ["a" * (INLINE_CHARS // 2 + 1)] * 2  # each short, together over the limit
    assert engine._tokenize_inline(base, None, halves, True, "embed") is None


def test_tokenize_inline_needs_the_adapter_in_host(
    engine: EncoderEngine, tiny_bert: Path, tmp_path: Path
) -> None:
    base, adapter = base_spec(tiny_bert), make_adapter(tiny_bert, tmp_path / "ad", rank=2, seed=0)
    engine._tokenize(base, None, ["x"], False, "embed")
    assert engine._tokenize_inline(base, adapter, ["x"], False, "embed") is None
    model = engine.model_cache.acquire(base)
    engine.model_cache.release(base.name)
    assert model.adapters.loads == 0  # the inline path never loads an adapter
    want = engine._tokenize(base, adapter, ["x"], False, "embed")
    assert engine._tokenize_inline(base, adapter, ["x"], False, "embed") == want
    assert model.adapters.loads == 1


# -- MicroBatcher quiet rule ---------------------------------------------------------------------


def test_step_starts_once_arrivals_go_quiet(tiny_bert: Path) -> None:
    """Max wait a minute, quiet 0: a lone request runs at once, not after the max wait."""
    engine = EncoderEngine(EngineLimits(max_batch_wait_ms=60_000, batch_quiet_ms=0))
    try:
        res = asyncio.run(asyncio.wait_for(engine.embed(base_spec(tiny_bert), None, ["hello"]), timeout=30))
    finally:
        engine.close()
    assert res.embeddings.shape == (1, 32) and res.tokens == [3]
    assert engine.stats()["steps"] == 1
