"""`constellation tenants link / unlink / contributors` against SQLite and PostgreSQL: the links
that say which contributor identities a tenant's fine-tunes may credit."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from constellation.cli import app
from constellation.config import Settings
from constellation.platform import Platform
from constellation.registry import ownership


def run(cli: CliRunner, *args: str) -> str:
    r = cli.invoke(app, list(args))
    assert r.exit_code == 0, r.output
    return r.output


def test_link_list_unlink(cli: CliRunner, settings: Settings) -> None:
    linked = json.loads(run(cli, "tenants", "link", "acme", "--contributor", "acme-ml", "--json"))
    assert (linked["tenant"], linked["contributor"], linked["created"]) == ("acme", "acme-ml", True)
    again = json.loads(run(cli, "tenants", "link", "acme", "--contributor", "acme-ml", "--json"))
    assert again["created"] is False
    listed = json.loads(run(cli, "tenants", "contributors", "acme", "--json"))
    assert [r["contributor"] for r in listed] == ["acme-ml"]
    run(cli, "tenants", "unlink", "acme", "--contributor", "acme-ml")
    p = Platform(settings).open()
    with p.db.session() as s:
        assert ownership.owned(s, tenant_id="acme") == []
    p.close()


def test_a_contributor_key_needs_the_link(cli: CliRunner) -> None:
    args = ["keys", "create", "--tenant", "acme", "--scope", "contributor:acme-ml", "--json"]
    r = cli.invoke(app, args)
    assert r.exit_code != 0 and "constellation tenants link acme --contributor acme-ml" in r.output
    run(cli, "tenants", "link", "acme", "--contributor", "acme-ml")
    assert json.loads(run(cli, *args))["scopes"] == ["contributor:acme-ml"]


def test_unknown_ids_are_one_line_errors(cli: CliRunner) -> None:
    r = cli.invoke(app, ["tenants", "link", "acme", "--contributor", "nobody"])
    assert r.exit_code != 0 and "constellation contributors add nobody" in r.output
    r = cli.invoke(app, ["tenants", "unlink", "acme", "--contributor", "acme-ml"])
    assert r.exit_code != 0 and "not linked" in r.output
