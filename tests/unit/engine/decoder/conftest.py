"""Tiny random causal LMs of every family, PEFT adapters for them, and a decoder engine per family.

Built once per session under a temp dir with `save_pretrained`; nothing is downloaded.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from constellation.config import EngineLimits
from constellation.engine.decoder.engine import DecoderEngine
from constellation.engine.decoder.sequence import Delta, Prepared
from constellation.engine.spec import AdapterSpec, BaseSpec
from constellation.testing.toy_lm import save_random_adapter, save_random_lm

FAMILIES = ("llama", "mistral", "qwen2", "gpt2")
RANKS = (4, 8, 4)  # mixed ranks share one batch


@dataclass(frozen=True)
class Family:
    name: str
    path: Path
    base: BaseSpec
    adapters: tuple[AdapterSpec, ...]


def _const(path: Path) -> Callable[[], Path]:
    return lambda: path


def _spec(path: Path) -> BaseSpec:
    return BaseSpec(path.name, "causal-lm", resolve=_const(path))


@pytest.fixture(scope="session")
def families(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Family]:
    root = tmp_path_factory.mktemp("decoder-models")
    out = {}
    for i, name in enumerate(FAMILIES):
        path = save_random_lm(root / name, name, seed=i)
        adapters = []
        for j, rank in enumerate(RANKS):
            adir = save_random_adapter(path, root / f"{name}-a{j}", rank=rank, seed=10 * i + j)
            adapters.append(AdapterSpec(f"{name}-a{j}", name, resolve=_const(adir)))
        out[name] = Family(name, path, _spec(path), tuple(adapters))
    return out


def make_limits(**kw: Any) -> EngineLimits:
    return EngineLimits(**{"kv_cache_bytes": 1 << 20, "max_batch_tokens": 64, "adapter_slots": 4, **kw})


@pytest.fixture
def limits_engine() -> Iterator[Callable[..., DecoderEngine]]:
    """Engines with custom limits, closed after the test."""
    made: list[DecoderEngine] = []

    def make(**kw: Any) -> DecoderEngine:
        made.append(DecoderEngine(make_limits(**kw)))
        return made[-1]

    yield make
    for e in made:
        e.close()


@pytest.fixture(scope="session")
def engine() -> Iterator[DecoderEngine]:
    """One shared engine (every family's base in its pool) for tests that keep default limits."""
    shared = DecoderEngine(make_limits())
    yield shared
    shared.close()


@dataclass
class Answer:
    tokens: list[int]
    chunks: list[str]
    final: Delta

    @property
    def text(self) -> str:
        return "".join(self.chunks)


async def _collect(engine: DecoderEngine, prepared: Prepared) -> Answer:
    tokens: list[int] = []
    chunks: list[str] = []
    async for d in engine.generate(prepared):
        tokens += d.token_ids
        chunks.append(d.text)
    return Answer(tokens, chunks, d)


@pytest.fixture(scope="session")
def run_all() -> Callable[[DecoderEngine, list[Prepared]], list[Answer]]:
    """Submit every request at once (one event loop) and wait for all answers."""

    def run(engine: DecoderEngine, prepared: list[Prepared]) -> list[Answer]:
        async def go() -> list[Answer]:
            return list(await asyncio.gather(*(_collect(engine, p) for p in prepared)))

        return asyncio.run(go())

    return run
