"""RemoteEncoderEngine (the encoder engine in spawned worker processes) against the in-process
EncoderEngine: same embeddings, classes and errors across the pipe, many concurrent calls spread
over two workers, shutdown, dead workers respawned; the worker count; ArtifactOpener (the picklable
`resolve`); Engines' choice of engine."""

from __future__ import annotations

import asyncio
import pickle
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from constellation.api.engines import Engines
from constellation.artifacts.store import ArtifactOpener, ArtifactStore
from constellation.config import EngineLimits
from constellation.engine.encoder.engine import EncoderEngine
from constellation.engine.encoder.interface import EncodeResult
from constellation.engine.encoder.remote import (
    RemoteEncoderEngine,
    respawn_delay,
    worker_count,
    worker_threads,
)
from constellation.engine.spec import AdapterSpec, BaseSpec
from constellation.errors import ConstellationError, EngineUnavailable, InvalidInput, NotFound, Overloaded

from ..conftest import make_adapter

TEXTS = [
    "The cat sat on the mat.",
    "A considerably longer sentence about serving many small fine-tuned models on one shared base.",
    "ok",
    "Embeddings map text to vectors; similar meanings land close together in that space.",
]
LONG = "serving many small models on one shared base " * 20  # ~160 tokens; the tiny BERT takes 64
LABELS = ("neg", "neu", "pos")
GUARD_S = 60  # a hang fails the test instead of blocking the run


def _run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


# -- fixtures: specs whose `resolve` pickles, one engine of each kind for the module ---------


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> ArtifactStore:
    return ArtifactStore(tmp_path_factory.mktemp("store"))


@pytest.fixture(scope="module")
def base(store: ArtifactStore, tiny_bert: Path) -> BaseSpec:
    art = store.import_model_dir(tiny_bert)
    return BaseSpec(name="tiny", task="embedding", resolve=ArtifactOpener(store, art.digest))


def _stored_adapter(
    store: ArtifactStore, tiny_bert: Path, out: Path, *, seed: int, labels: tuple[str, ...] | None = None
) -> AdapterSpec:
    make_adapter(tiny_bert, out, rank=4, seed=seed, labels=labels)
    art = store.import_adapter_dir(out, base=tiny_bert)
    return AdapterSpec(name=out.name, base="tiny", resolve=ArtifactOpener(store, art.digest), labels=labels)


@pytest.fixture(scope="module")
def lora(store: ArtifactStore, tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> AdapterSpec:
    return _stored_adapter(store, tiny_bert, tmp_path_factory.mktemp("src") / "lora", seed=7)


@pytest.fixture(scope="module")
def classifier(
    store: ArtifactStore, tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory
) -> AdapterSpec:
    return _stored_adapter(store, tiny_bert, tmp_path_factory.mktemp("src") / "clf", seed=99, labels=LABELS)


@pytest.fixture(scope="module")
def local() -> Iterator[EncoderEngine]:
    engine = EncoderEngine(EngineLimits())
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def remote() -> Iterator[RemoteEncoderEngine]:
    engine = RemoteEncoderEngine(EngineLimits(encoder_workers=2))
    yield engine
    engine.close()


def _alone(engine: EncoderEngine, base: BaseSpec, adapter: AdapterSpec | None, text: str) -> EncodeResult:
    return _run(engine.embed(base, adapter, [text]))


def _same(got: np.ndarray, want: np.ndarray) -> None:
    """Equal to the last bits or so: each worker runs on one thread and the in-process engine on
    all of them, and the prepacked oneDNN GEMM may split a reduction by thread count."""
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)


# -- results ---------------------------------------------------------------------------------


