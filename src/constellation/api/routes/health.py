"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from constellation.api.deps import StateDep
from constellation.api.errors import error_response
from constellation.api.protocol.responses import errors
from constellation.api.schemas.health import StatusOut
from constellation.api.state import started
from constellation.errors import EngineUnavailable
from constellation.registry.db import DatabaseUnavailable

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=StatusOut)
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz", response_model=None, responses={200: {"model": StatusOut}, **errors(503)})
def readyz(request: Request) -> dict[str, str] | Response:
    """The process can serve: started, its database answers, and no engine worker is down."""
    state = started(request.app)
    if state is None or not state.ready:
        return error_response(DatabaseUnavailable("starting up; retry shortly"))
    try:
        with state.platform.db.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        return error_response(DatabaseUnavailable(f"database unreachable: {type(exc).__name__}"))
    why = state.engines.unready()
    if why is not None:
        return error_response(EngineUnavailable(f"{why}; retry shortly"))
    return {"status": "ready"}


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
)
def metrics(state: StateDep) -> Response:
    """Prometheus text exposition (engine and ledger counters are read now: api/metrics.py)."""
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
