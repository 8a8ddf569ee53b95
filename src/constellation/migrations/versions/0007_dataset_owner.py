"""data set owners: a tenant's upload is its own (NULL = an operator's, public), so the same bytes
may be registered once per owner and sha256 is no longer unique

Revision ID: 0007
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0001"
branch_labels = None
depends_on = None

# 0001 left the unique constraint unnamed; this names it so that SQLite's batch mode can drop it.
_NAMING = {"uq": "uq_%(table_name)s_%(column_0_name)s"}

# A data set already trained on only by tenants' private models was, as far as anyone can tell,
# uploaded by one of them: keep it private rather than reusable by every tenant.
_BACKFILL = """
UPDATE datasets SET owner_tenant_id = (
    SELECT MIN(m.owner_tenant_id) FROM model_datasets md JOIN models m ON m.id = md.model_id
    WHERE md.dataset_id = datasets.id
)
WHERE NOT EXISTS (
    SELECT 1 FROM model_datasets md JOIN models m ON m.id = md.model_id
    WHERE md.dataset_id = datasets.id AND m.owner_tenant_id IS NULL
)
"""


def upgrade() -> None:
    owner = sa.Column("owner_tenant_id", sa.String(length=64), nullable=True)
    if op.get_bind().dialect.name == "sqlite":
        # Batch mode rebuilds the table, and with foreign keys enforced SQLite refuses to drop one
        # that lineage rows point at (the pragma that would allow it is ignored inside a
        # transaction): set the lineage aside meanwhile.
        op.execute("CREATE TEMPORARY TABLE lineage_0007 AS SELECT * FROM model_datasets")
        op.execute("DELETE FROM model_datasets")
        with op.batch_alter_table("datasets", naming_convention=_NAMING) as batch:
            batch.drop_constraint("uq_datasets_sha256", type_="unique")
            batch.add_column(owner)
            batch.create_foreign_key("fk_datasets_owner_tenant", "tenants", ["owner_tenant_id"], ["id"])
        op.execute("INSERT INTO model_datasets SELECT * FROM lineage_0007")
        op.execute("DROP TABLE lineage_0007")
    else:
        op.drop_constraint("datasets_sha256_key", "datasets", type_="unique")
        op.add_column("datasets", owner)
        op.create_foreign_key("fk_datasets_owner_tenant", "datasets", "tenants", ["owner_tenant_id"], ["id"])
    op.create_index("ix_datasets_sha256", "datasets", ["sha256"])
    op.execute(_BACKFILL)


def downgrade() -> None:
    """Fails while the same bytes are registered more than once (by different owners)."""
    op.drop_index("ix_datasets_sha256", table_name="datasets")
    with op.batch_alter_table("datasets") as batch:
        batch.drop_constraint("fk_datasets_owner_tenant", type_="foreignkey")
        batch.drop_column("owner_tenant_id")
        batch.create_unique_constraint("uq_datasets_sha256", ["sha256"])
