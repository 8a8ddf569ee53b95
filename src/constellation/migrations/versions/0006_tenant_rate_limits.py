"""tenant rate limits: requests and tokens per minute (NULL = the server's default, 0 = unlimited)

Revision ID: 0006
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("tenants", sa.Column("requests_per_minute", sa.BigInteger(), nullable=True))
    op.add_column("tenants", sa.Column("tokens_per_minute", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tenants") as batch:
        batch.drop_column("tokens_per_minute")
        batch.drop_column("requests_per_minute")
