"""An invoice's workflow runs: each run one line (its steps' charges and its author's fee),
with its steps beneath, found from the request ids the invoice's legs name."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from constellation.economy.money import usd
from constellation.registry.workflow_tables import WorkflowRun, WorkflowRunStep


def run_lines(s: Session, charges: Iterable[tuple[str, int]]) -> list[dict[str, Any]]:
    """`charges`: (request id, amount charged) pairs; the runs among them, newest id last."""
    amounts: dict[str, int] = {}
    for rid, amount in charges:
        amounts[rid] = amounts.get(rid, 0) + amount
    rids = list(amounts)
    steps: list[WorkflowRunStep] = []
    runs: dict[str, WorkflowRun] = {}
    for i in range(0, len(rids), 500):  # IN lists within every dialect's parameter limit
        chunk = rids[i : i + 500]
        steps += s.scalars(select(WorkflowRunStep).where(WorkflowRunStep.request_id.in_(chunk)))
        runs.update({r.id: r for r in s.scalars(select(WorkflowRun).where(WorkflowRun.id.in_(chunk)))})
    missing = sorted({st.run_id for st in steps} - set(runs))
    if missing:
        runs.update({r.id: r for r in s.scalars(select(WorkflowRun).where(WorkflowRun.id.in_(missing)))})
    lines: dict[str, dict[str, Any]] = {}
    for run_id, r in runs.items():
        fee = amounts.get(run_id, 0)
        lines[run_id] = {
            "run_id": run_id,
            "workflow": r.workflow,
            "version": r.version,
            "status": r.status,
            "fee_nanos": fee,
            "amount_nanos": fee,
            "steps": [],
        }
    for st in steps:
        line = lines[st.run_id]
        amount = amounts.get(st.request_id, 0)
        line["steps"].append(
            {"step": st.step, "model": st.model, "request_id": st.request_id, "amount_nanos": amount}
        )
        line["amount_nanos"] += amount
    out = sorted(lines.values(), key=lambda ln: ln["run_id"])
    for ln in out:
        ln["amount_usd"] = usd(ln["amount_nanos"])
    return out