@pytest.mark.parametrize("with_adapter", [False, True], ids=["base", "lora"])
def test_embed_equals_in_process(
    remote: RemoteEncoderEngine, local: EncoderEngine, base: BaseSpec, lora: AdapterSpec, with_adapter: bool
) -> None:
    adapter = lora if with_adapter else None
    for text in TEXTS[:2]:
        got = _run(remote.embed(base, adapter, [text]))
        want = _alone(local, base, adapter, text)
        assert got.embeddings.dtype == np.float32
        assert got.embeddings.shape == want.embeddings.shape == (1, 32)
        _same(got.embeddings, want.embeddings)
        assert got.tokens == want.tokens and got.tokens[0] > 2
        assert got.compute_ns > 0


def test_adapter_changes_the_embedding(
    remote: RemoteEncoderEngine, base: BaseSpec, lora: AdapterSpec
) -> None:
    """Guards the test above: the adapter does reach the child's forward pass."""
    plain = _run(remote.embed(base, None, TEXTS[:1])).embeddings
    adapted = _run(remote.embed(base, lora, TEXTS[:1])).embeddings
    assert not np.allclose(plain, adapted, atol=1e-3)


def test_several_texts_in_one_request(
    remote: RemoteEncoderEngine, local: EncoderEngine, base: BaseSpec
) -> None:
    got = _run(remote.embed(base, None, TEXTS))
    want = _run(local.embed(base, None, TEXTS))
    assert got.embeddings.shape == (len(TEXTS), 32)
    assert got.tokens == want.tokens
    _same(got.embeddings, want.embeddings)


def test_truncate_crosses(remote: RemoteEncoderEngine, local: EncoderEngine, base: BaseSpec) -> None:
    got = _run(remote.embed(base, None, [LONG], truncate=True))
    want = _run(local.embed(base, None, [LONG], truncate=True))
    assert got.tokens == want.tokens == [64]
    _same(got.embeddings, want.embeddings)


def test_classify_equals_in_process(
    remote: RemoteEncoderEngine, local: EncoderEngine, base: BaseSpec, classifier: AdapterSpec
) -> None:
    got = _run(remote.classify(base, classifier, TEXTS))
    want = _run(local.classify(base, classifier, TEXTS))
    assert got.labels == want.labels and set(got.labels) <= set(LABELS)
    assert got.tokens == want.tokens
    assert [list(p) for p in got.probs] == [list(LABELS)] * len(TEXTS)
    for g, w in zip(got.probs, want.probs, strict=True):
        assert g == pytest.approx(w, abs=1e-6)
        assert sum(g.values()) == pytest.approx(1.0, abs=1e-5)


# -- errors ----------------------------------------------------------------------------------


def _error(engine: EncoderEngine | RemoteEncoderEngine, coro_of) -> ConstellationError:  # type: ignore[no-untyped-def]
    async def go() -> ConstellationError:
        try:
            await asyncio.wait_for(coro_of(engine), GUARD_S)
        except ConstellationError as exc:
            return exc
        raise AssertionError("no error raised")

    return _run(go())


@pytest.mark.parametrize(
    "case", ["too_long", "empty_list", "empty_text", "missing_artifact"], ids=lambda c: str(c)
)
def test_errors_cross_as_the_same_class(
    remote: RemoteEncoderEngine, local: EncoderEngine, base: BaseSpec, store: ArtifactStore, case: str
) -> None:
    missing = BaseSpec(name="missing", task="embedding", resolve=ArtifactOpener(store, "0" * 64))
    calls = {
        "too_long": lambda e: e.embed(base, None, ["short", LONG]),
        "empty_list": lambda e: e.embed(base, None, []),
        "empty_text": lambda e: e.embed(base, None, ["x", ""]),
        "missing_artifact": lambda e: e.embed(missing, None, ["x"]),
    }
    got, want = _error(remote, calls[case]), _error(local, calls[case])
    assert type(got) is type(want)
    assert (got.message, got.param, got.code) == (want.message, want.param, want.code)
    if case == "missing_artifact":
        assert isinstance(got, NotFound)
    else:
        assert isinstance(got, InvalidInput) and got.param == "input"
    if case == "too_long":
        assert "input[1]" in got.message and "at most 64" in got.message


