"""`constellation serve`: check the database, then run the API with uvicorn."""

from __future__ import annotations

from typing import Annotated

import typer

from constellation.cli._common import fail
from constellation.config import Settings
from constellation.errors import ConstellationError
from constellation.registry.db import Database


def serve(
    host: Annotated[
        str | None, typer.Option(help="Bind address (default CONSTELLATION_HOST or 127.0.0.1).")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port (default CONSTELLATION_PORT or 8000).")] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Serve the dashboard at / and the API at /v1 (OpenAI-compatible) and /api (admin); docs at /docs.

    The encoder engine runs in worker processes of its own, one per core up to 4
    (CONSTELLATION_ENGINE__ENCODER_WORKERS sets how many; CONSTELLATION_ENGINE__ENCODER_PROCESS=false
    keeps it in this process); see the README's "Processes and threads".
    """
    import uvicorn

    from constellation.api.access_log import configure_logging
    from constellation.api.app import create_app

    settings = Settings()
    if "encoder_process" not in settings.engine.model_fields_set:
        settings.engine.encoder_process = True  # see EngineLimits.encoder_process
    db = Database(settings.database_url)
    try:
        db.open()  # fail here, in one line, rather than deep inside the server's lifespan
    except ConstellationError as exc:
        raise fail(exc.message) from None
    finally:
        db.close()
    configure_logging(log_level)  # JSON lines; ours replace uvicorn's access log
    uvicorn.run(
        create_app(settings),
        host=host or settings.host,
        port=port or settings.port,
        log_level=log_level,
        access_log=not settings.access_log,
    )
