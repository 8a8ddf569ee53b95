"""economy: usage events, ledger accounts, transactions and immutable, balanced legs

Revision ID: 0002
Revises: 0001

The database itself guards the ledger: legs cannot be updated or deleted, legs cannot be added
to a transaction once its row exists, a transaction row is refused unless its legs (written
before it) sum to zero, and no leg outlives its database transaction without a transaction row:
per row on SQLite (the last by a deferred foreign key), per statement over transition tables on
PostgreSQL (one query per batch instead of one trigger call per row). PostgreSQL checks the last
at commit with one deferred trigger per transaction, on its leg 0 (a leg n > 0 needs leg 0): a
deferred foreign key there checks and locks the transaction row once per leg.

Keys are integers so that every index insert of a group commit appends at the right of its
B-tree: transaction ids come from a sequence (PostgreSQL) or MAX(id) + 1 under the write lock
(SQLite); a leg's key is (transaction id, position), its table clustered on it where possible.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# SQLite only makes an INTEGER PRIMARY KEY the rowid; PostgreSQL gets 64 bits.
TXN_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

SQLITE_TRIGGERS = [
    """CREATE TRIGGER ledger_legs_no_update BEFORE UPDATE ON ledger_legs
    BEGIN SELECT RAISE(ABORT, 'ledger legs are immutable; post a correcting transaction instead'); END""",
    """CREATE TRIGGER ledger_legs_no_delete BEFORE DELETE ON ledger_legs
    BEGIN SELECT RAISE(ABORT, 'ledger legs are immutable; post a correcting transaction instead'); END""",
    """CREATE TRIGGER ledger_legs_sealed BEFORE INSERT ON ledger_legs
    WHEN EXISTS (SELECT 1 FROM ledger_transactions WHERE id = NEW.txn_id)
    BEGIN SELECT RAISE(ABORT, 'ledger transaction already posted; post a new transaction instead'); END""",
    """CREATE TRIGGER ledger_txn_balanced BEFORE INSERT ON ledger_transactions
    WHEN (SELECT COUNT(*) = 0 OR SUM(amount_nanos) != 0 FROM ledger_legs WHERE txn_id = NEW.id)
    BEGIN SELECT RAISE(ABORT, 'ledger transaction legs do not sum to zero'); END""",
    """CREATE TRIGGER ledger_txn_no_update BEFORE UPDATE ON ledger_transactions
    BEGIN SELECT RAISE(ABORT, 'ledger transactions are immutable; post a correcting transaction'); END""",
    """CREATE TRIGGER ledger_txn_no_delete BEFORE DELETE ON ledger_transactions
    BEGIN SELECT RAISE(ABORT, 'ledger transactions are immutable; post a correcting transaction'); END""",
]

PG_TRIGGERS = [
    """CREATE FUNCTION ledger_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN RAISE EXCEPTION 'ledger % are immutable; post a correcting transaction instead', TG_TABLE_NAME;
    END $$""",
    """CREATE TRIGGER ledger_legs_immutable BEFORE UPDATE OR DELETE OR TRUNCATE ON ledger_legs
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_immutable()""",
    """CREATE TRIGGER ledger_txn_immutable BEFORE UPDATE OR DELETE OR TRUNCATE ON ledger_transactions
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_immutable()""",
    """CREATE FUNCTION ledger_legs_sealed() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE posted bigint; headless bigint;
    BEGIN
      SELECT l.txn_id INTO posted FROM new_legs l JOIN ledger_transactions t ON t.id = l.txn_id LIMIT 1;
      IF posted IS NOT NULL THEN
        RAISE EXCEPTION 'ledger transaction % already posted; post a new transaction instead', posted;
      END IF;
      -- A scalar subquery, not NOT EXISTS: that becomes an anti-join, which stale statistics
      -- turn into a scan of every leg per new leg. This stays one primary-key probe per leg.
      SELECT l.txn_id INTO headless FROM new_legs l
      WHERE l.n > 0 AND (SELECT z.n FROM ledger_legs z WHERE z.txn_id = l.txn_id AND z.n = 0) IS NULL
      LIMIT 1;
      IF headless IS NOT NULL THEN
        RAISE EXCEPTION 'ledger transaction % has legs but no leg 0; number its legs from 0', headless;
      END IF;
      RETURN NULL;
    END $$""",
    """CREATE TRIGGER ledger_legs_sealed AFTER INSERT ON ledger_legs
    REFERENCING NEW TABLE AS new_legs FOR EACH STATEMENT EXECUTE FUNCTION ledger_legs_sealed()""",
    """CREATE FUNCTION ledger_legs_posted() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      PERFORM 1 FROM ledger_transactions WHERE id = NEW.txn_id;
      IF NOT FOUND THEN
        RAISE EXCEPTION 'ledger legs of transaction % have no transaction row; insert it before commit',
          NEW.txn_id;
      END IF;
      RETURN NULL;
    END $$""",
    """CREATE CONSTRAINT TRIGGER ledger_legs_posted AFTER INSERT ON ledger_legs
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (NEW.n = 0) EXECUTE FUNCTION ledger_legs_posted()""",
    """CREATE FUNCTION ledger_txns_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE bad bigint; total numeric; n bigint;
    BEGIN
      -- LATERAL: one primary-key range scan per new transaction; a plain join over a transition
      -- table (which has no statistics) lets the planner scan every leg ever written per batch.
      SELECT t.id, s.total, s.n INTO bad, total, n
      FROM new_txns t CROSS JOIN LATERAL (
        SELECT COALESCE(SUM(l.amount_nanos), 0) AS total, COUNT(*) AS n
        FROM ledger_legs l WHERE l.txn_id = t.id

      ) s
      WHERE s.n = 0 OR s.total <> 0 LIMIT 1;

      IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'ledger transaction % legs do not sum to zero (sum %, % legs)', bad, total, n;
      END IF;
      RETURN NULL;
    END $$""",
    """CREATE TRIGGER ledger_txns_balanced AFTER INSERT ON ledger_transactions
    REFERENCING NEW TABLE AS new_txns FOR EACH STATEMENT EXECUTE FUNCTION ledger_txns_balanced()""",
    "CREATE SEQUENCE ledger_txn_ids",
]


def upgrade() -> None:
    op.create_table(
        "ledger_accounts",
        sa.Column("id", sa.String(length=80), nullable=False),
        sa.Column("kind", sa.String(length=12), nullable=False),
        sa.Column("owner_id", sa.String(length=64), nullable=False),
        sa.Column("balance_nanos", sa.BigInteger(), nullable=False),
        sa.Column("floor_nanos", sa.BigInteger(), nullable=True),
        sa.CheckConstraint("kind IN ('tenant', 'contributor', 'external')", name="ck_account_kind"),
        sa.CheckConstraint("floor_nanos IS NULL OR balance_nanos >= floor_nanos", name="ck_account_floor"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "ledger_transactions",
        sa.Column("id", TXN_ID, autoincrement=False, nullable=False),
        sa.Column("kind", sa.String(length=12), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=True),
        sa.Column("created_us", sa.BigInteger(), nullable=False),
        sa.Column("memo", sa.Text(), nullable=False),
        sa.CheckConstraint("kind IN ('charge', 'funding', 'correction')", name="ck_txn_kind"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_ledger_transactions_created_us", "ledger_transactions", ["created_us"])
    op.create_table(
        "ledger_legs",
        sa.Column("txn_id", TXN_ID, nullable=False),
        sa.Column("n", sa.SmallInteger(), nullable=False),
        sa.Column("account_id", sa.String(length=80), nullable=False),
        sa.Column("role", sa.String(length=12), nullable=False),
        sa.Column("artifact", sa.String(length=128), nullable=True),
        sa.Column("amount_nanos", sa.BigInteger(), nullable=False),
        *_leg_txn_fk(),
        sa.PrimaryKeyConstraint("txn_id", "n"),
        sqlite_with_rowid=False,
    )
    op.create_index("ix_ledger_legs_account", "ledger_legs", ["account_id"])
    _usage_events()
    for ddl in SQLITE_TRIGGERS if op.get_bind().dialect.name == "sqlite" else PG_TRIGGERS:
        op.execute(ddl)


def _leg_txn_fk() -> list[sa.Constraint]:
    """SQLite's guard against legs without a transaction row; PostgreSQL has `ledger_legs_posted`."""
    if op.get_bind().dialect.name != "sqlite":
        return []
    return [
        sa.ForeignKeyConstraint(
            ["txn_id"], ["ledger_transactions.id"], name="fk_leg_txn", deferrable=True, initially="DEFERRED"
        )
    ]


