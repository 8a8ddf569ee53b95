"""The economy CLI: fund and limit a tenant, show an invoice and a statement, and
`ledger verify` printing OK (exit 0) or each discrepancy (exit 1)."""

from __future__ import annotations

import asyncio

import pytest
import typer
from sqlalchemy import text
from tests.unit.economy.conftest import usage
from typer.testing import CliRunner

from constellation.cli import economy as cli
from constellation.config import Settings
from constellation.economy.meter import Meter
from constellation.platform import Platform

runner = CliRunner()


def _app() -> typer.Typer:
    app = typer.Typer()
    for name, sub in (("invoices", cli.invoices), ("statements", cli.statements), ("ledger", cli.ledger)):
        app.add_typer(sub, name=name)
    tenants = typer.Typer()
    tenants.command("fund")(cli.tenants_fund)
    tenants.command("limit")(cli.tenants_limit)
    app.add_typer(tenants, name="tenants")
    return app


def test_cli_fund_invoice_statement_and_verify(
    priced: Platform, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONSTELLATION_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("CONSTELLATION_DB_URL", settings.database_url)
    meter = Meter(priced.db, priced.settings.prices)
    asyncio.run(meter.record(usage("c1")))
    meter.close()
    app = _app()
    r = runner.invoke(app, ["tenants", "fund", "beta", "2.5"])
    assert r.exit_code == 0 and "2.500000000" in r.output, r.output
    assert runner.invoke(app, ["tenants", "limit", "beta", "--prepaid"]).exit_code == 0
    assert runner.invoke(app, ["tenants", "limit", "beta"]).exit_code != 0
    r = runner.invoke(app, ["invoices", "show", "acme", "--csv"])
    assert r.exit_code == 0 and "c1" in r.output
    r = runner.invoke(app, ["statements", "show", "ada", "--json"])
    assert r.exit_code == 0 and '"contributor": "ada"' in r.output
    r = runner.invoke(app, ["ledger", "verify"])
    assert r.exit_code == 0 and "OK" in r.output
    with priced.db.engine.begin() as conn:
        conn.execute(
            text("UPDATE ledger_accounts SET balance_nanos = balance_nanos + 1 WHERE id = 'tenant:acme'")
        )
    r = runner.invoke(app, ["ledger", "verify"])
    assert r.exit_code == 1 and "tenant:acme" in r.output
