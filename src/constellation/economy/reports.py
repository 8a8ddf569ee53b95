"""Invoices (per tenant) and statements (per contributor) for one UTC month, read from the
ledger's legs; every line names the request ids behind it. JSON dicts and CSV text.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from constellation.economy.ledger import contributor_account, tenant_account
from constellation.economy.money import usd
from constellation.economy.tables import LedgerLeg, LedgerTransaction, UsageEvent
from constellation.economy.workflow_lines import run_lines
from constellation.errors import InvalidInput
from constellation.registry.effective import effective_terms
from constellation.registry.tables import Model

_PERIOD = re.compile(r"(\d{4})-(\d{2})")


def period_bounds(period: str | None) -> tuple[str, int, int]:
    """'2026-11' -> (period, start_us, end_us) in UTC; None -> the current month."""
    if period is None:
        now = datetime.now(UTC)
        period = f"{now.year:04d}-{now.month:02d}"
    m = _PERIOD.fullmatch(period)
    if m is None or not 1 <= int(m.group(2)) <= 12:
        raise InvalidInput(
            f"period '{period}' is not a month; write it as YYYY-MM, e.g. 2026-11", param="period"
        )
    y, mo = int(m.group(1)), int(m.group(2))
    start = datetime(y, mo, 1, tzinfo=UTC)
    end = datetime(y + mo // 12, mo % 12 + 1, 1, tzinfo=UTC)
    return period, int(start.timestamp()) * 1_000_000, int(end.timestamp()) * 1_000_000


def charge_legs(account: str, start: int, end: int, *columns: Any) -> Select[Any]:
    """The account's charge legs posted in [start, end) with `columns` (of their transaction or
    usage event): what invoices, statements and their daily series all sum."""
    return (
        select(LedgerLeg, *columns)
        .join(LedgerTransaction, LedgerTransaction.id == LedgerLeg.txn_id)
        .join(UsageEvent, UsageEvent.txn_id == LedgerTransaction.id)
        .where(
            LedgerLeg.account_id == account,
            LedgerTransaction.kind == "charge",
            LedgerTransaction.created_us >= start,
            LedgerTransaction.created_us < end,
        )
        .order_by(LedgerLeg.txn_id, LedgerLeg.n)
    )


def _legs(s: Session, *, account: str, start: int, end: int) -> list[Any]:
    """This account's charge legs in the period, with their request's id, model, tenant and operation."""
    cols = (UsageEvent.request_id, UsageEvent.model_name, UsageEvent.tenant_id, UsageEvent.operation)
    return list(s.execute(charge_legs(account, start, end, *cols)))


def _group(rows: Iterable[tuple[tuple[Any, ...], int, str]], names: tuple[str, ...]) -> list[dict[str, Any]]:
    """Sum amounts per key; each line keeps the (deduplicated) request ids behind it."""
    lines: dict[tuple[Any, ...], dict[str, Any]] = {}
    for key, amount, rid in rows:
        line = lines.setdefault(
            key, {**dict(zip(names, key, strict=True)), "amount_nanos": 0, "request_ids": []}
        )
        line["amount_nanos"] += amount
        if not line["request_ids"] or line["request_ids"][-1] != rid:
            line["request_ids"].append(rid)
    out = sorted(lines.values(), key=lambda ln: (-ln["amount_nanos"], *(str(ln[n]) for n in names)))
    for ln in out:
        ln["amount_usd"] = usd(ln["amount_nanos"])
        ln["requests"] = len(ln["request_ids"])
    return out


def invoice(s: Session, *, tenant_id: str, period: str | None = None) -> dict[str, Any]:
    """What a tenant owes for the month: lines by model and by artifact (who was paid for what)."""
    period, start, end = period_bounds(period)
    own = _legs(s, account=tenant_account(tenant_id), start=start, end=end)
    by_model = _group(
        (((m, op), -leg.amount_nanos, rid) for leg, rid, m, _, op in own), ("model", "operation")
    )
    txns = [leg.txn_id for leg, *_ in own]
    splits = _split_legs(s, txns)
    by_artifact = _group(
        (((g.role, g.artifact, g.account_id.split(":", 1)[1]), g.amount_nanos, rid) for g, rid in splits),
        ("role", "artifact", "contributor"),
    )
    total = sum(ln["amount_nanos"] for ln in by_model)
    models = sorted({m for _, _, m, _, op in own if op == "inference"})
    return {
        "object": "invoice",
        "tenant": tenant_id,
        "period": period,
        "currency": "USD",
        "total_nanos": total,
        "total_usd": usd(total),
        "requests": len(own),
        "lines_by_model": by_model,
        "lines_by_artifact": by_artifact,
        "notices": notices(s, models),
        # A workflow run as one line, its steps beneath (its steps are also in the lines above).
        "workflow_runs": run_lines(s, ((rid, -leg.amount_nanos) for leg, rid, *_ in own)),
    }


def _split_legs(s: Session, txn_ids: list[int]) -> list[tuple[LedgerLeg, str]]:
    out: list[tuple[LedgerLeg, str]] = []
    for i in range(0, len(txn_ids), 500):  # keep IN lists within every dialect's parameter limit
        q = (
            select(LedgerLeg, UsageEvent.request_id)
            .join(UsageEvent, UsageEvent.txn_id == LedgerLeg.txn_id)
            .where(LedgerLeg.txn_id.in_(txn_ids[i : i + 500]), LedgerLeg.role != "tenant")
            .order_by(LedgerLeg.txn_id, LedgerLeg.n)
        )
        out += [(g, str(rid)) for g, rid in s.execute(q)]
    return out


def statement(s: Session, *, contributor_id: str, period: str | None = None) -> dict[str, Any]:
    """What a contributor earned in the month: lines by model and by (role, artifact)."""
    period, start, end = period_bounds(period)
    own = _legs(s, account=contributor_account(contributor_id), start=start, end=end)
    total = sum(leg.amount_nanos for leg, *_ in own)
    return {
        "object": "statement",
        "contributor": contributor_id,
        "period": period,
        "currency": "USD",
        "total_nanos": total,
        "total_usd": usd(total),
        "requests": len({rid for _, rid, *_ in own}),
        "lines_by_model": _group(
            (((m, op), leg.amount_nanos, rid) for leg, rid, m, _, op in own), ("model", "operation")
        ),
        "lines_by_artifact": _group(
            (((leg.role, leg.artifact), leg.amount_nanos, rid) for leg, rid, *_ in own), ("role", "artifact")
        ),
    }


def notices(s: Session, model_names: list[str]) -> list[dict[str, Any]]:
    """Licence notices for the models used, from their effective terms over the whole lineage;
    a model removed since keeps the licence ids recorded on its usage events."""
    out: list[dict[str, Any]] = []
    for name in model_names:
        m = s.scalar(select(Model).where(Model.name == name))
        if m is not None:
            out.append({"model": name, "notices": list(effective_terms(s, model=m).notices)})
            continue
        row = s.execute(select(UsageEvent.lineage).where(UsageEvent.model_name == name).limit(1)).scalar()
        out.append({"model": name, "licences": list((row or {}).get("licences", []))})
    return out


def to_csv(doc: dict[str, Any]) -> str:
    """One row per line: section, key columns, amount, request count and the request ids."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["object", "owner", "period", "section", "model", "role", "artifact", "contributor",
                "requests", "amount_nanos", "amount_usd", "request_ids"])  # fmt: skip
    owner = doc.get("tenant") or doc.get("contributor")
    for section in ("lines_by_model", "lines_by_artifact"):
        for ln in doc[section]:
            keys = [
                ln.get("model", ""),
                ln.get("role", ""),
                ln.get("artifact") or "",
                ln.get("contributor", ""),
            ]
            amounts = [ln["requests"], ln["amount_nanos"], ln["amount_usd"], " ".join(ln["request_ids"])]
            w.writerow([doc["object"], owner, doc["period"], section, *keys, *amounts])
    for run in doc.get("workflow_runs", []):  # a run's line, then its steps beneath
        head = [doc["object"], owner, doc["period"]]
        w.writerow(
            [
                *head,
                "workflow_run",
                f"{run['workflow']}@{run['version']}",
                "workflow",
                run["run_id"],
                "",
                1 + len(run["steps"]),
                run["amount_nanos"],
                run["amount_usd"],
                run["run_id"],
            ]
        )
        for st in run["steps"]:
            w.writerow(
                [
                    *head,
                    "workflow_step",
                    st["model"],
                    "step",
                    st["step"],
                    "",
                    1,
                    st["amount_nanos"],
                    usd(st["amount_nanos"]),
                    st["request_id"],
                ]
            )
    w.writerow([doc["object"], owner, doc["period"], "total", "", "", "", "", doc["requests"],
                doc["total_nanos"], doc["total_usd"], ""])  # fmt: skip
    return buf.getvalue()


def usage_events(
    s: Session, *, tenant_id: str | None, period: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """The most recent usage events of a tenant (or all tenants) in the period."""
    period, start, end = period_bounds(period)
    q = select(UsageEvent).where(UsageEvent.finished_us >= start, UsageEvent.finished_us < end)
    if tenant_id is not None:
        q = q.where(UsageEvent.tenant_id == tenant_id)
    rows = s.scalars(q.order_by(UsageEvent.finished_us.desc()).limit(limit))
    return [
        {
            "request_id": e.request_id,
            "tenant": e.tenant_id,
            "model": e.model_name,
            "status": e.status,
            "input_tokens": e.input_tokens,
            "output_tokens": e.output_tokens,
            "compute_ns": e.compute_ns,
            "device_class": e.device_class,
            "price_nanos": e.price_nanos,
            "finished_at": datetime.fromtimestamp(e.finished_us / 1e6, UTC).isoformat(),
            "lineage": e.lineage,
        }
        for e in rows
    ]
