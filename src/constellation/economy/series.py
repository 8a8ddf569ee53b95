"""Daily series for one UTC month: a tenant's requests, tokens and spend by model, and a
contributor's earnings by role and artifact. Money comes from the same charge legs as
`reports.invoice` and `reports.statement`, bucketed by the day the charge was posted, so a
series' sums equal the invoice's and the statement's totals to the nano-USD."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from constellation.economy.ledger import contributor_account, tenant_account
from constellation.economy.reports import charge_legs, period_bounds
from constellation.economy.tables import LedgerTransaction, UsageEvent

DAY_US = 86_400_000_000
USAGE_FIELDS = ("requests", "failed", "input_tokens", "output_tokens", "spend_nanos")


def month_days(start_us: int, end_us: int) -> list[str]:
    """The ISO dates (UTC) of the days in [start_us, end_us)."""
    first = datetime.fromtimestamp(start_us / 1e6, UTC).date()
    return [(first + timedelta(days=i)).isoformat() for i in range((end_us - start_us) // DAY_US)]


def _charges(account: str, start: int, end: int) -> Any:
    """The account's charge legs posted in [start, end), with their posting time and usage event:
    the invoice's and the statement's selection."""
    return charge_legs(account, start, end, LedgerTransaction.created_us, UsageEvent)


def usage_series(s: Session, *, tenant_id: str, period: str | None = None) -> dict[str, Any]:
    """Per day and per (model, operation): requests (every usage event, free and failed ones
    included), failed requests, tokens in and out, and spend. A charged request counts on the
    day its charge was posted, an uncharged one on the day it finished."""
    period, start, end = period_bounds(period)
    days = month_days(start, end)
    series: dict[tuple[str, str], dict[str, Any]] = {}

    def add(e: UsageEvent, at_us: int, spend: int) -> None:
        key = (e.model_name, e.operation)
        line = series.get(key)
        if line is None:
            line = series[key] = {"model": key[0], "operation": key[1]}
            line |= {f: [0] * len(days) for f in USAGE_FIELDS}
        i = (at_us - start) // DAY_US
        line["requests"][i] += 1
        line["failed"][i] += e.status == "failed"
        line["input_tokens"][i] += e.input_tokens
        line["output_tokens"][i] += e.output_tokens
        line["spend_nanos"][i] += spend

    billed = 0
    for leg, created_us, e in s.execute(_charges(tenant_account(tenant_id), start, end)):
        add(e, created_us, -leg.amount_nanos)
        billed += 1
    free = select(UsageEvent).where(
        UsageEvent.tenant_id == tenant_id,
        UsageEvent.finished_us >= start,
        UsageEvent.finished_us < end,
        UsageEvent.txn_id.is_(None),
    )
    for e in s.scalars(free):
        add(e, e.finished_us, 0)
    lines = sorted(series.values(), key=lambda ln: (-sum(ln["spend_nanos"]), ln["model"], ln["operation"]))
    totals = {f: sum(sum(ln[f]) for ln in lines) for f in USAGE_FIELDS}
    return {
        "object": "usage_series",
        "tenant": tenant_id,
        "period": period,
        "currency": "USD",
        "days": days,
        "series": lines,
        "totals": {**totals, "billed_requests": billed},
    }


def earnings_series(s: Session, *, contributor_id: str, period: str | None = None) -> dict[str, Any]:
    """Per day and per (role, artifact): what the contributor earned and from how many requests.
    The platform's write-offs (a tenant's charge capped by its balance) are a negative `writeoff`
    series, as on its statement."""
    period, start, end = period_bounds(period)
    days = month_days(start, end)
    series: dict[tuple[str, str | None], dict[str, Any]] = {}
    requests: set[str] = set()
    for leg, created_us, e in s.execute(_charges(contributor_account(contributor_id), start, end)):
        key = (leg.role, leg.artifact)
        line = series.get(key)
        if line is None:
            line = series[key] = {
                "role": leg.role,
                "artifact": leg.artifact,
                "amount_nanos": [0] * len(days),
                "requests": [0] * len(days),
            }
        i = (created_us - start) // DAY_US
        line["amount_nanos"][i] += leg.amount_nanos
        line["requests"][i] += 1  # one leg per (request, role, artifact) for one contributor
        requests.add(e.request_id)
    lines = sorted(
        series.values(), key=lambda ln: (-sum(ln["amount_nanos"]), ln["role"], ln["artifact"] or "")
    )
    return {
        "object": "earnings_series",
        "contributor": contributor_id,
        "period": period,
        "currency": "USD",
        "days": days,
        "series": lines,
        "totals": {"amount_nanos": sum(sum(ln["amount_nanos"]) for ln in lines), "requests": len(requests)},
    }
