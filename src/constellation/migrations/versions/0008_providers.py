"""providers: upstream OpenAI-compatible APIs and the models they expose, data sets marked as
holding a model's outputs, and a tenant's "data stays on the platform" declaration

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"  # dataset_sources points at datasets, which 0007 rebuilds on SQLite
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "tenants",
        sa.Column("data_stays_on_platform", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.create_table(
        "providers",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("base_url", sa.String(length=500), nullable=False),
        sa.Column("api_key_env", sa.String(length=128), nullable=True),
        sa.Column("contributor_id", sa.String(length=64), nullable=False),
        sa.Column("on_platform", sa.Boolean(), nullable=False),
        sa.Column("timeout_s", sa.Float(), nullable=False),
        sa.Column("max_concurrency", sa.Integer(), nullable=False),
        sa.Column("max_retries", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["contributor_id"], ["contributors.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.CheckConstraint("max_concurrency > 0", name="ck_provider_concurrency"),
        sa.CheckConstraint("max_retries >= 0", name="ck_provider_retries"),
        sa.CheckConstraint("timeout_s > 0", name="ck_provider_timeout"),
    )
    op.create_table(
        "provider_models",
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("provider_id", sa.String(length=64), nullable=False),
        sa.Column("upstream_model", sa.String(length=200), nullable=False),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["provider_id"], ["providers.id"]),
        sa.PrimaryKeyConstraint("model_id"),
    )
    op.create_index("ix_provider_models_provider_id", "provider_models", ["provider_id"])
    op.create_table(
        "dataset_sources",
        sa.Column("dataset_id", sa.Integer(), nullable=False),
        sa.Column("model_name", sa.String(length=128), nullable=False),
        sa.Column("licence_id", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["dataset_id"], ["datasets.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["licence_id"], ["licences.id"]),
        sa.PrimaryKeyConstraint("dataset_id", "model_name"),
    )


def downgrade() -> None:
    op.drop_table("dataset_sources")
    op.drop_index("ix_provider_models_provider_id", table_name="provider_models")
    op.drop_table("provider_models")
    op.drop_table("providers")
    with op.batch_alter_table("tenants") as batch:
        batch.drop_column("data_stays_on_platform")
