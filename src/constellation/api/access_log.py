"""One JSON log line and one set of metrics per HTTP request, and the request id that ties them
to the response (`X-Request-Id`), the usage event and the ledger.

The request id is on `request.state.request_id` before anything else runs; the pipeline bills
under it and leaves `request.state.billed = (UsageRecord, Bill)` for the line written here."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from datetime import UTC, datetime
from typing import Any

from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from constellation.api.errors import internal_error
from constellation.api.metrics import Metrics
from constellation.api.pipeline import new_request_id

log = logging.getLogger("constellation.access")


class AccessLog:
    """Pure ASGI, outermost: it sees every answer, the gate's refusals and crashes included."""

    def __init__(self, app: ASGIApp, metrics: Metrics, enabled: bool = True) -> None:
        self.app = app
        self.metrics = metrics
        self.enabled = enabled
        self.templates: list[tuple[str, re.Pattern[str]]] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status, started = time.perf_counter(), 500, False
        request_id = new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        header = (b"x-request-id", request_id.encode())

        async def stamped(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                headers = list(message.get("headers", ()))
                if not any(k.lower() == b"x-request-id" for k, _ in headers):
                    message["headers"] = [*headers, header]
            await send(message)

        try:
            await self.app(scope, receive, stamped)
        except Exception:
            log.exception("unhandled error", extra={"fields": {"request_id": request_id}})
            if not started:  # answer in OpenAI's shape, with the id; else the client sees a cut
                await internal_error()(scope, receive, stamped)
        finally:
            self._record(scope, status, time.perf_counter() - start)

    def _record(self, scope: Scope, status: int, seconds: float) -> None:
        route = self._route(scope)
        self.metrics.requests.labels(scope["method"], route, str(status)).inc()
        self.metrics.latency.labels(scope["method"], route).observe(seconds)
        if self.enabled and log.isEnabledFor(logging.INFO):
            log.info("request", extra={"fields": _fields(scope, route, status, seconds)})

    def _route(self, scope: Scope) -> str:
        """The route's path template (`/api/tenants/{id}`): bounded label values, unlike raw
        paths. A request the gate refused never reached the router: its template is looked up
        among the OpenAPI document's paths."""
        route = getattr(scope.get("route"), "path", None)
        if route is None:
            if self.templates is None:
                paths = scope["app"].openapi()["paths"]
                self.templates = [(path, compile_path(path)[0]) for path in paths]
            route = next((t for t, regex in self.templates if regex.match(scope["path"])), None)
        return route or "unmatched"


def _fields(scope: Scope, route: str, status: int, seconds: float) -> dict[str, Any]:
    state = scope.get("state", {})
    principal = state.get("principal")
    record, bill = state.get("billed", (None, None))
    return {
        "request_id": state.get("request_id"),
        "method": scope["method"],
        "route": route,
        "status": status,
        "latency_s": round(seconds, 6),
        "tenant": principal.tenant_id if principal is not None else None,
        "key_id": principal.key_id if principal is not None else None,
        "model": record.model_name if record is not None else None,
        "input_tokens": record.input_tokens if record is not None else None,
        "output_tokens": record.output_tokens if record is not None else None,
        "usage_status": record.status if record is not None else None,
        "price_nanos": bill.price_nanos if bill is not None else None,
    }


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the record's `fields`, and the
    traceback of an exception, if any."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **getattr(record, "fields", {}),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging(level: str = "info") -> None:
    """Constellation's loggers write JSON lines to stderr (`constellation serve` calls this)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter())
    root = logging.getLogger("constellation")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
