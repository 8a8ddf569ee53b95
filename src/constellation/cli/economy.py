"""CLI for the economy: usage events, invoices, statements, `ledger verify` and balances, and
the tenant funding commands (`tenants fund`, `tenants limit`) the tenants group mounts."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from constellation.cli._common import JsonOpt, console, emit, fail, opened_platform
from constellation.economy import ledger as ledger_repo
from constellation.economy import reports
from constellation.economy.money import parse_usd, usd

usage = typer.Typer(help="Metered requests: who called what, tokens, compute, price.", no_args_is_help=True)
invoices = typer.Typer(help="Per-tenant invoices for a UTC month.", no_args_is_help=True)
statements = typer.Typer(help="Per-contributor statements for a UTC month.", no_args_is_help=True)
ledger = typer.Typer(help="The double-entry ledger: verify it, read balances.", no_args_is_help=True)

Period = Annotated[str | None, typer.Option(help="UTC month as YYYY-MM; default: this month.")]
Csv = Annotated[bool, typer.Option("--csv", help="Print CSV (one row per line, with request ids).")]


@usage.command("list")
def usage_list(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant.")] = None,
    period: Period = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 50,
    as_json: JsonOpt = False,
) -> None:
    """Recent usage events, e.g. `constellation usage list --tenant acme --period 2026-11`."""
    with opened_platform() as p, p.db.session() as s:
        rows = reports.usage_events(s, tenant_id=tenant, period=period, limit=limit)
    cols = (
        "request_id",
        "tenant",
        "model",
        "status",
        "input_tokens",
        "compute_ns",
        "price_nanos",
        "finished_at",
    )
    emit(rows, as_json=as_json, columns=cols)


def _show(doc: dict[str, object], *, as_json: bool, as_csv: bool) -> None:
    if as_csv:
        sys.stdout.write(reports.to_csv(doc))  # type: ignore[arg-type]
        return
    if as_json:
        emit(doc, as_json=True)
        return
    owner = doc.get("tenant") or doc.get("contributor")
    console.print(
        f"[bold]{doc['object']} {owner} {doc['period']}[/bold]: "
        f"{doc['total_usd']} USD, {doc['requests']} requests"
    )
    for section in ("lines_by_model", "lines_by_artifact"):
        lines = doc[section]
        assert isinstance(lines, list)
        rows = [{k: v for k, v in ln.items() if k != "request_ids"} for ln in lines]
        emit(rows, as_json=False, title=section.replace("_", " "))


@invoices.command("show")
def invoices_show(tenant: str, period: Period = None, as_csv: Csv = False, as_json: JsonOpt = False) -> None:
    """A tenant's invoice, e.g. `constellation invoices show acme --period 2026-11 --csv`."""
    with opened_platform() as p, p.db.session() as s:
        doc = reports.invoice(s, tenant_id=tenant, period=period)
    _show(doc, as_json=as_json, as_csv=as_csv)


@statements.command("show")
def statements_show(
    contributor: str, period: Period = None, as_csv: Csv = False, as_json: JsonOpt = False
) -> None:
    """A contributor's statement, e.g. `constellation statements show sbert --period 2026-11`."""
    with opened_platform() as p, p.db.session() as s:
        doc = reports.statement(s, contributor_id=contributor, period=period)
    _show(doc, as_json=as_json, as_csv=as_csv)


@ledger.command("verify")
def ledger_verify() -> None:
    """Recompute every balance from the legs, check each transaction sums to zero and that
    usage events and charges match one to one. Exit 1 on any discrepancy."""
    with opened_platform() as p, p.db.session() as s:
        problems = ledger_repo.verify(s)
    if not problems:
        console.print("OK: every transaction balances, balances match their legs, usage matches charges")
        return
    for line in problems:
        console.print(f"[red]discrepancy:[/red] {line}", highlight=False)
    raise typer.Exit(1)


@ledger.command("balances")
def ledger_balances(as_json: JsonOpt = False) -> None:
    """Every account's balance in nano-USD (positive: owed to it; negative: it owes)."""
    with opened_platform() as p, p.db.session() as s:
        rows = ledger_repo.balances(s)
    emit(rows, as_json=as_json, columns=("account", "kind", "balance_nanos", "floor_nanos"))


def tenants_fund(
    tenant: str,
    amount: Annotated[str, typer.Argument(help="USD, e.g. 25 or 0.50 (nine decimals at most).")],
    memo: Annotated[str, typer.Option(help="A note kept on the transaction.")] = "",
) -> None:
    """Add prepaid funds to a tenant, e.g. `constellation tenants fund acme 25.00`."""
    with opened_platform() as p, p.db.session() as s:
        new = ledger_repo.fund(s, tenant_id=tenant, amount_nanos=parse_usd(amount), memo=memo)
    console.print(f"tenant {tenant}: balance {usd(new)} USD")


def tenants_limit(
    tenant: str,
    prepaid: Annotated[bool, typer.Option("--prepaid", help="Spend only funds added beforehand.")] = False,
    limit: Annotated[str | None, typer.Option("--limit", help="May owe up to this many USD.")] = None,
    unlimited: Annotated[bool, typer.Option("--unlimited", help="No limit; billed by invoice.")] = False,
) -> None:
    """Choose how a tenant pays: `--prepaid`, `--limit 100` (USD) or `--unlimited`."""
    if sum((prepaid, limit is not None, unlimited)) != 1:
        raise fail("pass exactly one of --prepaid, --limit USD or --unlimited")
    with opened_platform() as p, p.db.session() as s:
        ledger_repo.set_limit(
            s, tenant_id=tenant, prepaid=prepaid, spending_limit_nanos=parse_usd(limit) if limit else None
        )
    console.print(
        f"tenant {tenant}: {'prepaid' if prepaid else f'limit {limit} USD' if limit else 'unlimited'}"
    )
