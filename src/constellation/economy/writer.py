"""Group commit: one thread drains every posting queued while the previous commit ran and
writes them all -- usage events, balanced transactions, legs, balances -- in one transaction.

One statement per table per batch: a multi-row INSERT on SQLite, COPY on PostgreSQL (rows
formatted in C; the same triggers fire); account balances are then summed from the batch's
legs by the database. A batch that fails is retried one posting at a time so one bad posting
fails only itself; callers are woken once per batch, not once per posting.

The writer is the one serial step, so it does as little Python as it can: each bill -- the
split a response carries and its JSON for the usage row -- is made by the caller's thread
(`bill_of`), and the writer only numbers transactions and lays out rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Any, TypeVar

from constellation.economy.bill import Bill, bill_of
from constellation.economy.ledger import next_txn_ids, now_us, tenant_account
from constellation.economy.pricing import Leg
from constellation.errors import Conflict
from constellation.registry.db import Database

T = TypeVar("T")

log = logging.getLogger("constellation.economy")
PLATFORM_ACCOUNT = "platform"  # a contributor id: the operator's own account


Hit = tuple[str, Bill]  # (fingerprint, bill) of a usage event already stored


@dataclass(slots=True)
class Posting:
    """A priced usage event waiting to be written; `fut` gets its bill once committed.
    `bill` and `bill_json` are the uncapped charge's (`bill_of`); the writer remakes them only
    when a prepaid balance or spending limit caps the charge."""

    request_id: str
    tenant_id: str
    idempotency_key: str | None
    fingerprint: str
    list_price: int
    legs: list[Leg]  # contributors' shares; `account` is a contributor id
    usage_row: tuple[Any, ...]  # model .. finished_us, see USAGE_COLS
    response_json: str | None
    fut: asyncio.Future[Bill]
    bill: Bill
    bill_json: str
    hold: bool = False  # release the hold `Meter.admit` took under this request id


LEG_COLS = ("txn_id", "n", "account_id", "role", "artifact", "amount_nanos")
TXN_COLS = ("id", "kind", "tenant_id", "created_us", "memo")
USAGE_COLS = (
    "request_id", "tenant_id", "idempotency_key", "fingerprint", "model_name", "lineage",
    "input_tokens", "output_tokens", "compute_ns", "device_class", "status", "operation", "started_us",
    "finished_us", "list_price_nanos", "price_nanos", "txn_id", "bill", "response",
)  # fmt: skip


SQLITE_MAX_PARAMS = 32_766  # SQLITE_MAX_VARIABLE_NUMBER's default since SQLite 3.32


def _sqlite_insert(table: str, cols: Sequence[str]) -> str:
    """A multi-row INSERT head; `_many` appends one `(?, ...)` group per row."""
    return f"INSERT INTO {table} ({', '.join(cols)}) VALUES "


def _pg_copy(table: str, cols: Sequence[str]) -> str:
    """COPY, not INSERT: rows are formatted in C, and it fires the same triggers."""
    return f"COPY {table} ({', '.join(cols)}) FROM STDIN"


PRIOR = "SELECT u.request_id, u.tenant_id, u.idempotency_key, u.fingerprint, u.bill FROM"
SQLITE = {
    "prior": f"{PRIOR} usage_events u WHERE u.request_id IN ({{rids}}) UNION ALL "
    f"{PRIOR} (VALUES {{pairs}}) k CROSS JOIN usage_events u "
    "ON u.tenant_id = k.column1 AND u.idempotency_key = k.column2",
    "legs": _sqlite_insert("ledger_legs", LEG_COLS),
    "txns": _sqlite_insert("ledger_transactions", TXN_COLS),
    "usage": _sqlite_insert("usage_events", USAGE_COLS),
    # The batch's transaction ids are one range (`next_txn_ids`), so its legs are one range scan.
    "balances": "UPDATE ledger_accounts SET balance_nanos = balance_nanos + d.total FROM "
    "(SELECT account_id, SUM(amount_nanos) AS total FROM ledger_legs WHERE txn_id BETWEEN ?1 AND ?2 "
    "GROUP BY account_id) d WHERE ledger_accounts.id = d.account_id",
    "accounts": "INSERT INTO ledger_accounts (id, kind, owner_id, balance_nanos) VALUES (?, ?, ?, 0) "
    "ON CONFLICT DO NOTHING",
    "release": "UPDATE ledger_accounts SET held_nanos = held_nanos - d.total FROM "
    "(SELECT account_id, SUM(amount_nanos) AS total FROM ledger_holds WHERE id IN ({ids}) "
    "GROUP BY account_id) d WHERE ledger_accounts.id = d.account_id",
    "unhold": "DELETE FROM ledger_holds WHERE id IN ({ids})",
}
PG = {
    "prior": f"{PRIOR} usage_events u WHERE u.request_id = ANY(%b::text[]) UNION ALL "
    f"{PRIOR} unnest(%b::text[], %b::text[]) AS k(tenant_id, key) "
    "JOIN usage_events u ON u.tenant_id = k.tenant_id AND u.idempotency_key = k.key",
    "legs": _pg_copy("ledger_legs", LEG_COLS),
    "txns": _pg_copy("ledger_transactions", TXN_COLS),
    "usage": _pg_copy("usage_events", USAGE_COLS),
    "balances": "UPDATE ledger_accounts a SET balance_nanos = a.balance_nanos + d.total FROM "
    "(SELECT account_id, SUM(amount_nanos) AS total FROM ledger_legs WHERE txn_id = ANY(%b::bigint[]) "
    "GROUP BY account_id) d WHERE a.id = d.account_id",
    "accounts": "INSERT INTO ledger_accounts (id, kind, owner_id, balance_nanos) "
    "SELECT * , 0 FROM unnest(%b::text[], %b::text[], %b::text[]) ON CONFLICT DO NOTHING",
    "release": "UPDATE ledger_accounts a SET held_nanos = a.held_nanos - d.total FROM "
    "(SELECT account_id, SUM(amount_nanos) AS total FROM ledger_holds WHERE id = ANY(%s) "
    "GROUP BY account_id) d WHERE a.id = d.account_id",
    "unhold": "DELETE FROM ledger_holds WHERE id = ANY(%s)",
}


@dataclass(slots=True)
class Rows:
    """One batch's rows, per table."""

    legs: list[tuple[Any, ...]] = field(default_factory=list)
    txns: list[tuple[Any, ...]] = field(default_factory=list)
    usage: list[tuple[Any, ...]] = field(default_factory=list)


