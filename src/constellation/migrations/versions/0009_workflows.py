"""workflows: registered workflow versions, their runs, and each run's executed steps

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "workflows",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("document", sa.JSON(), nullable=False),
        sa.Column("author_id", sa.String(length=64), nullable=False),
        sa.Column("fee_per_run_nanos", sa.BigInteger(), nullable=False),
        sa.Column("visibility", sa.String(length=10), nullable=False),
        sa.Column("owner_tenant_id", sa.String(length=64), nullable=True),
        sa.Column("output_kind", sa.String(length=20), nullable=False),
        sa.Column("models", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["author_id"], ["contributors.id"]),
        sa.ForeignKeyConstraint(["owner_tenant_id"], ["tenants.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name", "version", name="uq_workflow_version"),
        sa.CheckConstraint("version >= 1", name="ck_workflow_version"),
        sa.CheckConstraint("fee_per_run_nanos >= 0", name="ck_workflow_fee"),
        sa.CheckConstraint("visibility IN ('public', 'private')", name="ck_workflow_visibility"),
        sa.CheckConstraint(
            "output_kind IN ('text', 'classification', 'embedding', 'json')", name="ck_workflow_output"
        ),
    )
    op.create_table(
        "workflow_runs",
        sa.Column("id", sa.String(length=80), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("workflow_id", sa.Integer(), nullable=False),
        sa.Column("workflow", sa.String(length=128), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.Column("price_nanos", sa.BigInteger(), nullable=False),
        sa.Column("failed_step", sa.String(length=200), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("started_us", sa.BigInteger(), nullable=False),
        sa.Column("finished_us", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["workflow_id"], ["workflows.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.CheckConstraint("status IN ('succeeded', 'failed')", name="ck_workflow_run_status"),
    )
    op.create_index("ix_workflow_runs_tenant_time", "workflow_runs", ["tenant_id", "finished_us"])
    op.create_index("ix_workflow_runs_workflow", "workflow_runs", ["workflow", "finished_us"])
    op.create_table(
        "workflow_run_steps",
        sa.Column("request_id", sa.String(length=80), nullable=False),
        sa.Column("run_id", sa.String(length=80), nullable=False),
        sa.Column("step", sa.String(length=200), nullable=False),
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.Column("price_nanos", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["workflow_runs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("request_id"),
    )
    op.create_index("ix_workflow_run_steps_run_id", "workflow_run_steps", ["run_id"])


def downgrade() -> None:
    op.drop_index("ix_workflow_run_steps_run_id", table_name="workflow_run_steps")
    op.drop_table("workflow_run_steps")
    op.drop_index("ix_workflow_runs_workflow", table_name="workflow_runs")
    op.drop_index("ix_workflow_runs_tenant_time", table_name="workflow_runs")
    op.drop_table("workflow_runs")
    op.drop_table("workflows")
