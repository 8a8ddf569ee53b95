"""The gate's rule: every route under an authenticated prefix refuses a caller without a key by
itself, so the gate's earlier refusal (before the body is read) never refuses a request its
route would have served."""

from __future__ import annotations

import re

import httpx
import pytest

from constellation.api.app import create_app
from constellation.api.gate import AUTHENTICATED, Gate
from constellation.config import Settings

pytestmark = pytest.mark.anyio


async def test_every_authenticated_route_refuses_a_caller_without_a_key(settings: Settings) -> None:
    app = create_app(settings)
    app.user_middleware = [m for m in app.user_middleware if m.cls is not Gate]  # the routes alone
    paths = app.openapi()["paths"]
    calls = [
        (method.upper(), re.sub(r"\{[^}]+\}", "x", path))
        for path, ops in paths.items()
        if path.startswith(AUTHENTICATED)
        for method in ops
    ]
    assert len(calls) > 20
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            served = {}
            for method, path in calls:
                r = await client.request(method, path, json={} if method != "GET" else None)
                if r.status_code != 401:
                    served[f"{method} {path}"] = r.status_code
    assert served == {}
