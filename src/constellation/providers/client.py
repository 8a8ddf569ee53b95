"""One HTTP client per provider: a keep-alive connection pool (transport.py, behind httpx's
transport interface), a concurrency cap, timeouts, retries with backoff where they are safe, and
a circuit breaker. Failures become `UpstreamError` (502, 503 or 504) whose code names what
happened upstream; the key never leaves this module but in the `Authorization` header."""

from __future__ import annotations

import asyncio
import email.utils
import json
import math
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx

from constellation.errors import UpstreamError
from constellation.providers.breaker import Breaker
from constellation.providers.secrets import SecretSource
from constellation.providers.transport import LeanTransport

RETRYABLE = frozenset({429, 500, 502, 503, 504})
BACKOFF_S = 0.1  # first retry's delay, doubled each time, with jitter
MAX_RETRY_AFTER_S = 30.0  # a longer Retry-After is passed on to the client, not waited for
CLIENT_STATUSES = frozenset({400, 404, 409, 413, 422})  # the upstream says the request was at fault


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    """How to reach one provider; equal configs share one client (see `Upstreams`)."""

    name: str
    base_url: str
    api_key_env: str | None = None
    timeout_s: float = 60.0
    max_concurrency: int = 64
    max_retries: int = 2
    on_platform: bool = False
    connect_timeout_s: float = 5.0


