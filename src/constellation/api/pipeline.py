"""The path every inference request takes, in one place: resolve the model (visibility and
licence checked), replay an idempotent retry, admit against the tenant's balance, run the
engine, then meter, price and post it before the response leaves.

Routes supply only the engine call; everything billing- and licence-related happens here."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import pydantic_core
from fastapi import Depends, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from constellation.api.deps import Principal
from constellation.api.engines import Engines
from constellation.api.ratelimit import RateLimiter
from constellation.api.resolver import Resolved, Resolver
from constellation.config import EngineLimits
from constellation.economy.meter import Bill, Meter, UsageRecord
from constellation.errors import InvalidInput

T = TypeVar("T")
MAX_IDEMPOTENCY_KEY = 255
# Request ids: a random prefix per process, then a counter -- unique across processes and
# restarts without a system call per request (uuid4 reads the OS's random source each time).
_ID_PREFIX = f"req_{os.urandom(8).hex()}"
_ids = itertools.count()


def new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_ids):012x}"


class JSONBody(JSONResponse):
    """A JSON response rendered in one call to pydantic-core (Rust), for bodies our own code
    built: FastAPI would first validate a returned dict against the route's return type. (A
    JSONResponse, so that the OpenAPI document gives the route's documented schema alone.)"""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return pydantic_core.to_json(content)


@dataclass(slots=True)
class Outcome:
    """What a route's engine call produced: the OpenAI-shaped body and its measurements."""

    body: dict[str, Any]
    input_tokens: int
    output_tokens: int
    compute_ns: int


