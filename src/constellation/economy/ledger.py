"""The double-entry ledger's slow-path verbs: open accounts, fund a tenant, set its spending
floor, read balances, post a manual transaction, and verify every invariant from the legs.

Charges are posted in batches by `economy.writer`; everything here is one transaction each.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from constellation.economy.money import MAX_BALANCE_NANOS, check_amount, usd
from constellation.economy.pricing import Leg
from constellation.economy.tables import LedgerAccount, LedgerLeg, LedgerTransaction, UsageEvent
from constellation.errors import InvalidInput
from constellation.registry.tenants import get_tenant

DEPOSITS = "external:deposits"


def tenant_account(tenant_id: str) -> str:
    return f"tenant:{tenant_id}"


def contributor_account(contributor_id: str) -> str:
    return f"contributor:{contributor_id}"


def now_us() -> int:
    return time.time_ns() // 1000


def next_txn_ids(cur: Any, n: int, *, pg: bool) -> Sequence[int]:
    """`n` fresh transaction ids, ascending. PostgreSQL: from a sequence. SQLite: after the highest
    id, which is safe because the caller already holds the database's single write lock."""
    if pg:
        cur.execute("SELECT nextval('ledger_txn_ids') FROM generate_series(1, %s)", (n,))
        return sorted(int(r[0]) for r in cur.fetchall())
    cur.execute("SELECT COALESCE(MAX(id), 0) FROM ledger_transactions")
    first = int(cur.fetchone()[0]) + 1
    return range(first, first + n)


def ensure_account(s: Session, account_id: str) -> LedgerAccount:
    acc = s.get(LedgerAccount, account_id)
    if acc is None:
        kind, _, owner = account_id.partition(":")
        acc = LedgerAccount(id=account_id, kind=kind, owner_id=owner, balance_nanos=0, floor_nanos=None)
        s.add(acc)
        s.flush()
    return acc


def post(s: Session, *, kind: str, legs: Sequence[Leg], tenant_id: str | None = None, memo: str = "") -> int:
    """Post one balanced transaction (funding or correction); legs' `account` are ledger ids."""
    if sum(leg.amount_nanos for leg in legs) != 0 or not legs:
        raise InvalidInput("a transaction's legs must sum to zero; add the balancing leg")
    for leg in legs:
        ensure_account(s, leg.account)
        # Balances first: on SQLite this write takes the write lock that `next_txn_ids` relies on.
        s.execute(
            update(LedgerAccount)
            .where(LedgerAccount.id == leg.account)
            .values(balance_nanos=LedgerAccount.balance_nanos + leg.amount_nanos)
        )
    cur = s.connection().connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        txn_id = next_txn_ids(cur, 1, pg=s.get_bind().dialect.name != "sqlite")[0]
    finally:
        cur.close()
    s.add_all(
        LedgerLeg(
            txn_id=txn_id,
            n=i,
            account_id=g.account,
            role=g.role,
            artifact=g.artifact,
            amount_nanos=g.amount_nanos,
        )
        for i, g in enumerate(legs)
    )
    s.flush()  # legs first: the transaction row seals them and the database checks the sum
    s.add(LedgerTransaction(id=txn_id, kind=kind, tenant_id=tenant_id, created_us=now_us(), memo=memo))
    s.flush()
    return txn_id


def fund(s: Session, *, tenant_id: str, amount_nanos: int, memo: str = "") -> int:
    """Add prepaid funds to a tenant (money in from outside); returns the new balance."""
    get_tenant(s, id=tenant_id)
    if amount_nanos <= 0:
        raise InvalidInput(
            "the amount to fund must be positive, e.g. `constellation tenants fund acme 25.00`"
        )
    check_amount(amount_nanos, param="amount_nanos")
    acct = tenant_account(tenant_id)
    if balance(s, account_id=acct) + amount_nanos > MAX_BALANCE_NANOS:
        raise InvalidInput(
            f"tenant '{tenant_id}' would then hold more than {usd(MAX_BALANCE_NANOS)} USD, the most a "
            "balance may hold; add less",
            param="amount_nanos",
        )
    post(
        s,
        kind="funding",
        tenant_id=tenant_id,
        memo=memo or "funds added",
        legs=[Leg(acct, "funding", None, amount_nanos), Leg(DEPOSITS, "funding", None, -amount_nanos)],
    )
    return balance(s, account_id=acct)


def set_limit(
    s: Session, *, tenant_id: str, prepaid: bool = False, spending_limit_nanos: int | None = None
) -> None:
    """Prepaid (balance may not go below zero), a spending limit (may owe up to the limit),
    or neither (unlimited, billed by invoice)."""
    get_tenant(s, id=tenant_id)
    if prepaid and spending_limit_nanos is not None:
        raise InvalidInput("choose either prepaid or a spending limit, not both")
    if spending_limit_nanos is not None:
        check_amount(spending_limit_nanos, param="spending_limit_nanos")
    acc = ensure_account(s, tenant_account(tenant_id))
    floor = 0 if prepaid else (-spending_limit_nanos if spending_limit_nanos is not None else None)
    if floor is not None and acc.balance_nanos < floor:
        raise InvalidInput(
            f"tenant '{tenant_id}' already has a balance of {acc.balance_nanos} nano-USD, below that floor; "
            "add funds first or choose a higher limit"
        )
    acc.floor_nanos = floor
    s.flush()


