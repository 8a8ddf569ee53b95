"""A dead encoder worker comes back: `kill -9` one of the real server's encoder worker processes
while requests are in flight. The requests it had get a 503 to retry (and are not charged),
/readyz says not ready until a new worker has taken its place, the server recovers by itself,
and the ledger verifies."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from sqlalchemy import func, select
from tests.e2e.conftest import Server, make_server

from constellation.economy import ledger
from constellation.economy.tables import LedgerTransaction, UsageEvent
from constellation.registry.db import Database

N, KILL_AFTER, BACKOFF_S = 300, 40, 2


@pytest.fixture
def srv(tmp_path: Path, minilm_path: Path) -> Iterator[Server]:
    env = {
        "CONSTELLATION_ENGINE__ENCODER_WORKERS": "2",
        "CONSTELLATION_ENGINE__RESPAWN_BACKOFF_S": str(BACKOFF_S),
    }
    s = make_server(tmp_path, env)
    s.cli("contributors", "add", "sbert", "--name", "SBERT")
    s.cli("models", "add", str(minilm_path), "--name", "minilm", "--task", "embedding", "--author", "sbert",
          "--license", "apache-2.0")  # fmt: skip
    s.start()
    yield s
    s.stop()


def _workers(srv: Server) -> list[int]:
    """Pids of the server's encoder worker processes (multiprocessing spawn children)."""
    assert srv.proc is not None
    kids = psutil.Process(srv.proc.pid).children()
    return sorted(p.pid for p in kids if "spawn_main" in " ".join(p.cmdline()))


def _embed(client: httpx.Client | httpx.AsyncClient, srv: Server, key: str):  # type: ignore[no-untyped-def]
    headers = {"Authorization": f"Bearer {srv.key}", "Idempotency-Key": key}
    return client.post(
        "/v1/embeddings", json={"model": "minilm", "input": f"sentence {key}"}, headers=headers
    )


async def _load_and_kill(srv: Server, victim: int) -> tuple[dict[str, int], dict[str, str], list[int]]:
    """N concurrent requests; once KILL_AFTER have succeeded, kill -9 `victim` and watch /readyz."""
    status: dict[str, int] = {}
    codes: dict[str, str] = {}
    ready: list[int] = []
    killed = asyncio.Event()
    async with httpx.AsyncClient(base_url=srv.url, timeout=120, limits=httpx.Limits(max_connections=32)) as c:

        async def one(key: str) -> None:
            r = await _embed(c, srv, key)
            status[key] = r.status_code
            if r.status_code != 200:
                codes[key] = r.json()["error"]["code"]
            elif sum(s == 200 for s in status.values()) == KILL_AFTER:
                os.kill(victim, signal.SIGKILL)
                killed.set()

        async def watch() -> None:  # on a connection of its own, not behind the queued requests
            await killed.wait()
            # Down for the backoff and the new worker's start at least; watched until seen down.
            deadline = time.monotonic() + 60
            async with httpx.AsyncClient(base_url=srv.url, timeout=10) as probe:
                while time.monotonic() < deadline and 503 not in ready:
                    with contextlib.suppress(httpx.HTTPError):
                        ready.append((await probe.get("/readyz")).status_code)
                    await asyncio.sleep(0.05)

        await asyncio.gather(watch(), *(one(f"req-{i:04d}") for i in range(N)))
    return status, codes, ready


@pytest.mark.slow
def test_kill_9_a_worker_under_load_then_the_server_recovers_by_itself(srv: Server) -> None:
    with httpx.Client(base_url=srv.url, timeout=120) as c:
        assert _embed(c, srv, "warm-up").status_code == 200
    before = _workers(srv)
    assert len(before) == 2, before
    status, codes, ready = asyncio.run(_load_and_kill(srv, before[0]))

    assert set(status.values()) <= {200, 503}, status
    assert set(codes.values()) <= {"engine_unavailable"}, codes  # its in-flight calls: retry them
    print(f"{len(codes)} of {N} got a 503; readyz while down: {ready}")
    assert 503 in ready  # not ready while the worker is down
    deadline = time.monotonic() + 120  # the new worker imports torch and loads MiniLM
    while httpx.get(f"{srv.url}/readyz", timeout=5).status_code != 200:
        assert time.monotonic() < deadline, "the server did not become ready again"
        time.sleep(0.2)
    after = _workers(srv)
    assert len(after) == 2 and before[0] not in after and before[1] in after

    with httpx.Client(base_url=srv.url, timeout=120) as c:  # new calls succeed, retries included
        retried = [_embed(c, srv, k).status_code for k, s in status.items() if s != 200]
        fresh = [_embed(c, srv, f"after-{i}").status_code for i in range(10)]
    assert set(retried) <= {200} and fresh == [200] * 10

    ok = sum(s == 200 for s in status.values()) + len(retried) + len(fresh) + 1  # + the warm-up
    db = Database(f"sqlite:///{srv.env['CONSTELLATION_DATA_DIR']}/constellation.db")
    try:
        with db.session() as s:
            succeeded = s.scalar(select(func.count()).where(UsageEvent.status == "succeeded"))
            charges = s.scalar(
                select(func.count()).select_from(LedgerTransaction).where(LedgerTransaction.kind == "charge")
            )
            assert succeeded == charges == ok  # the 503s were charged nothing
            assert ledger.verify(s) == []
    finally:
        db.close()
    srv.cli("ledger", "verify")
