"""Exactly-once billing across a crash: fire 500 concurrent embeddings requests with
idempotency keys at the real server, `kill -9` it mid-way, restart, retry every request.
Every request the client saw complete is charged once, nothing else is, the ledger verifies.
On SQLite always; on PostgreSQL too when CONSTELLATION_E2E_PG=1 (a fresh schema, ~1 min more)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select
from tests.e2e.conftest import Server, make_server

from constellation.economy import ledger
from constellation.economy.tables import LedgerTransaction, UsageEvent
from constellation.registry.db import Database

N, KILL_AFTER = 500, 150


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param(
            "postgresql",
            marks=pytest.mark.skipif(
                os.environ.get("CONSTELLATION_E2E_PG") != "1", reason="set CONSTELLATION_E2E_PG=1 to run"
            ),
        ),
    ]
)
def db_env(request: pytest.FixtureRequest) -> dict[str, str]:
    if request.param == "sqlite":
        return {}
    return {"CONSTELLATION_DB_URL": request.getfixturevalue("pg_url")}


@pytest.fixture
def crash_server(tmp_path: Path, minilm_path: Path, db_env: dict[str, str]) -> Server:
    srv = make_server(tmp_path, db_env)
    srv.cli("contributors", "add", "sbert", "--name", "SBERT")
    srv.cli("models", "add", str(minilm_path), "--name", "minilm", "--task", "embedding", "--author", "sbert",
            "--license", "apache-2.0")  # fmt: skip
    return srv


async def _fire(
    srv: Server,
    keys: list[str],
    seen: dict[str, dict],
    stop_after: int | None,
    errors: list[str] | None = None,
) -> None:
    headers = {"Authorization": f"Bearer {srv.key}"}
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(base_url=srv.url, timeout=120, limits=limits) as client:

        async def one(key: str) -> None:
            body = {"model": "minilm", "input": f"sentence number {key}"}
            with contextlib.suppress(httpx.HTTPError):
                r = await client.post(
                    "/v1/embeddings", json=body, headers={**headers, "Idempotency-Key": key}
                )
                if r.status_code == 200:
                    seen.setdefault(key, r.json()["constellation"])
                    if stop_after is not None and len(seen) == stop_after:
                        srv.stop(kill=True)  # SIGKILL: no shutdown hooks, in-flight work lost

        await asyncio.gather(*(one(k) for k in keys))


@pytest.mark.slow
def test_kill_9_mid_way_then_retry_charges_each_request_exactly_once(crash_server: Server) -> None:
    srv = crash_server
    keys = [f"req-{i:04d}" for i in range(N)]
    srv.start()
    before: dict[str, dict] = {}
    asyncio.run(_fire(srv, keys, before, KILL_AFTER))
    srv.stop(kill=True)
    assert KILL_AFTER <= len(before) < N
    srv.start()
    after: dict[str, dict] = {}
    errors: list[str] = []
    for _ in range(5):  # a client retries what was refused as overloaded (503 + Retry-After)
        asyncio.run(_fire(srv, [k for k in keys if k not in after], after, None, errors))
    srv.stop()
    assert set(after) == set(keys), errors[:5]
    for key, first in before.items():  # a retry of a completed request replays its first bill
        assert after[key]["request_id"] == first["request_id"]
        assert after[key]["price_nanos"] == first["price_nanos"]
    default = f"sqlite:///{srv.env['CONSTELLATION_DATA_DIR']}/constellation.db"
    db = Database(srv.env.get("CONSTELLATION_DB_URL", default))
    with db.session() as s:
        per_key = dict(
            s.execute(
                select(UsageEvent.idempotency_key, func.count())
                .where(UsageEvent.status == "succeeded")
                .group_by(UsageEvent.idempotency_key)
            ).all()
        )
        assert per_key == dict.fromkeys(keys, 1)
        charges = s.scalar(
            select(func.count()).select_from(LedgerTransaction).where(LedgerTransaction.kind == "charge")
        )
        assert charges == N
        assert ledger.verify(s) == []
    db.close()
