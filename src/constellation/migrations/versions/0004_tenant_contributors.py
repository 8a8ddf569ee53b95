"""tenant contributors: the contributor identities each tenant owns (admin-managed links)

Revision ID: 0004
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tenant_contributors",
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("contributor_id", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["contributor_id"], ["contributors.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("tenant_id", "contributor_id"),
    )


def downgrade() -> None:
    op.drop_table("tenant_contributors")
