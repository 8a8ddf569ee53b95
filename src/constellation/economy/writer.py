"""Group commit: one thread drains every posting queued while the previous commit ran and
writes them all -- usage events, balanced transactions, legs, balances -- in one transaction.

Raw DB-API `executemany` keeps the per-posting cost to a few microseconds; a batch that fails
is retried one posting at a time so that one bad posting fails only itself.
"""

from __future__ import annotations

import itertools
import json
import logging
import queue
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from constellation.economy.ledger import contributor_account, now_us, tenant_account
from constellation.economy.pricing import Leg, rescale
from constellation.errors import Conflict
from constellation.registry.db import Database

log = logging.getLogger("constellation.economy")

Done = Callable[[dict[str, Any] | None, BaseException | None], None]


@dataclass(slots=True)
class Posting:
    """A priced usage event waiting to be written; `done(bill, error)` runs after commit."""

    request_id: str
    tenant_id: str
    idempotency_key: str | None
    fingerprint: str
    list_price: int
    legs: list[Leg]  # contributors' shares; `account` is a contributor id
    usage_row: tuple[Any, ...]  # model .. finished_us, see USAGE_COLS
    response_json: str | None
    done: Done
    bill: dict[str, Any] = field(default_factory=dict)


USAGE_COLS = (
    "model_name, lineage, input_tokens, output_tokens, compute_ns, device_class, status, "
    "started_us, finished_us"
)
SQL = {
    "leg": "INSERT INTO ledger_legs (txn_id, account_id, role, artifact, amount_nanos) "
    "VALUES (?, ?, ?, ?, ?)",
    "txn": "INSERT INTO ledger_transactions (id, kind, request_id, tenant_id, created_us, memo) "
    "VALUES (?, 'charge', ?, ?, ?, '')",
    "usage": "INSERT INTO usage_events (request_id, tenant_id, idempotency_key, fingerprint, "
    f"{USAGE_COLS}, list_price_nanos, price_nanos, txn_id, bill, response) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    "account": "INSERT INTO ledger_accounts (id, kind, owner_id, balance_nanos) VALUES (?, ?, ?, 0) "
    "ON CONFLICT DO NOTHING",
    "balance": "UPDATE ledger_accounts SET balance_nanos = balance_nanos + ? WHERE id = ?",
}


