"""licence acceptances: tenants' explicit acceptance of flow-down use restrictions

Revision ID: 0003
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "licence_acceptances",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("licence_id", sa.String(length=64), nullable=False),
        sa.Column("restrictions", sa.JSON(), nullable=False),
        sa.Column("key_id", sa.String(length=16), nullable=True),
        sa.Column("via", sa.String(length=10), nullable=False),
        sa.Column("accepted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("withdrawn_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("via IN ('api', 'cli')", name="ck_acceptance_via"),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["licence_id"], ["licences.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_licence_acceptances_tenant_id", "licence_acceptances", ["tenant_id"])


def downgrade() -> None:
    op.drop_index("ix_licence_acceptances_tenant_id", table_name="licence_acceptances")
    op.drop_table("licence_acceptances")
