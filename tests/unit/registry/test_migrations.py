"""Migrations: several server processes starting together against one fresh database all come
up, and it ends at the heads exactly once (PostgreSQL's advisory lock, SQLite's exclusive one)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import text

from constellation import migrations
from constellation.registry.db import make_engine

SERVERS = 4
# One server's start: import, report ready, wait for the go, migrate.
SERVER = """
import sys
from constellation.registry.db import make_engine, migrate
print("ready", flush=True)
sys.stdin.readline()
migrate(make_engine(sys.argv[1]))
"""


def _migrate_together(url: str) -> list[str]:
    """SERVERS processes migrate `url` at once (released together once all have imported); the
    stderr of those that failed."""
    servers = [
        subprocess.Popen(
            [sys.executable, "-c", SERVER, url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(SERVERS)
    ]
    try:
        for p in servers:
            assert p.stdout is not None and p.stdout.readline() == "ready\n", p.communicate()[1]
        for p in servers:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        failed = []
        for p in servers:
            _, err = p.communicate(timeout=120)
            if p.returncode != 0:
                failed.append(err)
        return failed
    finally:
        for p in servers:
            p.kill()


def _applied(url: str) -> list[str]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return sorted(conn.execute(text("SELECT version_num FROM alembic_version")).scalars())
    finally:
        engine.dispose()


def _heads() -> list[str]:
    return sorted(ScriptDirectory.from_config(migrations.config()).get_heads())


@pytest.mark.slow
@pytest.mark.postgres
def test_servers_starting_together_migrate_postgresql_once(pg_schemas) -> None:
    with pg_schemas.fresh(migrated=False) as url:
        assert _migrate_together(url) == []
        assert _applied(url) == _heads()


@pytest.mark.slow
def test_servers_starting_together_migrate_sqlite_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    assert _migrate_together(url) == []
    assert _applied(url) == _heads()


def test_every_script_inside_the_package_is_a_revision() -> None:
    scripts = ScriptDirectory.from_config(migrations.config())
    files = list((Path(migrations.__file__).parent / "versions").glob("*.py"))
    assert Path(scripts.dir) == Path(migrations.__file__).parent
    assert len(list(scripts.walk_revisions())) == len(files) > 0
