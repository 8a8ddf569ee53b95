"""The provider clients one server process holds: one `Upstream` per provider, made on first
use and replaced when the provider's configuration changes (the old one closed once idle)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx

from constellation.providers.client import Upstream, UpstreamConfig
from constellation.providers.secrets import SecretSource
from constellation.providers.tokens import TokenCounter


class Upstreams:
    def __init__(
        self,
        *,
        secrets_file: Path | None = None,
        tokenizer: Path | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.secrets = SecretSource(secrets_file)
        self.tokens = TokenCounter(tokenizer)
        self._transport = transport  # tests: a fake transport for every provider
        self._clients: dict[str, Upstream] = {}
        self._retired: list[Upstream] = []

    def get(self, cfg: UpstreamConfig) -> Upstream:
        client = self._clients.get(cfg.name)
        if client is not None and client.cfg == cfg:
            return client
        if client is not None:
            self._retired.append(client)  # requests in flight keep using it; closed with the pool
        client = Upstream(cfg, self.secrets, transport=self._transport)
        self._clients[cfg.name] = client
        return client

    def stats(self) -> dict[str, dict[str, Any]]:
        return {
            name: {"circuit": c.breaker.state, "failures": c.breaker.failures}
            for name, c in self._clients.items()
        }

    async def aclose(self) -> None:
        clients = [*self._clients.values(), *self._retired]
        self._clients, self._retired = {}, []
        await asyncio.gather(*(c.aclose() for c in clients), return_exceptions=True)
