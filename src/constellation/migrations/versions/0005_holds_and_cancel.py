"""holds, bounded balances, cancelled and fine-tune usage

Revision ID: 0005
Revises: 0002

- `ledger_holds`: each admitted request's worst-case price, reserved against its tenant's
  balance until its charge is posted (or the hold expires); `ledger_accounts.held_nanos` is
  their sum per account, so admission is one conditional UPDATE, atomic on both dialects.
- Balances and holds stay within +-2**62 nano-USD: on SQLite an integer addition that overflows
  silently becomes a float; the CHECK turns that into a refused write on both dialects.
- Usage events may be `cancelled` (a stream the client dropped: billed for what was produced)
  and carry an `operation`: `inference` or `finetune`.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0002"
branch_labels = None
depends_on = None

BOUND = 2**62


def upgrade() -> None:
    with op.batch_alter_table("ledger_accounts", recreate="always") as b:
        b.add_column(sa.Column("held_nanos", sa.BigInteger(), nullable=False, server_default="0"))
        b.create_check_constraint(
            "ck_account_bounds",
            f"balance_nanos BETWEEN -{BOUND} AND {BOUND} AND held_nanos BETWEEN 0 AND {BOUND}",
        )
    op.create_table(
        "ledger_holds",
        sa.Column("id", sa.String(length=80), nullable=False),
        sa.Column("account_id", sa.String(length=80), nullable=False),
        sa.Column("amount_nanos", sa.BigInteger(), nullable=False),
        sa.Column("expires_us", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("amount_nanos > 0", name="ck_hold_positive"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_ledger_holds_account", "ledger_holds", ["account_id", "expires_us"])
    with op.batch_alter_table("usage_events", recreate="always") as b:
        b.add_column(sa.Column("operation", sa.String(length=12), nullable=False, server_default="inference"))
        b.drop_constraint("ck_usage_status", type_="check")
        b.drop_constraint("ck_usage_failed_free", type_="check")
        b.create_check_constraint("ck_usage_status", "status IN ('succeeded', 'failed', 'cancelled')")
        b.create_check_constraint("ck_usage_failed_free", "status != 'failed' OR price_nanos = 0")
        b.create_check_constraint("ck_usage_operation", "operation IN ('inference', 'finetune')")


def downgrade() -> None:
    with op.batch_alter_table("usage_events", recreate="always") as b:
        b.drop_constraint("ck_usage_operation", type_="check")
        b.drop_constraint("ck_usage_failed_free", type_="check")
        b.drop_constraint("ck_usage_status", type_="check")
        b.create_check_constraint("ck_usage_status", "status IN ('succeeded', 'failed')")
        b.create_check_constraint("ck_usage_failed_free", "status = 'succeeded' OR price_nanos = 0")
        b.drop_column("operation")
    op.drop_index("ix_ledger_holds_account", table_name="ledger_holds")
    op.drop_table("ledger_holds")
    with op.batch_alter_table("ledger_accounts", recreate="always") as b:
        b.drop_constraint("ck_account_bounds", type_="check")
        b.drop_column("held_nanos")
