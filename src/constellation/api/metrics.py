"""Prometheus metrics for one app instance (its own registry: no process globals that tests
must reset), plus the middleware that counts requests by route and status."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from fastapi import Request, Response
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "constellation_http_requests", "HTTP requests", ["route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "constellation_http_latency_seconds", "HTTP latency", ["route"], registry=self.registry
        )
        self.engine = Gauge(
            "constellation_engine", "Engine statistics", ["engine", "stat"], registry=self.registry
        )

    async def middleware(
        self, request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        start = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        self.requests.labels(path, str(response.status_code)).inc()
        self.latency.labels(path).observe(time.perf_counter() - start)
        return response
