"""The CLI for tenant declarations and acceptances, and `models show` with effective terms,
run through typer's CliRunner against a real SQLite or PostgreSQL database."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from constellation.cli import app
from constellation.config import Settings
from constellation.platform import Platform
from constellation.registry import contributors, datasets, models, tenants
from constellation.registry.tables import Artifact

DIGEST = "0" * 64


@pytest.fixture
def cli(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    """A runner whose commands open the test database; seeded with an NC adapter on an OpenRAIL base."""
    monkeypatch.setenv("CONSTELLATION_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("CONSTELLATION_DB_URL", settings.database_url)
    p = Platform(settings).open()
    with p.db.session() as s:
        contributors.ensure_contributor(s, id="acme", name="ACME", kind="organisation")
        s.add(Artifact(digest=DIGEST, kind="model", size_bytes=0, files={}))
        models.add_model(
            s, name="rail", kind="base", task="embedding", artifact_digest=DIGEST, licence_id="openrail-m",
            author_id="acme",
        )  # fmt: skip
        a = models.add_model(
            s, name="tuned", kind="adapter", task="embedding", artifact_digest=DIGEST,
            licence_id="cc-by-nc-4.0", author_id="acme", base_name="rail",
        )  # fmt: skip
        d = datasets.add_dataset(
            s, name="reviews", artifact_digest=DIGEST, sha256="1" * 64, example_count=3,
            licence_id="cc-by-nc-4.0", provider_id="acme",
        )  # fmt: skip
        models.link_dataset(s, model=a, dataset=d, weight=3)
        tenants.add_tenant(s, id="acme", name="ACME")
    p.close()
    return CliRunner()


def run(cli: CliRunner, *args: str) -> str:
    r = cli.invoke(app, list(args))
    assert r.exit_code == 0, r.output
    return r.output


def test_models_show_prints_effective_terms_with_sources(cli: CliRunner) -> None:
    out = run(cli, "models", "show", "tuned")
    assert "commercial use: no (non-commercial: model 'tuned' (cc-by-nc-4.0)" in out
    assert "dataset 'reviews' (cc-by-nc-4.0)" in out
    assert "(from model 'rail' (openrail-m))" in out and "tenants must accept: openrail-m" in out
    shown = json.loads(run(cli, "models", "show", "tuned", "--json"))
    assert shown["effective_terms"]["acceptance_required"] == ["openrail-m"]


def test_accept_withdraw_and_list(cli: CliRunner) -> None:
    accepted = json.loads(run(cli, "tenants", "accept", "acme", "--license", "openrail-m", "--json"))
    assert (accepted["license"], accepted["via"], accepted["key_id"]) == ("openrail-m", "cli", None)
    listed = json.loads(run(cli, "tenants", "acceptances", "acme", "--json"))
    assert [a["license"] for a in listed] == ["openrail-m"]
    run(cli, "tenants", "withdraw", "acme", "--license", "openrail-m")
    assert json.loads(run(cli, "tenants", "acceptances", "acme", "--json")) == []
    history = json.loads(run(cli, "tenants", "acceptances", "acme", "--all", "--json"))
    assert history[0]["withdrawn_at"] is not None


def test_set_declarations_and_errors_are_one_line(cli: CliRunner) -> None:
    out = json.loads(
        run(
            cli,
            "tenants",
            "set",
            "acme",
            "--declared-use",
            "non-commercial",
            "--monthly-active-users",
            "42",
            "--json",
        )
    )
    assert (out["declared_use"], out["monthly_active_users"]) == ("non-commercial", 42)
    bad = cli.invoke(app, ["tenants", "accept", "acme", "--license", "mit"])
    assert bad.exit_code == 1 and "no use restrictions to accept" in bad.output
