"""The database's Alembic migrations, shipped inside the package so that an installed wheel can
migrate; `config()` builds in code what an `alembic.ini` would say."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy import Connection

SCRIPTS = Path(__file__).resolve().parent


def config(connection: Connection | None = None) -> Config:
    """Alembic's configuration: the scripts beside this module, and the connection env.py runs on
    (none for offline use such as `alembic.command.revision(config(), "message")`)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPTS))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg
