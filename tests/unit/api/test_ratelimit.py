"""Token buckets for rate limits: refill and refusal on a fake clock, exactly the limit passing
under concurrency (asyncio and threads), and the Redis store shared by two limiters."""

from __future__ import annotations

import asyncio
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from constellation.api.deps import Principal
from constellation.api.ratelimit import Buckets, MemoryBuckets, RateLimiter, RedisBuckets, Take
from constellation.config import RateLimits
from constellation.errors import RateLimited

KEY = Principal(tenant_id="acme", key_id="k1", scopes=frozenset({"inference"}))

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limiter(
    buckets: Buckets, tenant: tuple[int | None, int | None] = (None, None), **defaults: int
) -> RateLimiter:
    return RateLimiter(RateLimits(**defaults), buckets, lambda _: tenant)


async def admitted(lim: RateLimiter, caller: Principal = KEY, tokens: int = 1) -> bool:
    try:
        await lim.admit(caller, tokens=tokens)
    except RateLimited:
        return False
    return True


async def test_requests_refused_once_the_minute_is_spent_then_refilled() -> None:
    clock = Clock()
    lim = limiter(MemoryBuckets(clock), key_rpm=3)
    assert [await admitted(lim) for _ in range(4)] == [True, True, True, False]
    with pytest.raises(RateLimited) as refused:
        await lim.admit(KEY, tokens=1)
    assert refused.value.status == 429 and refused.value.retry_after_s == 20  # one request = 20 s
    assert refused.value.headers["x-ratelimit-limit-requests"] == "3"
    assert refused.value.headers["x-ratelimit-remaining-requests"] == "0"
    clock.now += 19.5
    assert not await admitted(lim)
    clock.now += 0.5
    assert await admitted(lim) and not await admitted(lim)


async def test_tokens_per_minute_and_a_request_larger_than_a_minute() -> None:
    clock = Clock()
    lim = limiter(MemoryBuckets(clock), tenant_tpm=600)
    assert await admitted(lim, tokens=500)
    with pytest.raises(RateLimited) as refused:
        await lim.admit(KEY, tokens=200)
    assert refused.value.retry_after_s == 10  # 100 tokens short at 10 tokens a second
    assert "tenant 'acme' (600 tokens per minute)" in refused.value.message
    with pytest.raises(RateLimited, match="exceed the limit"):
        await lim.admit(KEY, tokens=601)
    clock.now += 10
    assert await admitted(lim, tokens=200)


async def test_a_refused_request_takes_nothing_from_any_bucket() -> None:
    lim = limiter(MemoryBuckets(Clock()), key_rpm=10, tenant_tpm=100)
    assert await admitted(lim, tokens=100)
    assert not await admitted(lim, tokens=1)  # tokens short: the request bucket keeps its 9
    other = Principal(tenant_id="globex", key_id="k1", scopes=KEY.scopes)
    assert [await admitted(lim, other) for _ in range(10)] == [True] * 9 + [False]


async def test_tenant_override_replaces_the_default_and_zero_means_unlimited() -> None:
    lim = limiter(MemoryBuckets(Clock()), (1, None), tenant_rpm=5)
    assert [await admitted(lim) for _ in range(2)] == [True, False]
    lim = limiter(MemoryBuckets(Clock()), (0, 0), tenant_rpm=1, tenant_tpm=1)
    assert all([await admitted(lim, tokens=50) for _ in range(20)])


async def test_concurrent_admissions_pass_exactly_the_limit() -> None:
    lim = limiter(MemoryBuckets(), key_rpm=25, tenant_tpm=10_000)
    results = await asyncio.gather(*(admitted(lim, tokens=10) for _ in range(200)))
    assert sum(results) == 25


def test_threads_taking_at_once_pass_exactly_the_limit() -> None:
    buckets = MemoryBuckets()
    take = [Take("k:x:r", 100, 1), Take("t:y:t", 10**6, 7)]
    with ThreadPoolExecutor(8) as pool:
        verdicts = list(pool.map(lambda _: buckets.take_now(take).allowed, range(1000)))
    assert sum(verdicts) == 100


async def test_redis_buckets_are_shared_by_two_limiters(redis_url: str) -> None:
    prefix = f"test:{uuid.uuid4().hex}:"
    one, two = (limiter(RedisBuckets(redis_url, prefix=prefix), key_rpm=4, tenant_tpm=1000) for _ in range(2))
    try:
        assert [await admitted(one), await admitted(two), await admitted(one)] == [True] * 3
        assert await admitted(two) and not await admitted(one) and not await admitted(two)
        with pytest.raises(RateLimited) as refused:
            await two.admit(KEY, tokens=1)
        assert 1 <= refused.value.retry_after_s <= 15  # one request refills in 15 s
        other = Principal(tenant_id="acme", key_id="k2", scopes=KEY.scopes)
        results = await asyncio.gather(*(admitted(lim, other, 1) for lim in (one, two) for _ in range(30)))
        assert sum(results) == 4
    finally:
        await one.close()
        await two.close()


async def test_redis_refusal_takes_nothing_and_tokens_are_shared(redis_url: str) -> None:
    prefix = f"test:{uuid.uuid4().hex}:"
    one, two = (limiter(RedisBuckets(redis_url, prefix=prefix), tenant_tpm=600) for _ in range(2))
    try:
        assert await admitted(one, tokens=500)
        with pytest.raises(RateLimited) as refused:
            await two.admit(KEY, tokens=200)
        assert refused.value.retry_after_s in (10, 11)
        assert await admitted(two, tokens=100)
    finally:
        await one.close()
        await two.close()


async def test_an_unreachable_store_serves_unlimited() -> None:
    lim = limiter(RedisBuckets("redis://127.0.0.1:1/0"), key_rpm=1)
    try:
        assert all([await admitted(lim) for _ in range(3)])
    finally:
        await lim.close()
