"""Registered workflows: immutable versions under one name (`name` is the latest, `name@N`
pins one), visible to all or to their owner tenant, and their runs as recorded."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from constellation.errors import InvalidInput, NotFound
from constellation.registry.workflow_tables import WorkflowRun, WorkflowRunStep, WorkflowVersion

_REF = re.compile(r"(?P<name>[a-z0-9][a-z0-9._\-]{0,127}?)(?:@(?P<version>[0-9]{1,9}))?")


def parse_ref(ref: str) -> tuple[str, int | None]:
    """'triage' -> ('triage', None); 'triage@2' -> ('triage', 2)."""
    m = _REF.fullmatch(ref)
    if m is None:
        raise InvalidInput(
            f"'{ref[:200]}' is not a workflow name; write 'name' or 'name@N'", param="workflow"
        )
    v = m.group("version")
    return m.group("name"), int(v) if v else None


def is_workflow(s: Session, name: str) -> bool:
    base, _ = parse_ref(name) if "@" in name else (name, None)
    return s.scalar(select(WorkflowVersion.id).where(WorkflowVersion.name == base).limit(1)) is not None


def visible_to(wf: WorkflowVersion, tenant_id: str | None) -> bool:
    return wf.visibility == "public" or (tenant_id is not None and wf.owner_tenant_id == tenant_id)


def get_workflow(s: Session, *, ref: str, tenant_id: str | None = None) -> WorkflowVersion:
    """The version `ref` names (the latest for a bare name); another tenant's private workflow is
    reported as not existing. `tenant_id=None`: an operator, who sees every workflow."""
    name, version = parse_ref(ref)
    q = select(WorkflowVersion).where(WorkflowVersion.name == name)
    q = q.where(WorkflowVersion.version == version) if version else q.order_by(WorkflowVersion.version.desc())
    wf = s.scalars(q.limit(1)).first()
    if wf is None or (tenant_id is not None and not visible_to(wf, tenant_id)):
        which = f"version {version} of the workflow '{name}'" if version else f"the workflow '{name}'"
        raise NotFound(
            f"{which} does not exist; `constellation workflows list` (or GET /api/workflows) lists them",
            param="model",
            code="workflow_not_found",
        )
    return wf


def next_version(s: Session, name: str) -> int:
    return (
        int(s.scalar(select(func.max(WorkflowVersion.version)).where(WorkflowVersion.name == name)) or 0) + 1
    )


def list_workflows(s: Session, *, tenant_id: str | None = None) -> list[WorkflowVersion]:
    """The latest version of each workflow `tenant_id` can see (None: all of them)."""
    latest = (
        select(WorkflowVersion.name, func.max(WorkflowVersion.version).label("v"))
        .group_by(WorkflowVersion.name)
        .subquery()
    )
    q = select(WorkflowVersion).join(
        latest, (WorkflowVersion.name == latest.c.name) & (WorkflowVersion.version == latest.c.v)
    )
    if tenant_id is not None:
        q = q.where(or_(WorkflowVersion.visibility == "public", WorkflowVersion.owner_tenant_id == tenant_id))
    return list(s.scalars(q.order_by(WorkflowVersion.name)))


def versions(s: Session, *, name: str) -> list[int]:
    q = select(WorkflowVersion.version).where(WorkflowVersion.name == name).order_by(WorkflowVersion.version)
    return list(s.scalars(q))


def recent_runs(
    s: Session, *, workflow: str | None = None, tenant_id: str | None = None, limit: int = 20
) -> list[dict[str, Any]]:
    """The latest runs, newest first, each with its executed steps and their prices."""
    q = select(WorkflowRun).order_by(WorkflowRun.finished_us.desc()).limit(limit)
    if workflow is not None:
        q = q.where(WorkflowRun.workflow == workflow)
    if tenant_id is not None:
        q = q.where(WorkflowRun.tenant_id == tenant_id)
    runs = list(s.scalars(q))
    steps: dict[str, list[dict[str, Any]]] = {}
    if runs:
        rows = s.scalars(select(WorkflowRunStep).where(WorkflowRunStep.run_id.in_([r.id for r in runs])))
        for st in rows:
            steps.setdefault(st.run_id, []).append(
                {
                    "step": st.step,
                    "model": st.model,
                    "request_id": st.request_id,
                    "status": st.status,
                    "price_nanos": st.price_nanos,
                }
            )
    return [
        {
            "run_id": r.id,
            "workflow": r.workflow,
            "version": r.version,
            "tenant": r.tenant_id,
            "status": r.status,
            "price_nanos": r.price_nanos,
            "failed_step": r.failed_step,
            "error": r.error,
            "started_us": r.started_us,
            "finished_us": r.finished_us,
            "steps": steps.get(r.id, []),
        }
        for r in runs
    ]
