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
    ray: Annotated[
        str | None,
        typer.Option(
            "--ray",
            metavar="ADDRESS",
            help="Serve as Ray Serve deployments on the Ray cluster at ADDRESS (auto, HOST:6379, "
            "ray://HOST:10001), or on a local one started here with `--ray local`; needs the "
            '`cluster` extra and PostgreSQL. See the README\'s "Deploying a cluster".',
        ),
    ] = None,
) -> None:
    """Serve the dashboard at / and the API at /v1 (OpenAI-compatible) and /api (admin); docs at /docs.

    The encoder engine runs in worker processes of its own, one per core up to 4
    (CONSTELLATION_ENGINE__ENCODER_WORKERS sets how many; CONSTELLATION_ENGINE__ENCODER_PROCESS=false
    keeps it in this process); see the README's "Processes and threads". With --ray the same app
    runs as Ray Serve deployments: ingress replicas and engine replicas (CONSTELLATION_CLUSTER__*).
    """
    import uvicorn

    from constellation.api.access_log import configure_logging
    from constellation.api.app import create_app

    settings = Settings()
    if ray is not None:
        _serve_on_ray(settings, ray, host=host or settings.host, port=port or settings.port)
        return
    if "encoder_process" not in settings.engine.model_fields_set:
        settings.engine.encoder_process = True  # see EngineLimits.encoder_process
    _check_database(settings)
    configure_logging(log_level)  # JSON lines; ours replace uvicorn's access log
    uvicorn.run(
        create_app(settings),
        host=host or settings.host,
        port=port or settings.port,
        log_level=log_level,
        access_log=not settings.access_log,
    )


def _serve_on_ray(settings: Settings, address: str, *, host: str, port: int) -> None:
    """Deploy on Ray Serve, then wait; Ctrl-C deletes the application (the cluster stays up)."""
    import time

    try:
        from constellation.cluster.deploy import check_cluster_settings, start
    except ImportError as exc:
        raise fail(f"serve --ray needs Ray Serve ({exc.name} is missing): pip install '.[cluster]'")
    try:
        check_cluster_settings(settings)  # before a SQLite file is created, or Ray started
    except ConstellationError as exc:
        raise fail(exc.message) from None
    _check_database(settings)
    try:
        url = start(settings, None if address == "local" else address, host=host, port=port)
    except ConstellationError as exc:
        raise fail(exc.message) from None
    typer.echo(f"serving on Ray Serve at {url} (Ctrl-C to stop)")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        from ray import serve

        serve.delete(settings.cluster.app_name)


def _check_database(settings: Settings) -> None:
    """Open (and migrate) the database here, so a wrong URL fails in one line rather than deep
    inside the server's lifespan."""
    db = Database(settings.database_url)
    try:
        db.open()
    except ConstellationError as exc:
        raise fail(exc.message) from None
    finally:
        db.close()