def balance(s: Session, *, account_id: str) -> int:
    acc = s.get(LedgerAccount, account_id)
    return acc.balance_nanos if acc else 0


def balances(s: Session) -> list[dict[str, object]]:
    rows = s.scalars(select(LedgerAccount).order_by(LedgerAccount.id))
    return [
        {"account": a.id, "kind": a.kind, "balance_nanos": a.balance_nanos, "floor_nanos": a.floor_nanos}
        for a in rows
    ]


def verify(s: Session) -> list[str]:
    """Every discrepancy found; an empty list means the books balance. Never raises for what it
    finds: sums too large for the database's integers (SQLite's SUM raises on overflow) are
    added up exactly in Python instead, and a balance that is not an integer is reported."""
    out: list[str] = []
    for check in (_unbalanced, _balances_drift, _usage_mismatch):
        try:
            out += check(s, _sql_sums)
        except DBAPIError as exc:
            if "overflow" not in str(exc.orig).lower():
                raise
            s.rollback()  # verify only reads: nothing of the caller's is lost
            out += check(s, _exact_sums)
    return out


Sums = Callable[[Session, Any, Any], dict[Any, int]]


def _sql_sums(s: Session, key: Any, amount: Any) -> dict[Any, int]:
    """`SUM(amount)` grouped by `key`, summed by the database."""
    return {k: int(v) for k, v in s.execute(select(key, func.sum(amount)).group_by(key))}


def _exact_sums(s: Session, key: Any, amount: Any) -> dict[Any, int]:
    """The same sums in Python's unbounded integers, streaming every row."""
    out: dict[Any, int] = {}
    for k, v in s.execute(select(key, amount).execution_options(yield_per=10_000)):
        out[k] = out.get(k, 0) + int(v)
    return out


def _unbalanced(s: Session, sums: Sums) -> list[str]:
    totals = sums(s, LedgerLeg.txn_id, LedgerLeg.amount_nanos)
    out = [f"transaction {t} legs sum to {total}, not zero" for t, total in totals.items() if total != 0]
    legless = select(LedgerTransaction.id).where(~LedgerTransaction.id.in_(select(LedgerLeg.txn_id)))
    out += [f"transaction {t} has no legs" for t in s.scalars(legless)]
    orphans = select(LedgerLeg.txn_id).where(~LedgerLeg.txn_id.in_(select(LedgerTransaction.id))).distinct()
    out += [f"legs of {t} have no transaction row" for t in s.scalars(orphans)]
    return out


def _balances_drift(s: Session, sums: Sums) -> list[str]:
    derived = sums(s, LedgerLeg.account_id, LedgerLeg.amount_nanos)
    out = []
    for acc in s.scalars(select(LedgerAccount)):
        want = int(derived.pop(acc.id, 0))
        if not isinstance(acc.balance_nanos, int):
            out.append(f"account {acc.id}: stored balance {acc.balance_nanos!r} is not an integer")
        elif acc.balance_nanos != want:
            out.append(f"account {acc.id}: stored balance {acc.balance_nanos} but its legs sum to {want}")
        if acc.floor_nanos is not None and want < acc.floor_nanos:
            out.append(f"account {acc.id}: balance {want} is below its floor {acc.floor_nanos}")
    out += [f"legs on {a} (sum {v}) but no account row" for a, v in derived.items()]
    return out


def _usage_mismatch(s: Session, _sums: Sums) -> list[str]:
    charged = {
        int(tid): -int(amount)
        for tid, amount in s.execute(
            select(LedgerLeg.txn_id, LedgerLeg.amount_nanos)
            .join(LedgerTransaction, LedgerLeg.txn_id == LedgerTransaction.id)
            .where(LedgerTransaction.kind == "charge", LedgerLeg.role == "tenant")
        )
    }  # one tenant leg per charge: no sum to overflow
    out = []
    for rid, txn_id, price in s.execute(
        select(UsageEvent.request_id, UsageEvent.txn_id, UsageEvent.price_nanos)
    ):
        if txn_id is None:
            if price != 0:
                out.append(f"usage event {rid} priced {price} has no charge transaction")
            continue
        got = charged.pop(txn_id, None)
        if got is None:
            out.append(f"usage event {rid} priced {price} names txn {txn_id}, which is not a charge")
        elif got != price:
            out.append(f"usage event {rid} priced {price} but charged {got} in txn {txn_id}")
    out += [f"charge transaction {t} has no usage event" for t in charged]
    return out
