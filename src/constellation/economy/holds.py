"""Holds: each admitted request's worst-case price, reserved against its tenant's balance until
its charge is posted, so that concurrent requests cannot spend the same funds twice.

A hold is one conditional UPDATE of the account's `held_nanos` (taken only if the balance less
the floor and every hold still covers it) plus one row naming it; the writer releases it in the
transaction that posts the charge. A hold whose request never posts (a crashed process) expires
after HOLD_TTL_S and is swept the next time it would refuse a request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import CursorResult, delete, select, update
from sqlalchemy.orm import Session

from constellation.economy.ledger import now_us
from constellation.economy.tables import LedgerAccount, LedgerHold
from constellation.registry.db import Database

HOLD_TTL_S = 600  # an admitted request that never posts stops holding funds after this


@dataclass(frozen=True, slots=True)
class Reservation:
    held: bool  # the hold was taken
    balance: int
    floor: int | None  # None: the account has no floor, nothing to hold against
    held_nanos: int  # every hold on the account, this one included if taken


def reserve(db: Database, *, account_id: str, hold_id: str, amount_nanos: int) -> Reservation:
    """Hold `amount_nanos` on the account if it can still spend that much (once more after
    sweeping expired holds if not)."""
    with db.session() as s:
        r = _try(s, account_id, hold_id, amount_nanos)
        if r.held or r.floor is None or amount_nanos <= 0 or not _sweep(s, account_id):
            return r
        return _try(s, account_id, hold_id, amount_nanos)


def _try(s: Session, account_id: str, hold_id: str, amount: int) -> Reservation:
    a = LedgerAccount
    taken = False
    if amount > 0:
        res: CursorResult[Any] = s.execute(  # type: ignore[assignment]  # an UPDATE's result
            update(a)
            .where(
                a.id == account_id,
                a.floor_nanos.is_not(None),
                a.balance_nanos - a.held_nanos - amount >= a.floor_nanos,
            )
            .values(held_nanos=a.held_nanos + amount)
            .execution_options(synchronize_session=False)
        )
        taken = res.rowcount == 1
    if taken:
        expires = now_us() + HOLD_TTL_S * 1_000_000
        s.add(LedgerHold(id=hold_id, account_id=account_id, amount_nanos=amount, expires_us=expires))
        s.flush()
    row = s.execute(select(a.balance_nanos, a.floor_nanos, a.held_nanos).where(a.id == account_id)).first()
    if row is None:
        return Reservation(False, 0, None, 0)
    return Reservation(taken, int(row[0]), None if row[1] is None else int(row[1]), int(row[2]))


def _sweep(s: Session, account_id: str) -> bool:
    """Release the account's expired holds; True if there were any."""
    expired = s.execute(
        select(LedgerHold.id, LedgerHold.amount_nanos).where(
            LedgerHold.account_id == account_id, LedgerHold.expires_us < now_us()
        )
    ).all()
    if not expired:
        return False
    s.execute(delete(LedgerHold).where(LedgerHold.id.in_([r.id for r in expired])))
    s.execute(
        update(LedgerAccount)
        .where(LedgerAccount.id == account_id)
        .values(held_nanos=LedgerAccount.held_nanos - sum(r.amount_nanos for r in expired))
    )
    return True


def held(db: Database, *, account_id: str) -> int:
    """What the account's holds reserve now (for reports and tests)."""
    with db.session() as s:
        acc = s.get(LedgerAccount, account_id)
        return acc.held_nanos if acc else 0
