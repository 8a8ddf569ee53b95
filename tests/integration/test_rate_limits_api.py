"""Rate limits through the app: 429 with Retry-After once a key's or a tenant's requests or
tokens per minute are spent, a tenant's own limits set by an admin, and buckets in Redis that
two app instances share."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.integration.conftest import Api

from constellation.api.app import create_app
from constellation.api.ratelimit import RedisBuckets
from constellation.api.state import state_of
from constellation.config import RateLimits, Settings

pytestmark = pytest.mark.anyio


@pytest.fixture
def settings(tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    """SQLite (the limiter reads no database per request); limits from the test's parameter."""
    limits: dict[str, Any] = getattr(request, "param", {})
    return Settings(
        data_dir=tmp_path / "data",
        db_url=f"sqlite:///{tmp_path / 'test.db'}",
        rate_limits=RateLimits(**limits),
    )


@pytest.fixture
async def served(api: Api, minilm_path: Path) -> Api:
    r = await api.register(minilm_path, name="minilm")
    assert r.status_code == 201, r.text
    warm = await embed(api, api.key("warm-up"))  # loads the model: refills stay small in the tests
    assert warm.status_code == 200, warm.text
    return api


async def embed(api: Api, headers: dict[str, str], text: str = "hello") -> httpx.Response:
    return await api.client.post("/v1/embeddings", headers=headers, json={"model": "minilm", "input": text})


def assert_limited(r: httpx.Response, says: str) -> None:
    assert r.status_code == 429, r.text
    assert int(r.headers["retry-after"]) >= 1
    err = r.json()["error"]
    assert err["type"] == "rate_limit_error" and err["code"] == "rate_limit_exceeded"
    assert says in err["message"], err["message"]


@pytest.mark.parametrize("settings", [{"key_rpm": 2}], indirect=True)
async def test_a_key_past_its_requests_per_minute_gets_429(served: Api) -> None:
    one, two = served.key("acme"), served.key("acme")
    assert [(await embed(served, one)).status_code for _ in range(2)] == [200, 200]
    r = await embed(served, one)
    assert_limited(r, "(2 requests per minute)")
    assert 25 <= int(r.headers["retry-after"]) <= 30  # one request refills in 60 s / 2
    assert r.headers["x-ratelimit-limit-requests"] == "2"
    assert r.headers["x-ratelimit-remaining-requests"] == "0"
    assert (await embed(served, two)).status_code == 200  # per key: the tenant's other key is fine


@pytest.mark.parametrize("settings", [{"tenant_rpm": 3}], indirect=True)
async def test_a_tenant_past_its_requests_per_minute_gets_429_on_every_key(served: Api) -> None:
    one, two = served.key("acme"), served.key("acme")
    assert [(await embed(served, h)).status_code for h in (one, two, one)] == [200] * 3
    assert_limited(await embed(served, two), "tenant 'acme' (3 requests per minute)")
    assert_limited(await embed(served, one), "tenant 'acme'")
    assert (await embed(served, served.key("globex"))).status_code == 200


@pytest.mark.parametrize("settings", [{"tenant_rpm": 5}], indirect=True)
async def test_concurrent_requests_pass_exactly_the_limit(served: Api) -> None:
    h = served.key("acme")
    answers = await asyncio.gather(*(embed(served, h, f"text {i}") for i in range(20)))
    assert sorted(r.status_code for r in answers) == [200] * 5 + [429] * 15


@pytest.mark.parametrize("settings", [{"tenant_tpm": 100}], indirect=True)
async def test_a_tenant_past_its_tokens_per_minute_gets_429(served: Api) -> None:
    h = served.key("acme")
    assert (await embed(served, h, "word " * 30)).status_code == 200  # estimated 52 tokens
    r = await embed(served, h, "word " * 30)
    assert_limited(r, "tenant 'acme' (100 tokens per minute)")
    assert r.headers["x-ratelimit-limit-tokens"] == "100"
    too_big = await embed(served, h, "word " * 90)  # estimated 152: more than a whole minute's
    assert_limited(too_big, "estimated 152 tokens exceed the limit")
    assert (await embed(served, h, "hi")).status_code == 200  # a small one still fits


async def test_an_admin_sets_a_tenants_own_limits_and_resets_them(served: Api) -> None:
    h = served.key("acme")
    r = await served.client.patch("/api/tenants/acme", headers=served.admin, json={"requests_per_minute": 1})
    assert r.status_code == 200 and r.json()["requests_per_minute"] == 1, r.text
    assert r.json()["tokens_per_minute"] is None and r.json()["declared_use"] == "commercial"
    assert (await embed(served, h)).status_code == 200
    assert_limited(await embed(served, h), "tenant 'acme' (1 requests per minute)")
    assert (await embed(served, served.key("globex"))).status_code == 200  # others keep the default
    r = await served.client.patch(
        "/api/tenants/acme", headers=served.admin, json={"requests_per_minute": None}
    )
    assert r.status_code == 200 and r.json()["requests_per_minute"] is None
    assert (await embed(served, h)).status_code == 200  # back to the server's default: unlimited


async def test_a_limit_out_of_bounds_is_a_400(served: Api) -> None:
    for bad in (-1, 10**13):
        r = await served.client.patch(
            "/api/tenants/acme", headers=served.admin, json={"tokens_per_minute": bad}
        )
        assert r.status_code == 400 and r.json()["error"]["param"] == "tokens_per_minute", r.text


@pytest.mark.parametrize("settings", [{"key_rpm": 2}], indirect=True)
async def test_two_app_instances_share_buckets_in_redis(
    served: Api, settings: Settings, redis_url: str
) -> None:
    h = served.key("acme")  # a new key id: buckets of its own in the shared Redis
    shared = settings.model_copy(update={"redis_url": redis_url})
    first, second = create_app(shared), create_app(shared)
    async with first.router.lifespan_context(first), second.router.lifespan_context(second):
        assert isinstance(state_of(first).limiter.buckets, RedisBuckets)
        clients = [
            httpx.AsyncClient(transport=httpx.ASGITransport(app=a), base_url="http://test", timeout=60)
            for a in (first, second)
        ]
        body = {"model": "minilm", "input": "hello"}
        assert (await clients[0].post("/v1/embeddings", headers=h, json=body)).status_code == 200
        assert (await clients[1].post("/v1/embeddings", headers=h, json=body)).status_code == 200
        for c in clients:
            assert_limited(await c.post("/v1/embeddings", headers=h, json=body), "(2 requests per minute)")
        for c in clients:
            await c.aclose()


@pytest.mark.parametrize("settings", [{"tenant_tpm": 40}], indirect=True)
async def test_generation_counts_max_tokens_against_tokens_per_minute(
    api: Api, lm_dirs: tuple[Path, Path]
) -> None:
    r = await api.register(lm_dirs[0], name="tiny-llama", task="causal-lm", author="lab")
    assert r.status_code == 201, r.text
    h, req = api.key("acme"), {"model": "tiny-llama", "prompt": "hi", "temperature": 0}
    assert (
        await api.client.post("/v1/completions", headers=h, json={**req, "max_tokens": 4})
    ).status_code == 200
    r = await api.client.post("/v1/completions", headers=h, json={**req, "max_tokens": 60})
    assert_limited(r, "tokens exceed the limit of tenant 'acme' (40 tokens per minute)")