class PostingWriter:
    """The single writer thread of one process; `submit` is thread-safe and never blocks."""

    def __init__(self, db: Database, *, max_batch: int = 1000) -> None:
        self._pg = not db.is_sqlite
        self._sql = {k: self._q(v) for k, v in SQL.items()}
        self._conn = db.engine.raw_connection()
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[Posting | None] = queue.SimpleQueue()
        self._accounts: set[str] = set()
        # Transaction ids: a random per-writer prefix plus a counter (uuid4 per posting costs more).
        self._txn_prefix = uuid.uuid4().hex[:12]
        self._txn_seq = itertools.count()
        self._thread = threading.Thread(target=self._run, name="ledger-writer", daemon=True)
        self._thread.start()

    def _q(self, sql: str) -> str:
        return sql.replace("?", "%s") if self._pg else sql

    def submit(self, posting: Posting) -> None:
        self._queue.put(posting)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        self._conn.close()

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch, stop = [first], False
            while len(batch) < self._max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            self._process(batch)
            if stop:
                return

    def _process(self, batch: list[Posting]) -> None:
        try:
            bills = self._write(batch)
        except Exception as exc:
            self._conn.rollback()
            if len(batch) == 1:
                batch[0].done(None, exc)
                return
            log.warning("ledger batch of %d failed (%s); retrying one by one", len(batch), exc)
            for p in batch:
                self._process([p])
            return
        for p, bill in zip(batch, bills, strict=True):
            p.done(bill, None)

    def _write(self, batch: list[Posting]) -> list[dict[str, Any]]:
        cur = self._conn.cursor()
        try:
            prior = self._prior(cur, batch)
            fresh: dict[tuple[str, str], Posting] = {}  # dedup key -> first posting in this batch
            out: list[Posting | dict[str, Any]] = []
            for p in batch:
                key = _dedup_key(p)
                hit = prior.get(key) or prior.get(("rid", p.request_id))
                if hit is not None:
                    out.append(_check_same(p, hit))
                elif key in fresh:
                    _check_same(p, (fresh[key].fingerprint, {}))
                    out.append(fresh[key])
                else:
                    fresh[key] = p
                    out.append(p)
            new_accounts = self._insert(cur, list(fresh.values()))
            self._conn.commit()
            self._accounts.update(new_accounts)
        finally:
            cur.close()
        return [o.bill if isinstance(o, Posting) else o for o in out]

    def _prior(self, cur: Any, batch: Sequence[Posting]) -> dict[tuple[str, str], tuple[str, dict[str, Any]]]:
        """Usage events already stored for this batch's request ids or idempotency keys."""
        rids = [p.request_id for p in batch]
        keys = sorted({p.idempotency_key for p in batch if p.idempotency_key})
        sql = (
            "SELECT request_id, tenant_id, idempotency_key, fingerprint, bill FROM usage_events "
            f"WHERE request_id IN ({_marks(rids)})"
        )
        if keys:
            sql += f" OR idempotency_key IN ({_marks(keys)})"
        cur.execute(self._q(sql), [*rids, *keys])
        found: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {}
        for rid, tid, key, fp, bill in cur.fetchall():
            entry = (fp, bill if isinstance(bill, dict) else json.loads(bill))
            found[("rid", rid)] = entry
            if key:
                found[(tid, key)] = entry
        return found

    def _insert(self, cur: Any, postings: list[Posting]) -> list[str]:
        """Write the postings; returns the accounts it opened (known only once committed)."""
        if not postings:
            return []
        opened = self._open_accounts(cur, postings)
        room = self._room(cur, {tenant_account(p.tenant_id) for p in postings if p.list_price > 0})
        legs: list[tuple[str, str, str, str | None, int]] = []
        txns: list[tuple[str, str, str, int]] = []
        usage: list[tuple[Any, ...]] = []
        deltas: dict[str, int] = {}
        created = now_us()
        for p in postings:
            acct = tenant_account(p.tenant_id)
            split = _cap(p, room, acct)
            price = sum(g.amount_nanos for g in split)
            txn_id = f"{self._txn_prefix}{next(self._txn_seq):x}" if price > 0 else None
            if txn_id is not None:
                txns.append((txn_id, p.request_id, p.tenant_id, created))
                legs.append((txn_id, acct, "tenant", None, -price))
                deltas[acct] = deltas.get(acct, 0) - price
                for g in split:
                    a = contributor_account(g.account)
                    legs.append((txn_id, a, g.role, g.artifact, g.amount_nanos))
                    deltas[a] = deltas.get(a, 0) + g.amount_nanos
            p.bill = _bill(p, price, split)
            head = (p.request_id, p.tenant_id, p.idempotency_key, p.fingerprint)
            tail = (p.list_price, price, txn_id, json.dumps(p.bill), p.response_json)
            usage.append((*head, *p.usage_row, *tail))
        # Legs before their transaction rows: inserting a transaction row checks and seals its legs.
        cur.executemany(self._sql["leg"], legs)
        cur.executemany(self._sql["txn"], txns)
        cur.executemany(self._sql["usage"], usage)
        cur.executemany(self._sql["balance"], [(d, a) for a, d in sorted(deltas.items()) if d])
        return opened

    def _open_accounts(self, cur: Any, postings: list[Posting]) -> list[str]:
        wanted = {tenant_account(p.tenant_id) for p in postings}
        wanted |= {contributor_account(g.account) for p in postings for g in p.legs}
        new = sorted(wanted - self._accounts)
        if new:
            cur.executemany(self._sql["account"], [(a, *a.split(":", 1)) for a in new])
        return new

    def _room(self, cur: Any, accounts: set[str]) -> dict[str, int]:
        """How much each floored account may still be charged, locked until commit on PostgreSQL."""
        if not accounts:
            return {}
        ids = sorted(accounts)
        sql = (
            "SELECT id, balance_nanos, floor_nanos FROM ledger_accounts "
            f"WHERE id IN ({_marks(ids)}) AND floor_nanos IS NOT NULL"
        )
        cur.execute(self._q(sql + (" FOR UPDATE" if self._pg else "")), ids)
        return {a: max(0, int(b) - int(f)) for a, b, f in cur.fetchall()}


def _marks(values: Sequence[object]) -> str:
    return ", ".join("?" for _ in values)


def _dedup_key(p: Posting) -> tuple[str, str]:
    return (p.tenant_id, p.idempotency_key) if p.idempotency_key else ("rid", p.request_id)


def _check_same(p: Posting, hit: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    if hit[0] != p.fingerprint:
        raise Conflict(
            f"the Idempotency-Key '{p.idempotency_key}' was already used with a different request body; "
            "use a new key for a new request"
        )
    return hit[1]


def _cap(p: Posting, room: dict[str, int], acct: str) -> list[Leg]:
    """The split actually charged: within a prepaid balance or spending limit, never past it."""
    if acct not in room:
        return p.legs
    split = rescale(p.legs, min(p.list_price, room[acct]))
    room[acct] -= sum(g.amount_nanos for g in split)
    return split


def _bill(p: Posting, price: int, split: list[Leg]) -> dict[str, Any]:
    bill: dict[str, Any] = {
        "request_id": p.request_id,
        "price_nanos": price,
        "split": [g.as_dict() for g in split],
    }
    if price < p.list_price:
        bill["written_off_nanos"] = p.list_price - price
    return bill
