"""`constellation providers add/expose/list/show/rm` and `tenants set --data-stays-on-platform`
on SQLite and PostgreSQL: the key's variable is named, never printed as a value."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from constellation.cli import app

SECRET = "sk-cli-never-printed-0123456789"


def _ok(cli: CliRunner, *args: str) -> str:
    r = cli.invoke(app, list(args))
    assert r.exit_code == 0, r.output
    assert SECRET not in r.output
    return r.output


def test_providers_commands(cli: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOSED_KEY", SECRET)
    _ok(
        cli,
        "providers",
        "add",
        "closedai",
        "--base-url",
        "https://api.example.com/v1",
        "--api-key-env",
        "CLOSED_KEY",
    )
    out = _ok(
        cli, "providers", "expose", "closedai", "--model", "frontier-1", "--as", "frontier",
        "--task", "causal-lm", "--price-per-1k-input", "150", "--price-per-1k-output", "600", "--json",
    )  # fmt: skip
    assert json.loads(out)["models"] == [
        {"name": "frontier", "upstream_model": "frontier-1", "task": "causal-lm"}
    ]
    [row] = json.loads(_ok(cli, "providers", "list", "--json"))
    assert row["api_key_env"] == "CLOSED_KEY" and row["key_present_here"] is True
    assert json.loads(_ok(cli, "models", "show", "frontier", "--json"))["kind"] == "provider"
    shown = json.loads(_ok(cli, "tenants", "set", "acme", "--data-stays-on-platform", "--json"))
    assert shown["data_stays_on_platform"] is True
    r = cli.invoke(app, ["providers", "rm", "closedai"])
    assert r.exit_code == 1 and "frontier" in r.output  # still exposes it
    _ok(cli, "models", "rm", "frontier")
    _ok(cli, "providers", "rm", "closedai")
    r = cli.invoke(
        app, ["providers", "add", "bad", "--base-url", "http://x", "--api-key-env", "CONSTELLATION_DB_URL"]
    )
    assert r.exit_code == 1 and "CONSTELLATION_" in r.output
