"""Scheduling: prefill and decode mix, cancellation frees at once, a full KV cache queues,
floods beyond capacity get Overloaded, attribution sums exactly to engine busy time."""

from __future__ import annotations

import asyncio
import time

import pytest
import torch

from constellation.config import EngineLimits
from constellation.engine.decoder.detokenizer import TextStream
from constellation.engine.decoder.engine import DecoderEngine
from constellation.engine.decoder.runner import load_runner
from constellation.engine.decoder.sampling import SamplingParams, make_generator
from constellation.engine.decoder.sequence import Seq
from constellation.errors import Overloaded

GREEDY = SamplingParams(max_tokens=20, temperature=0.0)


def _wait_idle(engine: DecoderEngine) -> dict[str, float]:
    """The loop frees sequences between steps; give it a moment (not a timing assertion: a
    generous bound, past which the engine has leaked a sequence or its blocks)."""
    for _ in range(1000):
        s = engine.stats()
        if s["running"] == 0 and s["queued"] == 0 and s["kv_free_blocks"] == s["kv_blocks"]:
            return s
        time.sleep(0.01)
    pytest.fail(f"the decoder engine did not go idle: {engine.stats()}")


def test_new_requests_join_between_decode_steps(families) -> None:
    fam = families["llama"]
    limits = EngineLimits(kv_cache_bytes=1 << 20, adapter_slots=4)
    runner = load_runner(fam.base, limits)
    engine_side = DecoderEngine(limits)
    try:
        preps = [
            engine_side.prepare(fam.base, None, prompt=p, params=GREEDY) for p in ("the cat sat", "a dog")
        ]
    finally:
        engine_side.close()
    seqs = [Seq(p, lambda d: None, TextStream(runner.tok, ()), make_generator(0)) for p in preps]
    runner.scheduler.waiting.push(seqs[0])
    runner.step()  # prefill of the first
    runner.step()  # first decode
    runner.scheduler.waiting.push(seqs[1])
    work = runner.scheduler.schedule()
    assert [(w.seq, w.n) for w in work] == [(seqs[0], 1), (seqs[1], len(preps[1].prompt_ids))]


def test_cancel_frees_the_sequence_at_once(families, limits_engine) -> None:
    engine = limits_engine()
    fam = families["mistral"]
    p = engine.prepare(fam.base, fam.adapters[0], prompt="the cat", params=SamplingParams(max_tokens=100))

    async def go() -> int:
        got = 0
        stream = engine.generate(p)
        async for _ in stream:
            got += 1
            if got == 2:
                break
        await stream.aclose()  # what a client disconnect does
        return got

    assert asyncio.run(go()) == 2
    stats = _wait_idle(engine)
    assert stats["running"] == 0
    assert stats["kv_free_blocks"] == stats["kv_blocks"]


def test_full_kv_cache_queues_and_answers_match(families, limits_engine, engine, run_all) -> None:
    fam = families["llama"]
    small = limits_engine(kv_cache_bytes=4 * 16 * 256)  # four 16-token blocks for this model
    prompts = [
        "the cat sat on a big old stone",
        "hello dog",
        "red blue green",
        "a",
        "sun and moon",
        "go home",
    ]
    adapters = [fam.adapters[i % 3] for i in range(len(prompts))]
    preps = [
        small.prepare(fam.base, a, prompt=t, params=GREEDY) for a, t in zip(adapters, prompts, strict=True)
    ]
    answers = run_all(small, preps)
    alone = [
        run_all(engine, [engine.prepare(fam.base, a, prompt=t, params=GREEDY)])[0]
        for a, t in zip(adapters, prompts, strict=True)
    ]
    assert [a.tokens for a in answers] == [a.tokens for a in alone]
    assert small.stats()["kv_blocks"] == 4


def test_flood_beyond_capacity_is_queued_or_overloaded(families, limits_engine) -> None:
    engine = limits_engine(max_queue=32, max_decode_seqs=8)
    fam = families["gpt2"]
    params = SamplingParams(max_tokens=2, temperature=0.0)
    p = [engine.prepare(fam.base, fam.adapters[i % 3], prompt="cat", params=params) for i in range(1000)]

    async def one(prep) -> str:
        try:
            async for d in engine.generate(prep):
                last = d
            return str(last.finish_reason)
        except Overloaded as exc:
            assert exc.retry_after_s >= 1
            return "overloaded"

    async def go() -> list[str]:
        return list(await asyncio.gather(*(one(x) for x in p)))

    outcomes = asyncio.run(go())
    assert set(outcomes) <= {"length", "stop", "overloaded"}
    assert "overloaded" in outcomes
    assert len(outcomes) - outcomes.count("overloaded") >= 32
    stats = _wait_idle(engine)
    assert stats["queued"] == 0 and stats["running"] == 0


def test_attribution_sums_to_engine_busy_time(families, limits_engine, run_all) -> None:
    engine = limits_engine()
    fam = families["qwen2"]
    preps = [
        engine.prepare(
            fam.base, fam.adapters[i % 3] if i % 2 else None, prompt="the cat " * (i + 1), params=GREEDY
        )
        for i in range(6)
    ]
    answers = run_all(engine, preps)
    assert sum(a.final.compute_ns or 0 for a in answers) == engine.stats()["busy_ns"]


@pytest.mark.parametrize("seed", [0, 1])
def test_seed_is_reproducible_across_engines(seed: int, families, limits_engine, run_all) -> None:
    fam = families["gpt2"]
    params = SamplingParams(max_tokens=10, temperature=1.0, seed=seed)
    a, b = limits_engine(), limits_engine(max_batch_tokens=3)  # different chunking too
    runs = [
        run_all(e, [e.prepare(fam.base, fam.adapters[0], prompt="hello dog", params=params)])[0]
        for e in (a, b)
    ]
    assert runs[0].tokens == runs[1].tokens
    assert torch.tensor(runs[0].tokens).numel() == 10