def fingerprint(path: str, body: dict[str, Any]) -> str:
    """sha256 of the canonical request: a retry must send the same bytes of meaning."""
    canonical = json.dumps({"path": path, "body": body}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(slots=True)
class Call:
    """One inference request in flight."""

    request: Request
    engines: Engines
    resolver: Resolver
    meter: Meter | None  # None only when CONSTELLATION_METERING=false (benchmarks)
    limits: EngineLimits
    device_class: str
    limiter: RateLimiter | None = None  # per-key and per-tenant rate limits (api/ratelimit.py)
    request_id: str = field(default_factory=new_request_id)
    resolved: Resolved = field(init=False)
    _fingerprint: str = field(init=False, default="")
    _held: bool = field(init=False, default=False)  # `admit` reserved funds under request_id
    _settled: bool = field(init=False, default=False)

    @property
    def idempotency_key(self) -> str | None:
        key = self.request.headers.get("idempotency-key")
        if key is not None and not 0 < len(key) <= MAX_IDEMPOTENCY_KEY:
            raise InvalidInput(
                f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} characters", param="Idempotency-Key"
            )
        return key

    async def prepare(self, caller: Principal, model: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """Resolve and admit; returns a replayed first response for an idempotent retry."""
        hit = self.resolver.cached(model, tenant_id=caller.tenant_id)  # no thread hop when cached
        if hit is None:
            hit = await run_in_threadpool(self.resolver.resolve, model, tenant_id=caller.tenant_id)
        self.resolved = hit

        self._fingerprint = fingerprint(self.request.url.path, body)
        key = self.idempotency_key
        if key is not None and self.meter is not None:
            replay = await run_in_threadpool(
                self.meter.replay,
                tenant_id=caller.tenant_id,
                idempotency_key=key,
                fingerprint=self._fingerprint,
            )
            if replay is not None:
                return replay
        return None

    async def admit(
        self,
        caller: Principal,
        *,
        est_input_tokens: int,
        est_output_tokens: int = 0,
        max_input_tokens: int | None = None,
    ) -> None:
        """Rate limits (on the estimate), then reserve the request's worst case (`max_input_tokens`,
        the most it may generate and their compute) against the tenant's balance, or refuse with
        402; `settle` releases the reservation."""
        if self.limiter is not None:  # rate limits first: a 429 takes no spending hold
            await self.limiter.admit(caller, tokens=est_input_tokens + est_output_tokens)
        if self.meter is None or self.meter.unlimited(caller.tenant_id):
            return  # no spending floor: nothing to refuse, no database read on the hot path
        name, worst_in = self.resolved.name, max(est_input_tokens, max_input_tokens or 0)
        estimate = self.meter.quote(
            model_name=name,
            input_tokens=worst_in,
            max_output_tokens=est_output_tokens,
            compute_ns_estimate=self.meter.compute_estimate(name, worst_in + est_output_tokens),
            device_class=self.device_class,
        )
        self._held = await run_in_threadpool(
            self.meter.admit, tenant_id=caller.tenant_id, estimate_nanos=estimate, hold_id=self.request_id
        )

    async def settle(
        self, caller: Principal, outcome: Outcome | None, started: datetime, *, status: str | None = None
    ) -> dict[str, Any]:
        """Record the usage once, whatever happens after (a failure is recorded, not charged; a
        cancelled stream is charged for what it produced) and return the extension. A second call
        records nothing: the first to begin, even if its caller is then cancelled, is the record."""
        if self._settled:
            return {"request_id": self.request_id}
        self._settled = True
        ext: dict[str, Any] = {
            "request_id": self.request_id,
            "compute_ns": outcome.compute_ns if outcome else 0,
            "lineage": self.resolved.lineage,
            "notices": list(self.resolved.notices),
        }
        if self.meter is None:
            return ext
        record = UsageRecord(
            request_id=self.request_id,
            tenant_id=caller.tenant_id,
            model_name=self.resolved.name,
            idempotency_key=self.idempotency_key,
            fingerprint=self._fingerprint,
            input_tokens=outcome.input_tokens if outcome else 0,
            output_tokens=outcome.output_tokens if outcome else 0,
            compute_ns=outcome.compute_ns if outcome else 0,
            device_class=self.device_class,
            status=status or ("succeeded" if outcome else "failed"),
            started_at=started,
            finished_at=datetime.now(UTC),
            response={**outcome.body, "constellation": ext} if outcome and status is None else None,
            hold=self._held,
        )
        bill: Bill = await self.meter.record(record)
        self.request.state.billed = record, bill  # for the access log line (api/access_log.py)
        return {**ext, **bill.as_dict(), "request_id": bill.request_id}

    def settle_later(
        self, caller: Principal, outcome: Outcome | None, started: datetime, status: str
    ) -> None:
        """`settle` from a task of its own: for a request whose own task is being cancelled (a
        dropped connection), where an `await` would be cancelled again."""
        if self._settled:
            return
        task = asyncio.get_running_loop().create_task(self.settle(caller, outcome, started, status=status))
        _background.add(task)
        task.add_done_callback(_background.discard)

    async def run(
        self,
        caller: Principal,
        model: str,
        body: dict[str, Any],
        fn: Callable[[Call], Awaitable[Outcome]],
        *,
        est_input_tokens: int,
        est_output_tokens: int = 0,
        max_input_tokens: int | None = None,
    ) -> dict[str, Any]:
        """The whole non-streaming path for one request."""
        replay = await self.prepare(caller, model, body)
        if replay is not None:
            return replay
        await self.admit(
            caller,
            est_input_tokens=est_input_tokens,
            est_output_tokens=est_output_tokens,
            max_input_tokens=max_input_tokens,
        )
        started = datetime.now(UTC)
        outcome = await self.guarded(caller, started, fn(self))
        return {**outcome.body, "constellation": await self.settle(caller, outcome, started)}

    @property
    def settled(self) -> bool:
        return self._settled

    async def guarded(self, caller: Principal, started: datetime, work: Awaitable[T]) -> T:
        """Await the engine (or upstream) call; whatever it raises -- a platform error, a bug, a
        cancellation -- is recorded once as a failure (not charged, its hold released) before it
        propagates."""
        try:
            return await work
        except asyncio.CancelledError:
            self.settle_later(caller, None, started, "failed")
            raise
        except BaseException:
            await self.settle(caller, None, started)
            raise


_background: set[asyncio.Task[Any]] = set()  # keeps fire-and-forget settle tasks alive until done


async def get_call(request: Request) -> Call:
    state = request.app.state
    return Call(
        request=request,
        request_id=request.state.request_id,  # the HTTP request's (api/access_log.py), one per call
        engines=state.engines,
        resolver=state.resolver,
        meter=state.meter,
        limits=state.settings.engine,
        device_class=state.device_class,
        limiter=getattr(state, "limiter", None),
    )


CallDep = Annotated[Call, Depends(get_call)]
