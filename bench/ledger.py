"""Ledger postings per second through the real path -- `Meter.record`: pricing, usage event,
balanced transaction and legs, group-committed -- on SQLite and on PostgreSQL.

Targets: >= 20,000/s on SQLite, >= 10,000/s on PostgreSQL (Lago publishes 10,000 events/s on
PostgreSQL alone, without a ledger). `--tiny` checks it runs in a few seconds.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import create_engine, text

from constellation.config import Settings
from constellation.economy import ledger
from constellation.economy.meter import Meter, UsageRecord
from constellation.platform import Platform
from constellation.registry import contributors, models, tenants, terms
from constellation.registry.tables import Artifact

PG_URL = os.environ.get("CONSTELLATION_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
TARGETS = {"sqlite": 20_000, "postgresql": 10_000}


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
    return UsageRecord(
        request_id=f"{run}-{i}", tenant_id="bench", model_name="m", idempotency_key=None,
        fingerprint="0" * 64,
        input_tokens=64, output_tokens=0, compute_ns=1_500_000, device_class="cpu", status="succeeded",
        started_at=t, finished_at=t, response=None,
    )  # fmt: skip


async def _drive(meter: Meter, n: int, concurrency: int) -> float:
    run = uuid.uuid4().hex[:8]
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with sem:
            await meter.record(_record(i, run))

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    return time.perf_counter() - t0


def _bench(url: str, n: int, concurrency: int) -> float:
    p = Platform(Settings(data_dir=Path(tempfile.mkdtemp()), db_url=url)).open()
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


def _pg_schema() -> str | None:
    try:
        eng = create_engine(PG_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
        schema = f"bench_{uuid.uuid4().hex[:8]}"
        with eng.connect() as c:
            c.execute(text(f'CREATE SCHEMA "{schema}"'))
        eng.dispose()
        return schema
    except Exception:
        return None


def _drop_schema(schema: str) -> None:
    eng = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with eng.connect() as c:
        c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    eng.dispose()


def main(tiny: bool = False) -> None:
    n, concurrency = (2_000, 256) if tiny else (100_000, 2048)
    rows = [("sqlite", f"sqlite:///{Path(tempfile.mkdtemp()) / 'bench.db'}")]
    schema = _pg_schema()
    if schema:
        sep = "&" if "?" in PG_URL else "?"
        rows.append(("postgresql", f"{PG_URL}{sep}options=-csearch_path%3D{schema}"))
    else:
        print(f"postgresql: skipped (not reachable at {PG_URL})")
    print(f"postings through Meter.record, {n} requests, {concurrency} in flight, group commit")
    try:
        for name, url in rows:
            rate = _bench(url, n, concurrency)
            target = TARGETS[name]
            verdict = "meets" if rate >= target else "BELOW"
            ratio = f"ratio {rate / target:.2f} ({verdict})"
            print(f"{name:>10}: {rate:>9,.0f} postings/s   target {target:,}/s   {ratio}")
    finally:
        if schema:
            _drop_schema(schema)


if __name__ == "__main__":
    main(tiny="--tiny" in sys.argv[1:])
