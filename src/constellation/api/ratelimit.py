"""Per-key and per-tenant rate limits, requests and estimated tokens per minute, as token buckets:
in this process's memory, or in Redis (one atomic Lua script) so several servers share them.

A bucket holds up to one minute's allowance and refills continuously. A request takes one from
each request bucket and its estimated tokens from each token bucket, from all or from none."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

from starlette.concurrency import run_in_threadpool

from constellation.api.cache import RefreshingCache
from constellation.api.deps import Principal
from constellation.config import RateLimits
from constellation.errors import RateLimited
from constellation.platform import Platform
from constellation.registry.tables import Tenant

log = logging.getLogger("constellation.api")


@dataclass(frozen=True, slots=True)
class Take:
    """`cost` units from the bucket `key`, which holds `per_minute` (> 0) when full."""

    key: str
    per_minute: int
    cost: int


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether every take went through; if not, `wait_s` until they all would, and the bucket
    levels (after the takes when allowed, before them when not)."""

    allowed: bool
    wait_s: float
    remaining: tuple[int, ...]


class Buckets(Protocol):
    async def take(self, takes: list[Take]) -> Verdict: ...

    async def close(self) -> None: ...


class MemoryBuckets:
    """Buckets in this process; a lock makes each `take` atomic across threads too."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, *, max_buckets: int = 100_000) -> None:
        self._clock = clock
        self._max = max_buckets
        self._levels: dict[str, tuple[float, float]] = {}  # key -> (level, time of the level)
        self._lock = threading.Lock()

    async def take(self, takes: list[Take]) -> Verdict:
        return self.take_now(takes)

    def take_now(self, takes: list[Take]) -> Verdict:
        now = self._clock()
        with self._lock:
            levels = [self._level(t, now) for t in takes]
            wait = max((_wait_s(t, lv) for t, lv in zip(takes, levels, strict=True)), default=0.0)
            if wait > 0:
                return Verdict(False, wait, tuple(int(lv) for lv in levels))
            if len(self._levels) + len(takes) > self._max:
                self._forget_full(now)
            after = [lv - t.cost for t, lv in zip(takes, levels, strict=True)]
            for t, lv in zip(takes, after, strict=True):
                self._levels[t.key] = (lv, now)
            return Verdict(True, 0.0, tuple(int(lv) for lv in after))

    def _level(self, t: Take, now: float) -> float:
        level, at = self._levels.get(t.key, (float(t.per_minute), now))
        return min(float(t.per_minute), level + (now - at) * t.per_minute / 60)

    def _forget_full(self, now: float) -> None:
        """Drop buckets idle for a minute (full again, so forgetting them changes nothing)."""
        self._levels = {k: v for k, v in self._levels.items() if now - v[1] < 60}

    async def close(self) -> None:
        pass


def _wait_s(t: Take, level: float) -> float:
    return 0.0 if level >= t.cost else (t.cost - level) * 60 / t.per_minute


# KEYS: the buckets; ARGV: per bucket its per-minute size and cost. Redis's own clock, so that
# servers whose clocks disagree still share one refill rate. Returns {allowed, wait in ms as a
# string (Lua numbers become integers), level per bucket}.
_TAKE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local levels, wait = {}, 0
for i, key in ipairs(KEYS) do
  local size, cost = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i])
  local b = redis.call('HMGET', key, 'level', 'at')
  local level, at = tonumber(b[1]) or size, tonumber(b[2]) or now
  level = math.min(size, level + math.max(0, now - at) * size / 60000)
  levels[i] = level
  if level < cost then wait = math.max(wait, (cost - level) * 60000 / size) end
end
local out = {0, tostring(wait)}
if wait == 0 then out[1] = 1 end
for i, key in ipairs(KEYS) do
  local cost = tonumber(ARGV[2 * i])
  if wait == 0 then
    levels[i] = levels[i] - cost
    redis.call('HSET', key, 'level', tostring(levels[i]), 'at', tostring(now))
    redis.call('PEXPIRE', key, 61000)
  end
  out[i + 2] = math.floor(levels[i])
end
return out
"""


class RedisBuckets:
    """Buckets in Redis under `prefix`, shared by every process that uses the same server."""

    def __init__(self, url: str, *, prefix: str = "constellation:rl:") -> None:
        import redis.asyncio as redis  # only servers configured with Redis need the package

        self._redis: Any = redis.Redis.from_url(url)
        self._script = self._redis.register_script(_TAKE_LUA)
        self._prefix = prefix

    async def take(self, takes: list[Take]) -> Verdict:
        args = [n for t in takes for n in (t.per_minute, t.cost)]
        out = await self._script(keys=[self._prefix + t.key for t in takes], args=args)
        return Verdict(bool(out[0]), float(out[1]) / 1000, tuple(int(x) for x in out[2:]))

    async def close(self) -> None:
        await self._redis.aclose()


@dataclass(frozen=True, slots=True)
class Limits:
    """Per minute; 0 = unlimited."""

    rpm: int = 0
    tpm: int = 0


TenantLimits = Callable[[str], tuple[int | None, int | None]]