class PostingWriter:
    """The single writer thread of one process; `submit` is thread-safe and never blocks."""

    def __init__(self, db: Database, *, max_batch: int = 2000) -> None:
        self._pg = not db.is_sqlite
        self._conn = db.engine.raw_connection()
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[Posting | None] = queue.SimpleQueue()
        self._accounts: set[str] = set()
        self.postings = 0  # committed charges and usage events, for /metrics
        self.written_off_nanos = 0
        self._thread = threading.Thread(target=self._run, name="ledger-writer", daemon=True)
        self._thread.start()

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
            batch, stop = take_batch(self._queue, first, self._max_batch)
            self._process(batch)
            if stop:
                return

    def _process(self, batch: list[Posting]) -> None:
        try:
            bills = self._write(batch)
        except Exception as exc:
            self._conn.rollback()
            if len(batch) == 1:
                self._release_alone(batch[0])
                _wake([(batch[0].fut, None, exc)])
                return
            log.warning("ledger batch of %d failed (%s); retrying one by one", len(batch), exc)
            for p in batch:
                self._process([p])
            return
        _wake([(p.fut, bill, None) for p, bill in zip(batch, bills, strict=True)])

    def _write(self, batch: list[Posting]) -> list[Bill | None]:
        cur = self._conn.cursor()
        try:
            if not self._pg:  # take the write lock now: ids are allocated from MAX(id)
                cur.execute("BEGIN IMMEDIATE")
            out, fresh = self._dedup(batch, self._prior(cur, batch))
            # Every hold of the batch, a duplicate's too: only fresh postings are written.
            self._release(cur, [p.request_id for p in batch if p.hold])
            new_accounts = self._insert(cur, fresh)
            self._conn.commit()
            self._accounts.update(new_accounts)
            self.postings += len(fresh)
            self.written_off_nanos += sum(p.bill.written_off_nanos for p in fresh)
        finally:
            cur.close()
        return [o.bill if isinstance(o, Posting) else o for o in out]

    def _dedup(
        self, batch: list[Posting], prior: dict[tuple[str, str], Hit]
    ) -> tuple[list[Posting | Bill], list[Posting]]:
        """Each posting's outcome: itself (to write) or the bill of the first with its key."""
        fresh: dict[tuple[str, str], Posting] = {}
        out: list[Posting | Bill] = []
        for p in batch:
            key = (p.tenant_id, p.idempotency_key) if p.idempotency_key else ("rid", p.request_id)
            hit = prior.get(key) or prior.get(("rid", p.request_id)) if prior else None
            if hit is not None:
                _check_same(p, hit[0])
                out.append(hit[1])
            elif key in fresh:
                _check_same(p, fresh[key].fingerprint)
                out.append(fresh[key])
            else:
                fresh[key] = p
                out.append(p)
        return out, list(fresh.values())

    def _prior(self, cur: Any, batch: Sequence[Posting]) -> dict[tuple[str, str], Hit]:
        """Usage events already stored for this batch's request ids or idempotency keys.

        Two index lookups, not one `OR`: an `OR` across two columns, the key's index led by
        `tenant_id`, is a scan of every usage event ever written, once per batch."""
        rids = [p.request_id for p in batch]
        keys = sorted({(p.tenant_id, p.idempotency_key) for p in batch if p.idempotency_key})
        if self._pg:
            tids, kids = [t for t, _ in keys], [k for _, k in keys]
            cur.execute(PG["prior"], (rids, tids, kids))
        else:
            pairs = ", ".join(["(?, ?)"] * len(keys)) or "(NULL, NULL)"
            sql = SQLITE["prior"].format(rids=_marks(rids), pairs=pairs)
            cur.execute(sql, [*rids, *chain.from_iterable(keys)])
        found: dict[tuple[str, str], Hit] = {}
        for rid, tid, key, fp, bill in cur.fetchall():
            entry = (fp, Bill.from_dict(bill if isinstance(bill, dict) else json.loads(bill)))
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
        splits = [_cap(p, room) for p in postings] if room else [p.legs for p in postings]
        ids = next_txn_ids(cur, sum(1 for s in splits if s), pg=self._pg)
        rows, created, next_id = Rows(), now_us(), iter(ids).__next__
        for p, split in zip(postings, splits, strict=True):
            self._rows(rows, p, split, next_id() if split else None, created)
        # Legs before their transaction rows: inserting a transaction row checks and seals its legs.
        self._many(cur, "legs", rows.legs)
        self._many(cur, "txns", rows.txns)
        self._many(cur, "usage", rows.usage)
        if not ids:
            return opened
        if self._pg:  # balances from the legs just written, summed by the database
            cur.execute(PG["balances"], (list(ids),))
        else:  # SQLite's ids are one range: `next_txn_ids` holds the write lock
            cur.execute(SQLITE["balances"], (ids[0], ids[-1]))
        return opened

    def _rows(self, rows: Rows, p: Posting, split: list[Leg], txn_id: int | None, created: int) -> None:
        """Append one posting's rows: its transaction and legs if charged, its usage event. The
        hot loop of the writer."""
        price, bill_json = p.list_price, p.bill_json
        if split is not p.legs:  # capped by a balance or limit: the platform wrote off the rest
            price = sum(g.amount_nanos for g in split)
            p.bill, bill_json = bill_of(p.request_id, price, split, p.list_price - price)
        if txn_id is not None:
            rows.txns.append((txn_id, "charge", p.tenant_id, created, ""))
            legs = rows.legs
            legs.append((txn_id, 0, "tenant:" + p.tenant_id, "tenant", None, -price))
            legs += [(txn_id, n, "contributor:" + a, r, f, x) for n, (a, r, f, x) in enumerate(split, 1)]
        head = (p.request_id, p.tenant_id, p.idempotency_key, p.fingerprint)
        rows.usage.append((*head, *p.usage_row, p.list_price, price, txn_id, bill_json, p.response_json))

    def _many(self, cur: Any, what: str, rows: list[tuple[Any, ...]]) -> None:
        if not rows:
            return
        if self._pg and what == "accounts":  # one statement, one array per column
            cur.execute(PG[what], [list(c) for c in zip(*rows, strict=True)])
        elif self._pg:
            with cur.copy(PG[what]) as copy:
                for r in rows:
                    copy.write_row(r)
        elif what == "accounts":  # a handful of rows
            cur.executemany(SQLITE[what], rows)
        else:  # multi-row VALUES: one statement (and one GIL release) per few thousand rows
            group = f"({', '.join('?' for _ in rows[0])})"
            step = SQLITE_MAX_PARAMS // len(rows[0])
            for i in range(0, len(rows), step):
                chunk = rows[i : i + step]
                cur.execute(SQLITE[what] + ", ".join([group] * len(chunk)), list(chain.from_iterable(chunk)))

    def _open_accounts(self, cur: Any, postings: list[Posting]) -> list[str]:
        wanted = {"tenant:" + t for t in {p.tenant_id for p in postings}} | {
            "contributor:" + PLATFORM_ACCOUNT
        }
        wanted |= {"contributor:" + c for c in {g.account for p in postings for g in p.legs}}
        new = sorted(wanted - self._accounts)
        if new:
            self._many(cur, "accounts", [(a, *a.split(":", 1)) for a in new])
        return new

    def _release_alone(self, p: Posting) -> None:
        """A posting that cannot be written (a reused idempotency key, say) still frees its hold."""
        if not p.hold:
            return
        cur = self._conn.cursor()
        try:
            self._release(cur, [p.request_id])
            self._conn.commit()
        except Exception as exc:  # the hold expires by itself (holds.HOLD_TTL_S)
            self._conn.rollback()
            log.warning("could not release the hold of %s (%s); it will expire", p.request_id, exc)
        finally:
            cur.close()

    def _release(self, cur: Any, hold_ids: list[str]) -> None:
        """Release the holds these postings took at admission, in the transaction that charges them."""
        if not hold_ids:
            return
        if self._pg:
            cur.execute(PG["release"], (hold_ids,))
            cur.execute(PG["unhold"], (hold_ids,))
        else:
            for what in ("release", "unhold"):
                cur.execute(SQLITE[what].format(ids=_marks(hold_ids)), hold_ids)

    def _room(self, cur: Any, accounts: set[str]) -> dict[str, int]:
        """How much each floored account may still be charged without touching what other requests
        in flight hold, locked until commit on PostgreSQL."""
        if not accounts:
            return {}
        ids = sorted(accounts)
        cols = "SELECT id, balance_nanos, floor_nanos, held_nanos FROM ledger_accounts"
        if self._pg:
            cur.execute(f"{cols} WHERE id = ANY(%s) AND floor_nanos IS NOT NULL FOR UPDATE", (ids,))
        else:
            cur.execute(f"{cols} WHERE id IN ({_marks(ids)}) AND floor_nanos IS NOT NULL", ids)
        return {a: max(0, int(b) - int(f) - int(h)) for a, b, f, h in cur.fetchall()}


