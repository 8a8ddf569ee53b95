"""The demo constellation on reduced data: built once (for the session), rebuilt with nothing
trained, then the journeys it exists for -- classify with each adapter, chat, the CC-BY-NC adapter
refused for a commercial tenant and served to a non-commercial one, an invoice and a contributor
statement."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from tests.conftest import DemoBuild

from constellation.api.app import create_app
from constellation.config import Settings
from constellation.finetune.demo import DemoBuilder, DemoOptions
from constellation.platform import Platform

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def build(settings: Settings, chat_base: Path) -> list[str]:
    """The demo on the reduced data tests/conftest.py's demo_build uses."""
    platform = Platform(settings).open()
    try:
        quick = DemoOptions(max_examples=30, epochs=1, chat_base=chat_base)
        result = DemoBuilder(platform, options=quick, say=lambda _m: None).build()
    finally:
        platform.close()
    return result.trained


async def test_demo_builds_idempotently_and_serves_its_journeys(
    demo_build: DemoBuild, tmp_path: Path
) -> None:
    adapters = ("sentiment-v1", "ticket-intent-v1", "topic-v1", "urgency-v1")
    assert {*adapters, "pirate-v1", "support-reply-v1", "haiku-v1"} <= set(demo_build.trained)  # built afresh
    data = tmp_path / "data"
    shutil.copytree(demo_build.data, data)
    settings = Settings(data_dir=data, db_url=f"sqlite:///{data / 'constellation.db'}")
    assert build(settings, demo_build.chat_base) == []  # keyed by data: a second run trains nothing
    keys = __import__("json").loads((settings.data_dir / "demo-keys.json").read_text())
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://demo", timeout=120) as c:
            await _journeys(c, keys)


def _h(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def _journeys(c: httpx.AsyncClient, keys: dict[str, str]) -> None:
    demo, lab = _h(keys["demo"]), _h(keys["demo-lab"])
    listed = {m["id"]: m["constellation"] for m in (await c.get("/v1/models", headers=demo)).json()["data"]}
    assert listed["ticket-intent-v1"]["permitted"] is False and listed["sentiment-v1"]["permitted"] is True
    for model in ("sentiment-v1", "topic-v1", "urgency-v1"):
        r = await c.post("/v1/classify", headers=demo, json={"model": model, "input": ["the site is down"]})
        assert r.status_code == 200, r.text
        ext = r.json()["constellation"]
        assert (
            ext["price_nanos"] > 0 and sum(leg["amount_nanos"] for leg in ext["split"]) == ext["price_nanos"]
        )
    refused = await c.post(
        "/v1/classify", headers=demo, json={"model": "ticket-intent-v1", "input": "refund"}
    )
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "license_non_commercial"
    served = await c.post("/v1/classify", headers=lab, json={"model": "ticket-intent-v1", "input": "refund"})
    assert served.status_code == 200, served.text
    chat = await c.post(
        "/v1/chat/completions",
        headers=demo,
        json={"model": "pirate-v1", "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 8},
    )
    assert chat.status_code == 200, chat.text
    haiku = {"model": "haiku-v1", "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 4}
    refused_chat = await c.post("/v1/chat/completions", headers=demo, json=haiku)
    assert refused_chat.status_code == 403, refused_chat.text
    assert refused_chat.json()["error"]["code"] == "license_non_commercial"
    assert (await c.post("/v1/chat/completions", headers=lab, json=haiku)).status_code == 200
    await _workflow_journeys(c, demo, lab)
    period = datetime.now(UTC).strftime("%Y-%m")
    invoice = (await c.get(f"/api/invoices?period={period}", headers=demo)).json()
    assert invoice["workflow_runs"] and invoice["workflow_runs"][0]["steps"]
    assert invoice["total_nanos"] > 0 and invoice["lines_by_model"] and invoice["notices"]
    statement = await c.get(
        f"/api/statements?contributor=northwind-reviews&period={period}",
        headers=_h(keys["northwind-reviews"]),
    )
    assert statement.status_code == 200, statement.text
    assert statement.json()["total_nanos"] > 0


async def _workflow_journeys(c: httpx.AsyncClient, demo: dict[str, str], lab: dict[str, str]) -> None:
    """The triage workflow runs for the commercial tenant; the one reaching the CC-BY-NC models is
    refused before any step, naming the step, and served to the non-commercial tenant."""
    triage = {"inputs": {"message": "The checkout page is down for everyone"}, "seed": 1}
    r = await c.post("/v1/workflows/support-triage/runs", headers=demo, json=triage)
    assert r.status_code == 200, r.text
    ext = r.json()["constellation"]
    assert {"sentiment", "urgency"} <= {s["step"] for s in ext["steps"]} and ext["fee"]["price_nanos"] > 0
    assert sum(leg["amount_nanos"] for leg in ext["split"]) == ext["price_nanos"]
    chat = {"model": "support-triage", "messages": [{"role": "user", "content": "I love it, thanks!"}]}
    assert (await c.post("/v1/chat/completions", headers=demo, json=chat)).status_code == 200
    haiku = {"inputs": {"message": "I want my money back"}}
    refused = await c.post("/v1/workflows/ticket-haiku/runs", headers=demo, json=haiku)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "license_non_commercial"
    assert "step 'intent'" in refused.json()["error"]["message"]
    assert (await c.post("/v1/workflows/ticket-haiku/runs", headers=lab, json=haiku)).status_code == 200