def test_engine_still_serves_after_errors(
    remote: RemoteEncoderEngine, local: EncoderEngine, base: BaseSpec
) -> None:
    with pytest.raises(InvalidInput):
        _run(remote.embed(base, None, []))
    got = _run(remote.embed(base, None, TEXTS[2:3]))
    _same(got.embeddings, _alone(local, base, None, TEXTS[2]).embeddings)


def test_unpicklable_spec_fails_instead_of_hanging(
    remote: RemoteEncoderEngine, base: BaseSpec, tiny_bert: Path
) -> None:
    closure = BaseSpec(name="closure", task="embedding", resolve=lambda: tiny_bert)

    async def go() -> tuple[BaseException | EncodeResult, ...]:
        calls = [remote.embed(closure, None, ["x"]), remote.embed(base, None, ["y"])]
        return tuple(await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 10))

    bad, good = _run(go())
    # Its own error, to the caller, at once (the command that cannot be pickled fails alone) ...
    assert type(bad) is ConstellationError and "cannot be sent to the encoder engine" in bad.message
    # ... and its neighbour in the same write is served.
    assert isinstance(good, EncodeResult) and good.embeddings.shape[0] == 1 and good.tokens[0] > 0


# -- stats and concurrency -------------------------------------------------------------------


def test_stats_follow_calls(remote: RemoteEncoderEngine, base: BaseSpec) -> None:
    before = remote.stats()
    _run(remote.embed(base, None, TEXTS[:1]))
    after = remote.stats()
    assert after, "no stats after a call"
    assert after["requests"] >= before.get("requests", 0) + 1
    assert after["steps"] > 0 and after["tokens"] > 0
    assert {"queue_depth", "base_loads"} <= set(after)
    assert after["base_loads"] >= 1
    assert remote.stats() is not remote.stats()  # a copy, safe to hand out


def test_many_concurrent_calls_get_their_own_results(
    remote: RemoteEncoderEngine, local: EncoderEngine, base: BaseSpec, lora: AdapterSpec
) -> None:
    adapters: list[AdapterSpec | None] = [None, lora]
    texts = [*TEXTS, "a", "b c d e f", "tiny", "one more text, somewhat longer than the last ones"]
    plan = [(adapters[i % 2], texts[(i * 3) % len(texts)]) for i in range(50)]
    want = {(a.name if a else "", t): _alone(local, base, a, t) for a, t in plan}
    steps_before = remote.stats().get("steps", 0)

    async def go() -> list[EncodeResult]:
        calls = [remote.embed(base, a, [t]) for a, t in plan]
        return await asyncio.wait_for(asyncio.gather(*calls), GUARD_S)

    served_before = [w.stats.get("requests", 0) for w in remote._workers]
    got = _run(go())
    assert len(got) == len(plan)
    for (a, t), r in zip(plan, got, strict=True):
        w = want[(a.name if a else "", t)]
        assert r.tokens == w.tokens
        np.testing.assert_allclose(r.embeddings, w.embeddings, atol=1e-5, rtol=0)
    assert remote.stats()["steps"] > steps_before
    # Calls made together spread over both workers (each goes to the least loaded one).
    served = [w.stats["requests"] - b for w, b in zip(remote._workers, served_before, strict=True)]
    assert min(served) >= len(plan) // 4 and sum(served) == len(plan), served
    assert all(w.inputs == 0 for w in remote._workers)  # nothing counted as outstanding


def test_calls_one_at_a_time_stay_on_the_first_worker(remote: RemoteEncoderEngine, base: BaseSpec) -> None:
    """With nothing outstanding the first worker takes the call: at low load one worker serves
    and the others load no models."""
    before = [w.stats.get("requests", 0) for w in remote._workers]
    for t in TEXTS:
        _run(remote.embed(base, None, [t]))
    after = [w.stats.get("requests", 0) for w in remote._workers]
    assert after[0] - before[0] == len(TEXTS) and after[1] == before[1]