def _usage_events() -> None:
    op.create_table(
        "usage_events",
        sa.Column("request_id", sa.String(length=80), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("model_name", sa.String(length=128), nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=True),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("lineage", sa.JSON(), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("compute_ns", sa.BigInteger(), nullable=False),
        sa.Column("device_class", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.Column("started_us", sa.BigInteger(), nullable=False),
        sa.Column("finished_us", sa.BigInteger(), nullable=False),
        sa.Column("list_price_nanos", sa.BigInteger(), nullable=False),
        sa.Column("price_nanos", sa.BigInteger(), nullable=False),
        sa.Column("txn_id", TXN_ID, nullable=True),
        sa.Column("bill", sa.JSON(), nullable=False),
        sa.Column("response", sa.JSON(), nullable=True),
        sa.CheckConstraint("status IN ('succeeded', 'failed')", name="ck_usage_status"),
        sa.CheckConstraint("status = 'succeeded' OR price_nanos = 0", name="ck_usage_failed_free"),
        sa.CheckConstraint("price_nanos >= 0 AND price_nanos <= list_price_nanos", name="ck_usage_price"),
        sa.ForeignKeyConstraint(["txn_id"], ["ledger_transactions.id"]),
        sa.PrimaryKeyConstraint("request_id"),
        sa.UniqueConstraint("tenant_id", "idempotency_key", name="uq_usage_idempotency"),
        sa.UniqueConstraint("txn_id"),
    )
    op.create_index("ix_usage_tenant_time", "usage_events", ["tenant_id", "finished_us"])


def downgrade() -> None:
    op.drop_table("usage_events")
    op.drop_table("ledger_legs")
    op.drop_table("ledger_transactions")
    op.drop_table("ledger_accounts")
    if op.get_bind().dialect.name == "postgresql":
        for fn in ("ledger_immutable", "ledger_legs_sealed", "ledger_legs_posted", "ledger_txns_balanced"):
            op.execute(f"DROP FUNCTION IF EXISTS {fn}()")
        op.execute("DROP SEQUENCE IF EXISTS ledger_txn_ids")
