"""CLI fixtures: the `constellation` command pointed at the test's database (SQLite and
PostgreSQL), with tenant `acme` and its contributor identity `acme-ml` registered."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from constellation.config import Settings
from constellation.platform import Platform
from constellation.registry import contributors, tenants


@pytest.fixture
def cli(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("CONSTELLATION_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("CONSTELLATION_DB_URL", settings.database_url)
    p = Platform(settings).open()
    with p.db.session() as s:
        tenants.add_tenant(s, id="acme", name="ACME")
        contributors.add_contributor(s, id="acme-ml", name="ACME ML", kind="organisation")
    p.close()
    return CliRunner()
