"""FastAPI app factory: opens the platform in the lifespan, installs error handlers, metrics
and routers. `create_app(settings)` is what `constellation serve`, tests and Ray Serve use."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response

from constellation import __version__
from constellation.api.deps import KeyCache
from constellation.api.engines import Engines
from constellation.api.errors import install_error_handlers
from constellation.api.metrics import Metrics
from constellation.api.resolver import Resolver
from constellation.api.routes import (
    admin,
    billing,
    docs,
    encoders,
    finetunes,
    generation,
    health,
    licences,
    models,
    tenants,
    web,
)
from constellation.config import Settings
from constellation.economy.meter import Meter
from constellation.finetune.jobs import JobManager
from constellation.platform import Platform

DESCRIPTION = """Constellation serves many specialised open models -- base models, LoRA adapters and
fine-tunes -- behind one OpenAI-compatible API, and prices every request by its contributions.

Authenticate with `Authorization: Bearer <key>`; create keys with `constellation keys create`."""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        platform = Platform(settings).open()
        app.state.platform = platform
        app.state.resolver = Resolver(platform)
        app.state.keys = KeyCache()
        app.state.engines = Engines(settings.engine)
        app.state.meter = Meter(platform.db, settings.prices) if settings.metering else None
        app.state.finetunes = JobManager(platform)
        app.state.ready = True
        try:
            yield
        finally:
            app.state.ready = False
            app.state.engines.close()
            if app.state.meter is not None:
                app.state.meter.close()

            app.state.finetunes.close()
            platform.close()

    app = FastAPI(
        title="Constellation", version=__version__, description=DESCRIPTION, lifespan=lifespan, docs_url=None
    )
    docs.mount_assets(app)
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.ready = False
    app.state.device_class = "gpu" if settings.engine.device.startswith("cuda") else "cpu"
    app.middleware("http")(metrics.middleware)
    app.middleware("http")(_forget_cached_registry)

    install_error_handlers(app)
    for router in (
        health.router,
        docs.router,
        models.router,
        encoders.router,
        generation.router,
        admin.router,
        billing.router,
        finetunes.router,
        licences.router,
        tenants.router,
        web.router,
    ):
        app.include_router(router)
    return app


async def _forget_cached_registry(
    request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    """A successful admin write (new model, terms, tenant declarations...) is visible to the very
    next request: drop the resolver's and the price book's short-lived caches."""
    response = await call_next(request)
    if request.method != "GET" and request.url.path.startswith("/api/") and response.status_code < 400:
        state = request.app.state
        if getattr(state, "resolver", None) is not None:
            state.resolver.invalidate()
        if getattr(state, "keys", None) is not None:
            state.keys.clear()

        if getattr(state, "meter", None) is not None:
            state.meter.invalidate_prices()
    return response
