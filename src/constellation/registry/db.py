"""Database plumbing: engine creation (SQLite WAL + foreign keys, or PostgreSQL), sessions,
and the package's Alembic migrations applied at start, one server process at a time."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, func, select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from constellation.errors import ConstellationError


class DatabaseUnavailable(ConstellationError):
    status = 503
    type = "server_error"
    code = "database_unavailable"


# The key of the PostgreSQL advisory lock that migrations run under: "constell" in ASCII, the
# same in every server process so that those starting together take turns.
MIGRATION_LOCK = 0x636F6E7374656C6C


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()


def make_engine(url: str) -> Engine:
    """An engine for `url`; SQLite gets WAL mode and enforced foreign keys on every connection."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # Many request threads read at once (WAL lets them); one writer at a time is SQLite's rule.
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, pool_size=32, max_overflow=64
        )

        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def check_reachable(engine: Engine) -> None:
    """Raise DatabaseUnavailable with one readable line when the database cannot be reached."""
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise DatabaseUnavailable(
            f"cannot reach the database at {engine.url.render_as_string(hide_password=True)}: {reason}. "
            "Start it, or set CONSTELLATION_DB_URL to a reachable database."
        ) from None


def migrate(engine: Engine) -> None:
    """Apply every Alembic migration up to all heads (idempotent); features add independent branches.

    One transaction, under a lock held until it ends: servers started together against one
    database take turns, and each after the first finds the heads applied and does nothing."""
    from alembic import command

    from constellation import migrations

    with engine.connect() as conn:
        _lock_for_migration(conn)
        command.upgrade(migrations.config(conn), "heads")
        conn.commit()


def _lock_for_migration(conn: Connection) -> None:
    """PostgreSQL: a transaction-scoped advisory lock. SQLite: BEGIN EXCLUSIVE, the database's own
    write lock taken before the first read (the driver would begin only at the first write), which
    also makes the migration atomic; others wait for it up to the connection's busy timeout."""
    if conn.dialect.name == "postgresql":
        conn.execute(select(func.pg_advisory_xact_lock(MIGRATION_LOCK)))
    elif conn.dialect.name == "sqlite":
        conn.exec_driver_sql("BEGIN EXCLUSIVE")


class Database:
    """An engine plus a session factory; `session()` commits on success, rolls back on error."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    def open(self) -> None:
        check_reachable(self.engine)
        migrate(self.engine)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions() as s:
            try:
                yield s
                s.commit()
            except BaseException:
                s.rollback()
                raise

    def close(self) -> None:
        self.engine.dispose()