class RateLimiter:
    """`admit` a request or raise RateLimited (429) with `Retry-After` and `x-ratelimit-*`.

    Tenants' own limits come from `load_tenant` (a database read), cached for `ttl_s` like
    the resolver's models; `clear()` forgets them after an admin write."""

    def __init__(
        self, defaults: RateLimits, buckets: Buckets, load_tenant: TenantLimits, *, ttl_s: float = 2.0
    ) -> None:
        self.defaults = defaults
        self.buckets = buckets
        self._load_tenant = load_tenant
        self._tenants: RefreshingCache[str, Limits] = RefreshingCache(ttl_s)
        self._down_logged = 0.0

    def clear(self) -> None:
        self._tenants.clear()

    async def close(self) -> None:
        await self.buckets.close()

    async def admit(self, caller: Principal, *, tokens: int) -> None:
        """Take one request and `tokens` estimated tokens from the caller's key and tenant."""
        d = self.defaults
        tenant = self._tenants.get(caller.tenant_id)
        if tenant is None:
            load = partial(self._limits_of, caller.tenant_id)
            tenant = await run_in_threadpool(self._tenants.load, caller.tenant_id, load)
        if not (d.key_rpm or d.key_tpm or tenant.rpm or tenant.tpm):
            return  # unlimited: no bucket to touch
        takes = [
            t
            for t in (
                Take(f"k:{caller.key_id}:r", d.key_rpm, 1),
                Take(f"k:{caller.key_id}:t", d.key_tpm, tokens),
                Take(f"t:{caller.tenant_id}:r", tenant.rpm, 1),
                Take(f"t:{caller.tenant_id}:t", tenant.tpm, tokens),
            )
            if t.per_minute > 0
        ]
        _refuse_oversized(takes)
        try:
            verdict = await self.buckets.take(takes)
        except Exception as exc:  # Redis down: serve unlimited rather than refuse everyone
            self._log_down(exc)
            return
        if not verdict.allowed:
            raise _refusal(takes, verdict)

    def _limits_of(self, tenant_id: str) -> Limits:
        rpm, tpm = self._load_tenant(tenant_id)
        d = self.defaults
        return Limits(rpm=d.tenant_rpm if rpm is None else rpm, tpm=d.tenant_tpm if tpm is None else tpm)

    def _log_down(self, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._down_logged > 60:
            self._down_logged = now
            log.warning("rate limits not enforced: the bucket store failed (%s)", exc)


def _who(t: Take) -> str:
    scope, name, kind = t.key.split(":", 2)
    unit = "requests" if kind == "r" else "tokens"
    return f"{'API key' if scope == 'k' else 'tenant'} '{name}' ({t.per_minute} {unit} per minute)"


def _refuse_oversized(takes: list[Take]) -> None:
    """A request larger than a whole minute's allowance would wait forever: say so at once."""
    for t in takes:
        if t.cost > t.per_minute:
            raise RateLimited(
                f"this request's estimated {t.cost} tokens exceed the limit of {_who(t)}; "
                "send fewer or shorter inputs (or a lower max_tokens), or ask for a higher limit",
                retry_after_s=60,
                code="rate_limit_exceeded",
            )


def _refusal(takes: list[Take], verdict: Verdict) -> RateLimited:
    waits = [_wait_s(t, lv) for t, lv in zip(takes, verdict.remaining, strict=True)]
    binding = takes[max(range(len(takes)), key=waits.__getitem__)]
    retry = max(1, math.ceil(verdict.wait_s))
    return RateLimited(
        f"rate limit reached for {_who(binding)}; retry after {retry} s, or ask for a higher limit",
        retry_after_s=retry,
        headers=_headers(takes, verdict),
        code="rate_limit_exceeded",
    )


def _headers(takes: list[Take], verdict: Verdict) -> dict[str, str]:
    """OpenAI's `x-ratelimit-*` headers, for the tightest request and token buckets."""
    out: dict[str, str] = {}
    for kind, word in (("r", "requests"), ("t", "tokens")):
        mine = [(t, lv) for t, lv in zip(takes, verdict.remaining, strict=True) if t.key.endswith(kind)]
        if not mine:
            continue
        t, level = min(mine, key=lambda p: p[1] / p[0].per_minute)
        full_s = (t.per_minute - level) * 60 / t.per_minute
        out[f"x-ratelimit-limit-{word}"] = str(t.per_minute)
        out[f"x-ratelimit-remaining-{word}"] = str(max(0, level))
        out[f"x-ratelimit-reset-{word}"] = f"{max(0.0, full_s):.3g}s"
    return out


def tenant_loader(platform: Platform) -> TenantLimits:
    """Reads a tenant's own limits (None: the server's default) from the registry."""

    def load(tenant_id: str) -> tuple[int | None, int | None]:
        with platform.db.session() as s:
            t = s.get(Tenant, tenant_id)
            return (t.requests_per_minute, t.tokens_per_minute) if t else (None, None)

    return load


def build_limiter(defaults: RateLimits, redis_url: str | None, load_tenant: TenantLimits) -> RateLimiter:
    buckets: Buckets = RedisBuckets(redis_url) if redis_url else MemoryBuckets()
    return RateLimiter(defaults, buckets, load_tenant)
