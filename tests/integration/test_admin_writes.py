"""Admin writes take effect before their response leaves: a revoked key is refused by the very
next request, and a tenant's new declared use applies to the very next inference call.

The client is `EagerTransport`: like a real server, it hands the response over as soon as its
last byte is sent, while whatever the app still runs afterwards (dependency teardown, middleware
epilogues) runs on. httpx's ASGITransport waits for all of that, which hides the race."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.integration.conftest import Api

pytestmark = pytest.mark.anyio


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    return sqlite_url


class EagerTransport(httpx.AsyncBaseTransport):
    """Runs each request as its own task and answers once the response body is complete."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.tasks: set[asyncio.Task[None]] = set()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": request.method,
            "headers": [(k.lower(), v) for k, v in request.headers.raw],
            "scheme": request.url.scheme,
            "path": request.url.path,
            "raw_path": request.url.raw_path.split(b"?")[0],
            "query_string": request.url.query,
            "server": (request.url.host, request.url.port),
            "client": ("127.0.0.1", 123),
            "root_path": "",
        }
        start: dict[str, Any] = {}
        parts: list[bytes] = []
        complete, closed = asyncio.Event(), asyncio.Event()
        received = False

        async def receive() -> dict[str, Any]:
            nonlocal received
            if received:
                await closed.wait()
                return {"type": "http.disconnect"}
            received = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                parts.append(message.get("body", b""))
                if not message.get("more_body", False):
                    complete.set()

        task = asyncio.create_task(self.app(scope, receive, send))
        self.tasks.add(task)
        task.add_done_callback(lambda t: (self.tasks.discard(t), closed.set()))
        waiter = asyncio.create_task(complete.wait())
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if not complete.is_set():
            task.result()  # the app failed without answering: raise its error here
        return httpx.Response(start["status"], headers=start.get("headers", []), content=b"".join(parts))

    async def aclose(self) -> None:
        await asyncio.gather(*list(self.tasks), return_exceptions=True)


@pytest.fixture
async def eager(api: Api) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=EagerTransport(api.app), base_url="http://test") as client:
        yield client


async def test_a_revoked_key_is_refused_by_the_very_next_request(api: Api, eager: httpx.AsyncClient) -> None:
    accepted = 0
    for _ in range(100):
        h = api.key("acme")
        key_id = h["Authorization"].split("_")[1]  # cst_<id>_<secret>
        assert (await eager.get("/api/me", headers=h)).status_code == 200  # now cached
        revoked = await eager.delete(f"/api/keys/{key_id}", headers=api.admin)
        assert revoked.status_code == 200, revoked.text
        after = await eager.get("/api/me", headers=h)
        accepted += after.status_code == 200
        assert after.status_code in (200, 401), after.text
    assert accepted == 0, f"{accepted} of 100 immediate uses of a revoked key were accepted"


async def test_a_declared_use_switch_applies_to_the_very_next_request(
    api: Api, eager: httpx.AsyncClient, minilm_path: Path
) -> None:
    r = await api.register(minilm_path, name="minilm-nc", license="cc-by-nc-4.0")
    assert r.status_code == 201, r.text
    h = api.key("lab", declared_use="non-commercial")
    body = {"model": "minilm-nc", "input": "hello"}
    for _ in range(15):
        assert (await eager.post("/v1/embeddings", headers=h, json=body)).status_code == 200  # cached
        switched = await eager.patch(
            "/api/tenants/lab", headers=api.admin, json={"declared_use": "commercial"}
        )
        assert switched.status_code == 200, switched.text
        refused = await eager.post("/v1/embeddings", headers=h, json=body)
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"]["code"] == "license_non_commercial"
        back = {"declared_use": "non-commercial"}
        assert (await eager.patch("/api/tenants/lab", headers=api.admin, json=back)).status_code == 200
