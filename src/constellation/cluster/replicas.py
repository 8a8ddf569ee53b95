"""What runs inside an engine replica: one `EncoderEngine` or `DecoderEngine`, tensors only,
called through a Ray Serve deployment handle (cluster/engines.py is the calling side).

Adapter affinity is Ray Serve's model multiplexing keyed by adapter name: a replica registers
each adapter it serves (`hold`), and the router then prefers it for that adapter's requests,
so that many adapters spread over replicas do not all thrash every replica's slots."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch
from ray import serve

from constellation.config import Settings
from constellation.runtime import tune_interpreter

if TYPE_CHECKING:
    from constellation.engine.decoder.sequence import Delta, Prepared
    from constellation.engine.decoder.structured import Constraint
    from constellation.engine.encoder.interface import ClassifyResult, EncodeResult
    from constellation.engine.spec import AdapterSpec, BaseSpec


def replica_settings(dump: dict[str, Any]) -> Settings:
    """The driver's settings as it sent them (validated, not re-read from this node's environment)."""
    return Settings.model_validate(dump)


class _Replica:
    """Shared set-up: threads per replica from its CPU share, the serving interpreter settings."""

    def __init__(self, dump: dict[str, Any]) -> None:
        self.settings = replica_settings(dump)
        torch.set_num_threads(max(1, int(self.settings.cluster.engine_cpus)))
        tune_interpreter(self.settings)

    async def _affinity(self, adapter: AdapterSpec | None) -> None:
        """Register the adapter with Ray Serve's multiplexing (the engine loads it itself)."""
        if adapter is not None:
            await self.hold(adapter.name)  # type: ignore[attr-defined]  # made by `deployment_class`


class EncoderReplica(_Replica):
    def __init__(self, dump: dict[str, Any]) -> None:
        super().__init__(dump)
        from constellation.engine.encoder.engine import EncoderEngine

        self.engine = EncoderEngine(self.settings.engine)

    async def embed(
        self, base: BaseSpec, adapter: AdapterSpec | None, texts: list[str], truncate: bool, tenant: str
    ) -> EncodeResult:
        await self._affinity(adapter)
        return await self.engine.embed(base, adapter, texts, truncate=truncate, tenant=tenant)

    async def classify(
        self, base: BaseSpec, adapter: AdapterSpec, texts: list[str], truncate: bool, tenant: str
    ) -> ClassifyResult:
        await self._affinity(adapter)
        return await self.engine.classify(base, adapter, texts, truncate=truncate, tenant=tenant)

    def stats(self) -> tuple[str, dict[str, float]]:
        return replica_id(), self.engine.stats()

    def __del__(self) -> None:
        self.engine.close()


class DecoderReplica(_Replica):
    def __init__(self, dump: dict[str, Any]) -> None:
        super().__init__(dump)
        from constellation.engine.decoder.engine import DecoderEngine

        self.engine = DecoderEngine(self.settings.engine)

    async def prepare(self, base: BaseSpec, adapter: AdapterSpec | None, kwargs: dict[str, Any]) -> Prepared:
        # Off the replica's event loop: tokenising would stall the streams it is serving.
        p = await asyncio.to_thread(self.engine.prepare, base, adapter, **kwargs)
        if p.grammar is None:
            return p
        # A compiled grammar cannot be pickled: it travels as its constraint, compiled again (from
        # the compiler's cache) by the replica that generates.
        return replace(p, grammar=Uncompiled(p.grammar.constraint))  # type: ignore[arg-type]

    async def generate(self, prepared: Prepared) -> AsyncIterator[Delta]:
        """The engine's stream; a caller that cancels it closes this generator, which frees the
        sequence at once (as a disconnecting client does in one process)."""
        await self._affinity(prepared.adapter)
        if prepared.grammar is not None:
            compiler = await asyncio.to_thread(self.engine.grammars, prepared.base)
            grammar = await asyncio.to_thread(compiler.compile, prepared.grammar.constraint)
            prepared = replace(prepared, grammar=grammar)
        async for d in self.engine.generate(prepared):
            yield d

    def stats(self) -> tuple[str, dict[str, float]]:
        return replica_id(), self.engine.stats()

    def __del__(self) -> None:
        self.engine.close()


@dataclass(frozen=True, slots=True)
class Uncompiled:
    """A request's grammar between replicas: the constraint it was compiled from."""

    constraint: Constraint


def replica_id() -> str:
    return str(serve.get_replica_context().replica_id.unique_id)


def deployment_class(cls: type[_Replica], adapters: int) -> type[_Replica]:
    """`cls` with its multiplexed `hold(adapter)`: Ray Serve's view of the adapters a replica
    serves, least recently used out past `adapters` (the replica's adapter slots)."""

    async def hold(self: _Replica, adapter: str) -> str:
        return adapter  # a token: the engine's own adapter cache holds the weights

    return type(
        cls.__name__,
        (cls,),
        {"hold": serve.multiplexed(max_num_models_per_replica=adapters)(hold), "__module__": __name__},
    )
