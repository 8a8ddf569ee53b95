"""The economy's tables: usage events (one per request, also the idempotency record), ledger
accounts with their running balance, transactions and their immutable legs.

Times are integer microseconds since the Unix epoch (UTC) so that raw batched inserts, period
filters and both dialects agree without any timezone conversion. Transaction ids are integers
handed out by `ledger.next_txn_ids` (legs are written before their transaction row).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from constellation.registry.tables import Base

ACCOUNT_KINDS = ("tenant", "contributor", "external")
TXN_KINDS = ("charge", "funding", "correction")
OPERATIONS = ("inference", "finetune")
USAGE_STATUSES = ("succeeded", "failed", "cancelled")  # cancelled: dropped mid-stream, billed for output
# Balances and holds stay within +-2**62 nano-USD (4.6 billion USD): on SQLite an addition that
# overflows 64 bits silently becomes a float; this CHECK makes it a refused write instead.
BALANCE_BOUND = 2**62
ROLES = ("tenant", "infra", "provider", "base", "adapter", "data", "platform", "funding", "correction")
# SQLite only makes an INTEGER PRIMARY KEY the rowid; PostgreSQL gets 64 bits.
TxnId = BigInteger().with_variant(Integer(), "sqlite")


class LedgerAccount(Base):
    """`tenant:<id>`, `contributor:<id>` or `external:<name>`; `floor_nanos` is the lowest balance
    the account may reach (0 for prepaid, -limit for a spending limit, NULL for none)."""

    __tablename__ = "ledger_accounts"
    id: Mapped[str] = mapped_column(String(80), primary_key=True)
    kind: Mapped[str] = mapped_column(String(12))
    owner_id: Mapped[str] = mapped_column(String(64))
    balance_nanos: Mapped[int] = mapped_column(BigInteger, default=0)
    floor_nanos: Mapped[int | None] = mapped_column(BigInteger)
    held_nanos: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    __table_args__ = (
        CheckConstraint(f"kind IN {ACCOUNT_KINDS}", name="ck_account_kind"),
        CheckConstraint("floor_nanos IS NULL OR balance_nanos >= floor_nanos", name="ck_account_floor"),
        CheckConstraint(
            f"balance_nanos BETWEEN -{BALANCE_BOUND} AND {BALANCE_BOUND} "
            f"AND held_nanos BETWEEN 0 AND {BALANCE_BOUND}",
            name="ck_account_bounds",
        ),
    )


class LedgerHold(Base):
    """An admitted request's worst-case price, reserved against its account's balance until
    its charge is posted or `expires_us` passes; `LedgerAccount.held_nanos` is their sum."""

    __tablename__ = "ledger_holds"
    id: Mapped[str] = mapped_column(String(80), primary_key=True)  # the request id
    account_id: Mapped[str] = mapped_column(String(80))
    amount_nanos: Mapped[int] = mapped_column(BigInteger)
    expires_us: Mapped[int] = mapped_column(BigInteger)
    __table_args__ = (
        CheckConstraint("amount_nanos > 0", name="ck_hold_positive"),
        Index("ix_ledger_holds_account", "account_id", "expires_us"),
    )


class LedgerTransaction(Base):
    """A posted transaction. Inserted after its legs: the database checks that they balance."""

    __tablename__ = "ledger_transactions"
    id: Mapped[int] = mapped_column(TxnId, primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(String(12))
    tenant_id: Mapped[str | None] = mapped_column(String(64))
    created_us: Mapped[int] = mapped_column(BigInteger, index=True)
    memo: Mapped[str] = mapped_column(Text, default="")
    __table_args__ = (CheckConstraint(f"kind IN {TXN_KINDS}", name="ck_txn_kind"),)


class LedgerLeg(Base):
    """One signed amount on one account: positive credits it, negative debits it; `n` is its
    position within the transaction."""

    __tablename__ = "ledger_legs"
    txn_id: Mapped[int] = mapped_column(TxnId, primary_key=True, autoincrement=False)
    n: Mapped[int] = mapped_column(SmallInteger, primary_key=True, autoincrement=False)
    account_id: Mapped[str] = mapped_column(String(80))
    role: Mapped[str] = mapped_column(String(12))
    artifact: Mapped[str | None] = mapped_column(String(128))
    amount_nanos: Mapped[int] = mapped_column(BigInteger)
    __table_args__ = (
        # Deferred: legs are written before their transaction row, which seals them. SQLite only:
        # PostgreSQL's migration checks it with one deferred trigger per transaction instead.
        ForeignKeyConstraint(
            ["txn_id"], ["ledger_transactions.id"], deferrable=True, initially="DEFERRED", name="fk_leg_txn"
        ),
        Index("ix_ledger_legs_account", "account_id"),
        {"sqlite_with_rowid": False},
    )


class UsageEvent(Base):
    """One metered request, written once with its charge; also the idempotency record."""

    __tablename__ = "usage_events"
    request_id: Mapped[str] = mapped_column(String(80), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64))
    model_name: Mapped[str] = mapped_column(String(128))
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    fingerprint: Mapped[str] = mapped_column(String(64))
    lineage: Mapped[dict[str, Any]] = mapped_column(JSON)
    input_tokens: Mapped[int] = mapped_column(BigInteger)
    output_tokens: Mapped[int] = mapped_column(BigInteger)
    compute_ns: Mapped[int] = mapped_column(BigInteger)
    device_class: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(12))
    operation: Mapped[str] = mapped_column(String(12), default="inference", server_default="inference")
    started_us: Mapped[int] = mapped_column(BigInteger)
    finished_us: Mapped[int] = mapped_column(BigInteger)
    list_price_nanos: Mapped[int] = mapped_column(BigInteger)
    price_nanos: Mapped[int] = mapped_column(BigInteger)
    txn_id: Mapped[int | None] = mapped_column(TxnId, ForeignKey("ledger_transactions.id"), unique=True)
    bill: Mapped[dict[str, Any]] = mapped_column(JSON)
    response: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # kept only under an idempotency key
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key", name="uq_usage_idempotency"),
        CheckConstraint(f"status IN {USAGE_STATUSES}", name="ck_usage_status"),
        CheckConstraint("status != 'failed' OR price_nanos = 0", name="ck_usage_failed_free"),
        CheckConstraint(f"operation IN {OPERATIONS}", name="ck_usage_operation"),
        CheckConstraint("price_nanos >= 0 AND price_nanos <= list_price_nanos", name="ck_usage_price"),
        Index("ix_usage_tenant_time", "tenant_id", "finished_us"),
    )
