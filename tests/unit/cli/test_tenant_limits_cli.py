"""`constellation tenants set ID --rpm N --tpm N` (and `--default-limits`) against SQLite and
PostgreSQL, and the server-wide defaults read from CONSTELLATION_RATE_LIMITS__*."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from constellation.cli import app
from constellation.config import Settings


def tenant_set(cli: CliRunner, *args: str) -> dict[str, object]:
    r = cli.invoke(app, ["tenants", "set", "acme", *args, "--json"])
    assert r.exit_code == 0, r.output
    shown: dict[str, object] = json.loads(r.output)
    return shown


def test_tenants_set_rate_limits_and_back_to_the_defaults(cli: CliRunner) -> None:
    shown = tenant_set(cli, "--rpm", "600", "--tpm", "200000")
    assert (shown["requests_per_minute"], shown["tokens_per_minute"]) == (600, 200_000)
    shown = tenant_set(cli, "--tpm", "0")  # 0 = unlimited; the request limit stays
    assert (shown["requests_per_minute"], shown["tokens_per_minute"]) == (600, 0)
    shown = tenant_set(cli, "--default-limits")
    assert (shown["requests_per_minute"], shown["tokens_per_minute"]) == (None, None)
    bad = cli.invoke(app, ["tenants", "set", "acme", "--rpm", "-5"])
    assert bad.exit_code != 0 and "requests_per_minute must be 0 (unlimited)" in bad.output


def test_default_limits_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONSTELLATION_RATE_LIMITS__TENANT_TPM", "90000")
    monkeypatch.setenv("CONSTELLATION_REDIS_URL", "redis://127.0.0.1:6379/0")
    s = Settings()
    assert (s.rate_limits.tenant_tpm, s.rate_limits.key_rpm) == (90_000, 0)
    assert s.redis_url == "redis://127.0.0.1:6379/0"