def test_stats_sum_the_workers(remote: RemoteEncoderEngine) -> None:
    per_worker = [w.stats for w in remote._workers]
    total = remote.stats()
    assert total["requests"] == sum(s.get("requests", 0) for s in per_worker)
    assert total["workers"] == 2


@pytest.mark.parametrize(
    ("workers", "device", "cores", "want"),
    [(0, "cpu", 2, (2, 1)), (0, "cpu", 1, (1, 1)), (0, "cpu", 16, (4, 4)), (0, "cpu", 6, (4, 1)),
     (0, "cuda", 16, (1, 16)), (3, "cpu", 2, (3, 1)), (1, "cpu", 8, (1, 8))],
)  # fmt: skip
def test_worker_count_and_threads(workers: int, device: str, cores: int, want: tuple[int, int]) -> None:
    limits = EngineLimits(encoder_workers=workers, device=device)
    assert (worker_count(limits, cores), worker_threads(limits, cores)) == want


def test_calls_from_two_event_loops_at_once(
    remote: RemoteEncoderEngine, local: EncoderEngine, base: BaseSpec
) -> None:
    """Each reply settles on the loop that made the call (the server has one loop, tests several)."""
    import concurrent.futures

    async def batch(texts: list[str]) -> list[EncodeResult]:
        return await asyncio.wait_for(
            asyncio.gather(*(remote.embed(base, None, [t]) for t in texts)), GUARD_S
        )

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        futs = [pool.submit(_run, batch(TEXTS)), pool.submit(_run, batch(TEXTS[::-1]))]
        results = [f.result() for f in futs]
    for texts, got in zip([TEXTS, TEXTS[::-1]], results, strict=True):
        for t, r in zip(texts, got, strict=True):
            np.testing.assert_allclose(
                r.embeddings, _alone(local, base, None, t).embeddings, atol=1e-5, rtol=0
            )


# -- shutdown and a dead child ---------------------------------------------------------------


def test_closed_engine_refuses_calls(base: BaseSpec) -> None:
    engine = RemoteEncoderEngine(EngineLimits(encoder_workers=2))
    try:
        assert _run(engine.embed(base, None, ["hello"])).embeddings.shape == (1, 32)
    finally:
        engine.close()
    # Every worker left on its own, not by terminate().
    assert [w.proc.exitcode for w in engine._workers] == [0, 0]
    with pytest.raises(Overloaded, match="shutting down"):
        _run(asyncio.wait_for(engine.embed(base, None, ["hello"]), GUARD_S))
    engine.close()  # a second close is harmless


def _kill(worker) -> None:  # type: ignore[no-untyped-def]
    """kill -9 a worker and wait until the engine has seen it go (its reader has stopped)."""
    worker.proc.kill()
    worker.proc.join()
    worker.reader.join(GUARD_S)


def test_a_killed_worker_fails_its_calls_and_is_respawned(base: BaseSpec) -> None:
    engine = RemoteEncoderEngine(EngineLimits(encoder_workers=2, respawn_backoff_s=0))
    first, second = engine._workers
    try:
        _run(engine.embed(base, None, ["warm up"]))

        async def in_flight() -> list[BaseException | EncodeResult]:
            calls = [asyncio.ensure_future(engine.embed(base, None, [t])) for t in TEXTS * 5]
            await asyncio.sleep(0)  # let the calls go out on both pipes
            first.proc.kill()
            return await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), GUARD_S)

        outcomes = _run(in_flight())  # answered before the kill, or a 503 to retry: never a hang
        assert all(isinstance(o, EncodeResult | EngineUnavailable) for o in outcomes), outcomes
        assert all(
            o.status == 503 and o.retry_after_s >= 1 for o in outcomes if isinstance(o, EngineUnavailable)
        )
        assert sum(isinstance(o, EncodeResult) for o in outcomes) >= len(outcomes) // 2  # second's share
        first.proc.join()

        # A new process takes the dead one's place by itself, and both serve again.
        assert engine.wait_ready(GUARD_S)
        fresh = engine._workers[0]
        assert fresh is not first and fresh.proc.is_alive() and engine._workers[1] is second

        async def after() -> list[EncodeResult]:
            calls = [engine.embed(base, None, [t]) for t in TEXTS * 4]
            return await asyncio.wait_for(asyncio.gather(*calls), GUARD_S)

        assert all(r.embeddings.shape == (1, 32) for r in _run(after()))
        assert fresh.stats.get("requests", 0) > 0  # the new worker answered some of them
        stats = engine.stats()
        assert (stats["workers"], stats["respawns"]) == (2, 1)
        assert engine.unready() is None
    finally:
        engine.close()
    assert not any(w.proc.is_alive() for w in [first, *engine._workers])