Outcome = tuple[asyncio.Future[Bill], Bill | None, BaseException | None]


def _wake(results: list[Outcome]) -> None:
    """Settle futures with one thread-safe call per event loop (one wake-up, not one per posting)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[Outcome]] = {}
    for r in results:
        by_loop.setdefault(r[0].get_loop(), []).append(r)
    for loop, items in by_loop.items():
        with contextlib.suppress(RuntimeError):  # a closed loop: the postings are committed anyway
            loop.call_soon_threadsafe(_settle, items)


def _settle(items: list[Outcome]) -> None:
    for fut, bill, error in items:
        if fut.done():  # the caller went away; the posting is committed all the same
            continue
        if error is not None:
            fut.set_exception(error)
        else:
            assert bill is not None
            fut.set_result(bill)


def _marks(values: Sequence[object]) -> str:
    return ", ".join("?" for _ in values)


def _check_same(p: Posting, fingerprint: str) -> None:
    if fingerprint != p.fingerprint:
        raise Conflict(
            f"the Idempotency-Key '{p.idempotency_key}' was already used with a different request body; "
            "use a new key for a new request"
        )


def _cap(p: Posting, room: dict[str, int]) -> list[Leg]:
    """The split actually charged: the tenant pays within its prepaid balance or spending limit,
    never past it; every contributor still gets its full leg, and what the tenant could not pay
    is written off against the platform (a `writeoff` leg), which admitted the request."""
    acct = tenant_account(p.tenant_id)
    if acct not in room or p.list_price <= room[acct]:
        if acct in room:
            room[acct] -= p.list_price
        return p.legs
    short = p.list_price - room[acct]
    room[acct] = 0
    return [*p.legs, Leg(PLATFORM_ACCOUNT, "writeoff", None, -short)]


def take_batch(
    q: queue.Queue[T | None] | queue.SimpleQueue[T | None], first: T, max_batch: int
) -> tuple[list[T], bool]:
    """`first` and whatever else is queued already, up to `max_batch` items: a group commit's
    batch. True when the queue's None (stop) was met: the caller commits the batch, then stops."""
    batch = [first]
    while len(batch) < max_batch:
        try:
            item = q.get_nowait()
        except queue.Empty:
            return batch, False
        if item is None:
            return batch, True
        batch.append(item)
    return batch, False
