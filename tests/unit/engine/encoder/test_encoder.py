"""EncoderEngine against references: sentence-transformers on MiniLM, HF + PEFT merged on a tiny
BERT over adapter mixes and mixed ranks, classification heads, batch invariance, concurrency."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer

from constellation.config import EngineLimits
from constellation.engine.encoder.engine import EncoderEngine
from constellation.engine.model_cache import module_bytes
from constellation.engine.spec import AdapterSpec, BaseSpec
from constellation.errors import InvalidInput

from ..conftest import Reference, base_spec, make_adapter, normalized

TEXTS = [
    "The cat sat on the mat.",
    "A considerably longer sentence about serving many small fine-tuned models on one shared base.",
    "ok",
    "Embeddings map text to vectors; similar meanings land close together in that space.",
]
MIXES = ["identical", "distinct", "uniform", "skewed"]


def _assign(mix: str, n: int, adapters: list[AdapterSpec], rng: random.Random) -> list[AdapterSpec | None]:
    if mix == "identical":
        return [adapters[0]] * n
    if mix == "distinct":
        return [adapters[i % len(adapters)] for i in range(n)]
    if mix == "uniform":
        return [rng.choice([*adapters, None]) for _ in range(n)]
    weights = [1 / (k + 1) ** 1.5 for k in range(len(adapters))]
    return rng.choices(adapters, weights=weights, k=n)  # type: ignore[return-value]


@pytest.fixture(scope="module")
def adapters(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> list[AdapterSpec]:
    root = tmp_path_factory.mktemp("adapters")
    return [make_adapter(tiny_bert, root / f"a{i}", rank=[2, 4, 8][i % 3], seed=i) for i in range(20)]


def _run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


@pytest.mark.parametrize("deterministic", [True, False])
@pytest.mark.parametrize("prepacked", [True, False], ids=["prepacked", "blas"])
def test_minilm_equals_sentence_transformers(minilm_path: Path, deterministic: bool, prepacked: bool) -> None:
    engine = EncoderEngine(EngineLimits(deterministic=deterministic, prepacked_linears=prepacked))
    try:
        res = _run(engine.embed(base_spec(minilm_path, "minilm"), None, TEXTS))
    finally:
        engine.close()
    want = SentenceTransformer(str(minilm_path), device="cpu").encode(TEXTS)
    assert res.embeddings.dtype == np.float32
    np.testing.assert_allclose(res.embeddings, want, atol=1e-5, rtol=0)
    model = engine.model_cache.acquire(base_spec(minilm_path, "minilm"))
    assert res.tokens == [len(x) for x in model.tokenize(TEXTS, truncate=False)]
    prepacked_copy = sum(x.prepacked_bytes for x in model.layers.values())
    assert (prepacked_copy > 0) == (prepacked and not deterministic)  # deterministic mode keeps its own GEMMs
    plain = sum(t.numel() * t.element_size() for t in [*model.model.parameters(), *model.model.buffers()])
    assert model.nbytes == module_bytes(model.model) == plain + prepacked_copy  # counted in the budget


@pytest.mark.parametrize("mix", MIXES)
@pytest.mark.parametrize("ranks", ["same", "mixed"])
def test_adapters_equal_merged_peft(
    tiny_bert: Path, adapters: list[AdapterSpec], tiny_reference: Reference, mix: str, ranks: str
) -> None:
    candidates = adapters[:6] if ranks == "mixed" else adapters[0:18:3]  # every third has rank 2
    rng = random.Random(mix)
    assigned = _assign(mix, 16, candidates, rng)
    engine = EncoderEngine(EngineLimits(adapter_slots=8))

    async def go() -> list[np.ndarray]:
        calls = [engine.embed(base_spec(tiny_bert), a, [TEXTS[i % 4]]) for i, a in enumerate(assigned)]
        return [r.embeddings for r in await asyncio.gather(*calls)]

    try:
        got = _run(go())
    finally:
        engine.close()
    for i, (a, emb) in enumerate(zip(assigned, got, strict=True)):
        want = normalized(tiny_reference(a, [TEXTS[i % 4]])).numpy()
        np.testing.assert_allclose(emb, want, atol=1e-5, rtol=0)


def test_classification_head_equals_reference(
    tiny_bert: Path, tmp_path: Path, tiny_reference: Reference
) -> None:
    labels = ("neg", "neu", "pos")
    spec = make_adapter(tiny_bert, tmp_path / "clf", rank=4, seed=99, labels=labels)
    engine = EncoderEngine(EngineLimits())
    try:
        res = _run(engine.classify(base_spec(tiny_bert), spec, TEXTS))
    finally:
        engine.close()
    from safetensors.torch import load_file

    head = load_file(str(tmp_path / "clf" / "classifier_head.safetensors"))
    want = torch.softmax(tiny_reference(spec, TEXTS) @ head["weight"].t() + head["bias"], dim=-1)
    got = torch.tensor([[p[k] for k in labels] for p in res.probs])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert res.labels == [labels[i] for i in want.argmax(dim=1).tolist()]


def test_registry_labels_must_match_head(tiny_bert: Path, tmp_path: Path) -> None:
    spec = make_adapter(tiny_bert, tmp_path / "clf", rank=2, seed=1, labels=("a", "b"))
    wrong = AdapterSpec(name=spec.name, base="tiny", resolve=spec.resolve, labels=("b", "a"))
    engine = EncoderEngine(EngineLimits())
    try:
        with pytest.raises(InvalidInput, match="differ from its head"):
            _run(engine.classify(base_spec(tiny_bert), wrong, ["x"]))
    finally:
        engine.close()


@pytest.mark.parametrize("deterministic", [True, False])
def test_batch_invariance(tiny_bert: Path, adapters: list[AdapterSpec], deterministic: bool) -> None:
    """Deterministic mode: bitwise equal alone vs in a mixed batch of 64; default kernels: close."""
    rng = random.Random(7)
    assigned = _assign("uniform", 64, adapters[:8], rng)
    texts = [TEXTS[i % 4] + " " + "word " * rng.randrange(10) for i in range(64)]
    engine = EncoderEngine(EngineLimits(deterministic=deterministic, adapter_slots=8, max_batch_wait_ms=50))
    base = base_spec(tiny_bert)

    async def together() -> list[np.ndarray]:
        calls = [engine.embed(base, a, [t]) for a, t in zip(assigned, texts, strict=True)]
        return [r.embeddings for r in await asyncio.gather(*calls)]

    async def alone() -> list[np.ndarray]:
        return [(await engine.embed(base, a, [t])).embeddings for a, t in zip(assigned, texts, strict=True)]

    try:
        batched, single = _run(together()), _run(alone())
        assert engine.stats()["steps"] < 64 + 64  # the first pass really batched
    finally:
        engine.close()
    for b, s in zip(batched, single, strict=True):
        if deterministic:
            assert np.array_equal(b, s)
        else:
            np.testing.assert_allclose(b, s, atol=1e-5, rtol=0)


def test_200_concurrent_requests_over_20_adapters_with_4_slots(
    tiny_bert: Path, adapters: list[AdapterSpec], tiny_reference: Reference
) -> None:
    rng = random.Random(3)
    assigned = [rng.choice(adapters) for _ in range(200)]
    engine = EncoderEngine(EngineLimits(adapter_slots=4))
    base = base_spec(tiny_bert)

    async def go() -> list[np.ndarray]:
        calls = [engine.embed(base, a, [TEXTS[i % 4]]) for i, a in enumerate(assigned)]
        return [r.embeddings for r in await asyncio.gather(*calls)]

    try:
        got = _run(go())
        stats = engine.stats()
    finally:
        engine.close()
    refs = {(a.name, t): normalized(tiny_reference(a, [t])).numpy() for a in adapters for t in TEXTS}
    for i, (a, emb) in enumerate(zip(assigned, got, strict=True)):
        np.testing.assert_allclose(emb, refs[(a.name, TEXTS[i % 4])], atol=1e-5, rtol=0)
    assert stats["requests"] == 200
    # Every adapter use is a slot hit or miss; with 8 adapters over 4 slots, some were evicted.
    assert stats["adapter_hits"] + stats["adapter_misses"] >= len(adapters)
    assert stats["adapter_misses"] >= len(adapters) and stats["adapter_evictions"] >= len(adapters) - 4
    assert stats["queue_wait_ns"] > 0  # 200 rows queued behind each other's steps


def test_attribution_sums_to_busy_time(tiny_bert: Path, adapters: list[AdapterSpec]) -> None:
    engine = EncoderEngine(EngineLimits(adapter_slots=4, max_batch_wait_ms=20))
    base = base_spec(tiny_bert)

    async def go() -> list[int]:
        calls = [engine.embed(base, adapters[i % 5], TEXTS[: 1 + i % 4]) for i in range(30)]
        return [r.compute_ns for r in await asyncio.gather(*calls)]

    try:
        charged = _run(go())
        busy = engine.stats()["busy_ns"]
    finally:
        engine.close()
    assert all(ns > 0 for ns in charged)
    assert sum(charged) == busy


def test_bad_input_is_refused(tiny_bert: Path) -> None:
    engine = EncoderEngine(EngineLimits(max_items_per_request=3))
    base: BaseSpec = base_spec(tiny_bert)
    long_text = "word " * 100  # tiny BERT accepts 64 positions
    try:
        with pytest.raises(InvalidInput, match="empty"):
            _run(engine.embed(base, None, []))
        with pytest.raises(InvalidInput, match="empty"):
            _run(engine.embed(base, None, ["a", ""]))
        with pytest.raises(InvalidInput, match="at most 3"):
            _run(engine.embed(base, None, ["a"] * 4))
        with pytest.raises(InvalidInput, match=r"102 tokens.*at most 64.*truncate: true"):
            _run(engine.embed(base, None, [long_text]))
        res = _run(engine.embed(base, None, [long_text], truncate=True))
        assert res.tokens == [64]
    finally:
        engine.close()
