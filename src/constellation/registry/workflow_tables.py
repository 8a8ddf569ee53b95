"""The workflow tables: each registered version of a workflow document, each run of one, and
which usage event each executed step of a run wrote (a run's bill, step by step)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from constellation.registry.tables import Base, utcnow

OUTPUT_KINDS = ("text", "classification", "embedding", "json")


class WorkflowVersion(Base):
    """One immutable version of a workflow: `name` resolves to the highest `version`."""

    __tablename__ = "workflows"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128))
    version: Mapped[int] = mapped_column(Integer)
    source: Mapped[str] = mapped_column(Text)  # the document as registered
    document: Mapped[dict[str, Any]] = mapped_column(JSON)  # the same, parsed
    author_id: Mapped[str] = mapped_column(ForeignKey("contributors.id"))
    fee_per_run_nanos: Mapped[int] = mapped_column(BigInteger, default=0)
    visibility: Mapped[str] = mapped_column(String(10), default="public")
    owner_tenant_id: Mapped[str | None] = mapped_column(ForeignKey("tenants.id"))
    output_kind: Mapped[str] = mapped_column(String(20))
    models: Mapped[list[str]] = mapped_column(JSON, default=list)  # every model it can reach
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    __table_args__ = (
        UniqueConstraint("name", "version", name="uq_workflow_version"),
        CheckConstraint("version >= 1", name="ck_workflow_version"),
        CheckConstraint("fee_per_run_nanos >= 0", name="ck_workflow_fee"),
        CheckConstraint("visibility IN ('public', 'private')", name="ck_workflow_visibility"),
        CheckConstraint(f"output_kind IN {OUTPUT_KINDS}", name="ck_workflow_output"),
    )


class WorkflowRun(Base):
    """One run: its steps' usage events are listed in `workflow_run_steps`; its author's fee is
    the usage event whose request id is the run id."""

    __tablename__ = "workflow_runs"
    id: Mapped[str] = mapped_column(String(80), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64))
    workflow_id: Mapped[int] = mapped_column(ForeignKey("workflows.id"))
    workflow: Mapped[str] = mapped_column(String(128))
    version: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(12))
    price_nanos: Mapped[int] = mapped_column(BigInteger, default=0)
    failed_step: Mapped[str | None] = mapped_column(String(200))
    error: Mapped[str | None] = mapped_column(Text)
    started_us: Mapped[int] = mapped_column(BigInteger)
    finished_us: Mapped[int] = mapped_column(BigInteger)
    __table_args__ = (
        CheckConstraint("status IN ('succeeded', 'failed')", name="ck_workflow_run_status"),
        Index("ix_workflow_runs_tenant_time", "tenant_id", "finished_us"),
        Index("ix_workflow_runs_workflow", "workflow", "finished_us"),
    )


class WorkflowRunStep(Base):
    """One executed step of a run: the usage event (`request_id`) it wrote."""

    __tablename__ = "workflow_run_steps"
    request_id: Mapped[str] = mapped_column(String(80), primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("workflow_runs.id", ondelete="CASCADE"), index=True)
    step: Mapped[str] = mapped_column(String(200))
    model: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(12))
    price_nanos: Mapped[int] = mapped_column(BigInteger, default=0)