class Upstream:
    """A provider's client. `post` (retried where safe) and `stream` (never retried) are the
    two verbs; both hold one of `max_concurrency` slots for the whole exchange."""

    def __init__(
        self, cfg: UpstreamConfig, secrets: SecretSource, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.cfg = cfg
        self._secrets = secrets
        self._transport = transport or LeanTransport(max_idle=cfg.max_concurrency)
        self._base = cfg.base_url.rstrip("/") + "/"
        self._urls: dict[str, httpx.URL] = {}
        connect = min(cfg.connect_timeout_s, cfg.timeout_s)
        self._timeouts = {
            "connect": connect,
            "read": cfg.timeout_s,
            "write": cfg.timeout_s,
            "pool": cfg.timeout_s,
        }
        self._slots = asyncio.Semaphore(cfg.max_concurrency)
        self.breaker = Breaker()

    async def aclose(self) -> None:
        await self._transport.aclose()

    async def _send(self, path: str, payload: bytes) -> httpx.Response:
        """POST `payload`; the response's headers are in, its body still to read."""
        url = self._urls.get(path)
        if url is None:  # parsed once per path: httpx parses a string URL on every request
            url = self._urls[path] = httpx.URL(self._base + path)
        request = httpx.Request(
            "POST",
            url,
            content=payload,
            headers=self._headers(),
            extensions={"timeout": self._timeouts},
        )
        response = await self._transport.handle_async_request(request)
        response.request = request
        return response

    # -- the two verbs --------------------------------------------------------------------

    async def post(self, path: str, payload: bytes) -> bytes:
        """POST `payload`; the 200 answer's bytes. Retried on connection failures, 429 (after its
        Retry-After) and 5xx, with backoff, while the deadline allows."""
        deadline = time.monotonic() + self.cfg.timeout_s
        async with self._slot():
            failed: UpstreamError | None = None  # the previous attempt's error
            for attempt in range(self.cfg.max_retries + 1):
                last = attempt == self.cfg.max_retries
                if failed is not None and self.breaker.state != "closed":
                    raise failed  # the circuit opened under our own retries: report why
                self._check_breaker()
                try:
                    r = await self._send(path, payload)
                    try:
                        await r.aread()
                    finally:
                        await r.aclose()
                except httpx.TimeoutException as exc:
                    self.breaker.failure()
                    if isinstance(exc, httpx.ConnectTimeout) and not last:
                        await self._pause(self._backoff(attempt), deadline)
                        continue
                    raise self._timeout() from None
                except httpx.TransportError as exc:
                    self.breaker.failure()
                    # Nothing has reached our client yet, and a completion has no side effect
                    # upstream but its cost: a dropped keep-alive connection is worth a retry.
                    failed = self._unreachable(exc)
                    if not last and self._can_wait(self._backoff(attempt), deadline):
                        await asyncio.sleep(self._backoff(attempt))
                        continue
                    raise failed from None
                except BaseException:
                    self.breaker.abandon()
                    raise
                if r.status_code == 200:
                    self.breaker.success()
                    return r.content
                self._count(r.status_code)
                delay = _retry_after(r) if r.status_code == 429 else None
                delay = self._backoff(attempt) if delay is None else delay
                failed = self.status_error(r.status_code, r.content, _retry_after(r))
                if r.status_code in RETRYABLE and not last and self._can_wait(delay, deadline):
                    await asyncio.sleep(delay)
                    continue
                raise failed
        raise AssertionError("unreachable")  # the loop returns or raises

    @asynccontextmanager
    async def stream(self, path: str, payload: bytes) -> AsyncIterator[httpx.Response]:
        """POST `payload` for a streamed answer: the open 200 response (read it with
        `response.aiter_lines()`); closing the context closes the upstream connection, which
        cancels the upstream request. No retries: the caller may already have sent bytes."""
        async with self._slot():
            self._check_breaker()
            try:
                r = await self._send(path, payload)
            except httpx.TimeoutException:
                self.breaker.failure()
                raise self._timeout() from None
            except httpx.TransportError as exc:
                self.breaker.failure()
                raise self._unreachable(exc) from None
            except BaseException:
                self.breaker.abandon()
                raise
            try:
                if r.status_code != 200:
                    self._count(r.status_code)
                    body = await r.aread()
                    raise self.status_error(r.status_code, body, _retry_after(r))
                self.breaker.success()
                yield r
            finally:
                await r.aclose()

    # -- plumbing -------------------------------------------------------------------------

    @asynccontextmanager
    async def _slot(self) -> AsyncIterator[None]:
        """One of `max_concurrency` slots, held for the whole exchange."""
        try:
            if self._slots.locked():  # at the cap: wait for a slot, up to the timeout
                await asyncio.wait_for(self._slots.acquire(), timeout=self.cfg.timeout_s)
            else:
                await self._slots.acquire()
        except TimeoutError:
            raise UpstreamError(
                f"provider '{self.cfg.name}' already has {self.cfg.max_concurrency} requests in flight "
                f"(its concurrency cap) and none finished within {self.cfg.timeout_s:g} s; retry shortly",
                status=503,
                retry_after_s=1,
                code="upstream_busy",
            ) from None
        try:
            yield
        finally:
            self._slots.release()

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        var = self.cfg.api_key_env
        if var is None:
            return headers
        key = self._secrets.get(var)
        if key is None:
            raise UpstreamError(
                f"provider '{self.cfg.name}' has no API key on this server: the operator must set the "
                f"environment variable {var} (or add it to the secrets file) and retry",
                status=503,
                retry_after_s=60,
                code="upstream_key_missing",
            )
        headers["Authorization"] = f"Bearer {key}"
        return headers

    def _check_breaker(self) -> None:
        wait = self.breaker.allow()
        if wait is not None:
            after = max(1, math.ceil(wait))
            raise UpstreamError(
                f"provider '{self.cfg.name}' is failing (its last {self.breaker.failures} requests "
                f"failed), so requests to it fail fast for now; retry in {after} s or use another model",
                status=503,
                retry_after_s=after,
                code="upstream_circuit_open",
            )

    def _count(self, status: int) -> None:
        """A status the upstream answered with: 5xx counts against it; anything else shows it is up."""
        if status >= 500:
            self.breaker.failure()
        else:
            self.breaker.success()

    def _backoff(self, attempt: int) -> float:
        return BACKOFF_S * 2**attempt * (0.5 + random.random())  # jitter

    def _can_wait(self, delay: float, deadline: float) -> bool:
        return delay <= MAX_RETRY_AFTER_S and time.monotonic() + delay < deadline

    async def _pause(self, delay: float, deadline: float) -> None:
        if not self._can_wait(delay, deadline):
            raise self._timeout()
        await asyncio.sleep(delay)

    def _timeout(self) -> UpstreamError:
        return UpstreamError(
            f"provider '{self.cfg.name}' did not answer within {self.cfg.timeout_s:g} s; retry, "
            "ask for fewer tokens, or use another model",
            status=504,
            code="upstream_timeout",
        )

    def _unreachable(self, exc: httpx.TransportError) -> UpstreamError:
        return UpstreamError(
            f"provider '{self.cfg.name}' could not be reached ({type(exc).__name__}); retry shortly "
            "or use another model",
            status=502,
            code="upstream_unreachable",
        )

    def status_error(self, status: int, body: bytes, retry_after: float | None) -> UpstreamError:
        """The upstream's non-200 answer in our shape: 503 for 429/503, 504 for 504, else 502."""
        name = self.cfg.name
        if status in CLIENT_STATUSES:
            detail = self._redact(_upstream_message(body))
            message = f"provider '{name}' refused the request ({status}): {detail or 'no reason given'}"
        elif status in (401, 403):
            message = (
                f"provider '{name}' refused the platform's credentials ({status}); an operator must "
                "check the provider's API key"
            )
        elif status == 429:
            message = f"provider '{name}' is rate-limiting the platform (429); retry later"
        else:
            message = f"provider '{name}' failed with HTTP {status}; retry shortly or use another model"
        ours = 503 if status in (429, 503) else 504 if status == 504 else 502
        after = None if ours != 503 else max(1, round(retry_after)) if retry_after else 1
        return UpstreamError(message, status=ours, retry_after_s=after, code=f"upstream_status_{status}")

    def _redact(self, text: str) -> str:
        key = self._secrets.get(self.cfg.api_key_env) if self.cfg.api_key_env else None
        return text.replace(key, "[redacted]") if key else text


def _retry_after(r: httpx.Response) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), or None."""
    value = r.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - datetime.now(UTC)).total_seconds(), 0.0)


def _upstream_message(body: bytes) -> str:
    """The upstream's error message (OpenAI's shape), cut to 300 characters, or ''."""
    try:
        doc = json.loads(body)
    except ValueError:
        return ""
    err = doc.get("error") if isinstance(doc, dict) else None
    msg = err.get("message") if isinstance(err, dict) else err if isinstance(err, str) else None
    return str(msg)[:300] if msg else ""
