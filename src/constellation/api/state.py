"""The app's state as one typed object: what `create_app`'s lifespan opens at start-up and
closes at shutdown. Routes reach it through `deps.StateDep`; code holding the app, `state_of`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from constellation.registry.db import DatabaseUnavailable

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from constellation.api.deps import KeyCache
    from constellation.api.engines import Engines
    from constellation.api.metrics import Metrics
    from constellation.api.ratelimit import RateLimiter
    from constellation.api.resolver import Resolver
    from constellation.config import Settings
    from constellation.economy.meter import Meter
    from constellation.finetune.jobs import JobManager
    from constellation.platform import Platform
    from constellation.workflows.service import Runtime


@dataclass(slots=True)
class AppState:
    """Everything a request may need beyond its own body, opened once per app."""

    settings: Settings
    metrics: Metrics
    device_class: str  # "cpu" or "gpu": the price book's compute rate
    platform: Platform
    resolver: Resolver
    keys: KeyCache  # authenticated API keys, briefly
    engines: Engines
    meter: Meter | None  # None only when CONSTELLATION_METERING=false (benchmarks)
    finetunes: JobManager
    limiter: RateLimiter
    ready: bool = True  # false once shutdown begins: /readyz answers 503
    workflow_runtime: Runtime | None = None  # made on first workflow run (workflows/service.py)

    def forget_cached(self) -> None:
        """Drop every short-lived registry cache this process keeps (see app.ForgetCachedRegistry)."""
        self.resolver.clear()
        self.keys.clear()
        self.limiter.clear()  # it caches tenants' own limits
        if self.meter is not None:
            self.meter.invalidate_prices()


def state_of(app: Starlette) -> AppState:
    """The app's state, or a 503 while it is starting (before its lifespan has opened it)."""
    state: AppState | None = app.state.constellation
    if state is None:
        raise DatabaseUnavailable("starting up; retry shortly")
    return state


def started(app: Starlette) -> AppState | None:
    """The app's state once its lifespan has opened it, else None (for readiness and metrics)."""
    state: AppState | None = app.state.constellation
    return state