def test_a_worker_down_makes_the_engines_unready_and_close_ends_the_backoff(base: BaseSpec) -> None:
    engines = Engines(EngineLimits(encoder_process=True, encoder_workers=2, respawn_backoff_s=600))
    engine = engines.encoder
    assert isinstance(engine, RemoteEncoderEngine)
    first, second = engine._workers
    try:
        assert engines.unready() is None
        _kill(first)
        assert "[0] of 2" in (engines.unready() or "")  # /readyz answers 503 with this
        assert _run(engine.embed(base, None, ["still served"])).embeddings.shape == (1, 32)
        _kill(second)
        with pytest.raises(EngineUnavailable, match="restarting") as exc:
            _run(asyncio.wait_for(engine.embed(base, None, ["hello"]), GUARD_S))
        assert exc.value.status == 503
        assert engine.stats()["workers"] == 0
    finally:
        engines.close()  # wakes the respawners out of their ten-minute backoff
    assert all(not t.is_alive() for t in engine._respawners)
    with pytest.raises(Overloaded, match="shutting down"):
        _run(engine.embed(base, None, ["hello"]))


@pytest.mark.parametrize(("deaths", "want"), [(1, 0.5), (2, 1.0), (3, 2.0), (8, 30.0)])
def test_respawn_backoff_doubles_up_to_its_maximum(deaths: int, want: float) -> None:
    assert respawn_delay(EngineLimits(respawn_backoff_s=0.5, respawn_max_s=30), deaths) == want


# -- ArtifactOpener and Engines --------------------------------------------------------------


def test_artifact_opener_pickles(tmp_path: Path, tiny_bert: Path) -> None:
    store = ArtifactStore(tmp_path / "store")
    art = store.import_model_dir(tiny_bert)
    opener = ArtifactOpener(store, art.digest)
    copy = pickle.loads(pickle.dumps(opener))
    assert isinstance(copy, ArtifactOpener)
    assert copy.digest == art.digest and copy.store.root == store.root
    assert copy() == opener() == art.path
    assert (copy() / "config.json").is_file()
    spec = pickle.loads(pickle.dumps(BaseSpec(name="tiny", task="embedding", resolve=opener)))
    assert spec.resolve() == art.path
    # It still verifies: a changed file in the store fails the copy's call, as the original's.
    weights = art.path / "model.safetensors"
    weights.chmod(0o644)
    weights.write_bytes(weights.read_bytes() + b"x")
    from constellation.errors import IntegrityError

    with pytest.raises(IntegrityError):
        copy()


def test_engines_pick_the_engine_by_limits() -> None:
    remote_engines = Engines(EngineLimits(encoder_process=True, encoder_workers=1))  # one process to start
    local_engines = Engines(EngineLimits())
    try:
        assert type(remote_engines.encoder) is RemoteEncoderEngine
        assert remote_engines.encoder is remote_engines.encoder  # built once
        assert type(local_engines.encoder) is EncoderEngine
        assert remote_engines.encoder.limits.encoder_process is True
    finally:
        remote_engines.close()
        local_engines.close()
    encoder = remote_engines.encoder
    assert isinstance(encoder, RemoteEncoderEngine)
    assert not any(w.proc.is_alive() for w in encoder._workers)
