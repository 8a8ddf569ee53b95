"""FastAPI app factory: opens the platform in the lifespan, installs error handlers, metrics
and routers. `create_app(settings)` is what `constellation serve`, tests and Ray Serve use."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from constellation import __version__
from constellation.api.access_log import AccessLog
from constellation.api.deps import KeyCache
from constellation.api.engines import Engines
from constellation.api.errors import install_error_handlers
from constellation.api.gate import Gate
from constellation.api.metrics import Metrics
from constellation.api.ratelimit import build_limiter, tenant_loader
from constellation.api.resolver import Resolver
from constellation.api.routes import (
    admin,
    billing,
    docs,
    encoders,
    finetunes,
    generation,
    health,
    insights,
    licences,
    models,
    providers,
    tenants,
    web,
    workflows,
)
from constellation.api.state import AppState, started
from constellation.config import Settings
from constellation.economy.meter import Meter
from constellation.finetune.jobs import JobManager
from constellation.platform import Platform
from constellation.providers.pool import Upstreams
from constellation.runtime import tune_interpreter

DESCRIPTION = """Constellation serves many specialised open models -- base models, LoRA adapters and
fine-tunes -- behind one OpenAI-compatible API, and prices every request by its contributions.

Authenticate with `Authorization: Bearer <key>`; create keys with `constellation keys create`."""


def _telemetry(settings: Settings) -> dict[str, Any]:
    """FastAPI's `telemetry=` argument turning its OpenTelemetry bridge off, where it has one."""
    if settings.otel or "telemetry" not in inspect.signature(FastAPI.__init__).parameters:
        return {}
    return {"telemetry": {"tracing": False, "metrics": False, "logs": False}}


EngineFactory = Callable[[Settings, Upstreams], Engines]


def local_engines(settings: Settings, upstreams: Upstreams) -> Engines:
    return Engines(settings.engine, upstreams)


def create_app(settings: Settings | None = None, *, engines: EngineFactory = local_engines) -> FastAPI:
    """The app; `engines` builds what serves its models (cluster/ passes Ray Serve handles)."""
    settings = settings or Settings()
    metrics = Metrics()
    device_class = "gpu" if settings.engine.device.startswith("cuda") else "cpu"

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        tune_interpreter(settings)
        platform = Platform(settings).open()
        upstreams = Upstreams(
            secrets_file=settings.provider_secrets_file, tokenizer=settings.provider_tokenizer
        )
        served = engines(settings, upstreams)
        meter = Meter(platform.db, settings.prices) if settings.metering else None
        state = AppState(
            settings=settings,
            metrics=metrics,
            device_class=device_class,
            platform=platform,
            resolver=Resolver(platform),
            keys=KeyCache(),
            engines=served,
            meter=meter,
            finetunes=JobManager(platform, meter),
            limiter=build_limiter(settings.rate_limits, settings.redis_url, tenant_loader(platform)),
        )
        app.state.constellation = state
        try:
            yield
        finally:
            state.ready = False
            state.finetunes.close()  # before the meter: a stopped job is billed as it ends
            state.engines.close()
            if state.workflow_runtime is not None:
                state.workflow_runtime.close()
            await upstreams.aclose()
            if state.meter is not None:
                state.meter.close()
            await state.limiter.close()
            platform.close()

    app = FastAPI(
        title="Constellation",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # docs.py serves /docs without a CDN; ReDoc would need one, so it is off
        redoc_url=None,
        **_telemetry(settings),
    )
    docs.mount_assets(app)
    docs.install_openapi(app)
    app.state.constellation = None  # an AppState once the lifespan has opened the platform
    metrics.watch(lambda: started(app))
    app.add_middleware(ForgetCachedRegistry)
    app.add_middleware(Gate, settings=settings)
    app.add_middleware(AccessLog, metrics=metrics, enabled=settings.access_log)  # outermost

    install_error_handlers(app)
    for router in (
        health.router,
        docs.router,
        models.router,
        encoders.router,
        generation.router,
        admin.router,
        billing.router,
        insights.router,
        finetunes.router,
        licences.router,
        providers.router,
        tenants.router,
        workflows.router,
        workflows.admin_router,
        web.router,
    ):
        app.include_router(router)
    return app


class ForgetCachedRegistry:
    """A successful admin write (new model, terms, limits, declarations, a revoked key...) is
    visible to the very next request: the write commits, the resolver's, the key cache's and the
    price book's short-lived caches are dropped, and only then does the response leave."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] == "GET" or not scope["path"].startswith("/api/"):
            await self.app(scope, receive, send)
            return

        async def forget_then_send(message: Message) -> None:
            # SessionDep has committed by now (it ends with the handler, see deps.py): forget,
            # then let the answer start, so no client sees it before the caches are gone.
            if message["type"] == "http.response.start" and message["status"] < 400:
                state = started(scope["app"])
                if state is not None:
                    state.forget_cached()
            await send(message)

        await self.app(scope, receive, forget_then_send)
