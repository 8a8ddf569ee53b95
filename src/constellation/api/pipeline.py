"""The path every inference request takes, in one place: resolve the model (visibility and
licence checked), replay an idempotent retry, admit against the tenant's balance, run the
engine, then meter, price and post it exactly once -- for one answer or a stream of events.

Routes supply only the engine call; everything billing- and licence-related happens here."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Protocol, TypeVar

import anyio
import pydantic_core
from fastapi import Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope, Send

from constellation.api.deps import Principal
from constellation.api.engines import Engines
from constellation.api.resolver import Resolved
from constellation.api.state import AppState, state_of
from constellation.config import EngineLimits
from constellation.economy.meter import Bill, Meter, UsageRecord
from constellation.errors import ConstellationError, InvalidInput

T = TypeVar("T")
log = logging.getLogger("constellation.api")
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
    """One inference request in flight, from its model's resolution to its usage event.

    A route calls `resolve`, then `admit` with its token estimates, then hands its engine call to
    `complete` (one answer) or `stream` (server-sent events); `run` is the three in one, for a
    route whose estimates do not need the engine. Settlement happens exactly once, whatever is
    raised or however the client goes away: succeeded (committed before the answer's last bytes
    leave), failed (not charged, the hold released) or cancelled (a dropped stream: charged for
    what it produced)."""

    request: Request
    state: AppState
    request_id: str = field(default_factory=new_request_id)
    caller: Principal = field(init=False)
    resolved: Resolved = field(init=False)
    started: datetime = field(default_factory=lambda: datetime.now(UTC))  # reset once admitted
    _fingerprint: str = field(init=False, default="")
    _held: bool = field(init=False, default=False)  # `admit` reserved funds under request_id
    _settled: bool = field(init=False, default=False)

    @property
    def engines(self) -> Engines:
        return self.state.engines

    @property
    def limits(self) -> EngineLimits:
        return self.state.settings.engine

    @property
    def meter(self) -> Meter | None:
        return self.state.meter

    @property
    def settled(self) -> bool:
        return self._settled

    @property
    def idempotency_key(self) -> str | None:
        key = self.request.headers.get("idempotency-key")
        if key is not None and not 0 < len(key) <= MAX_IDEMPOTENCY_KEY:
            raise InvalidInput(
                f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} characters", param="Idempotency-Key"
            )
        return key

    async def resolve(self, caller: Principal, model: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """Resolve `model` for the caller (visibility and licence checked); returns the stored
        first answer when this is an idempotent retry of a request already served."""
        self.caller = caller
        hit = self.state.resolver.cached(model, tenant_id=caller.tenant_id)  # no thread hop when cached
        if hit is None:
            hit = await run_in_threadpool(self.state.resolver.resolve, model, tenant_id=caller.tenant_id)
        self.resolved = hit

        self._fingerprint = fingerprint(self.request.url.path, body)
        key = self.idempotency_key
        if key is not None and self.meter is not None:
            return await run_in_threadpool(
                self.meter.replay,
                tenant_id=caller.tenant_id,
                idempotency_key=key,
                fingerprint=self._fingerprint,
            )
        return None

    async def admit(
        self, *, est_input_tokens: int, est_output_tokens: int = 0, max_input_tokens: int | None = None
    ) -> None:
        """Rate limits (on the estimate), then reserve the request's worst case (`max_input_tokens`,
        the most it may generate and their compute) against the tenant's balance, or refuse with
        402; settlement releases the reservation."""
        caller, meter = self.caller, self.meter
        # Rate limits first: a 429 takes no spending hold.
        await self.state.limiter.admit(caller, tokens=est_input_tokens + est_output_tokens)
        if meter is not None and not meter.unlimited(caller.tenant_id):  # else: no floor, no database read
            name, worst_in = self.resolved.name, max(est_input_tokens, max_input_tokens or 0)
            estimate = meter.quote(
                model_name=name,
                input_tokens=worst_in,
                max_output_tokens=est_output_tokens,
                compute_ns_estimate=meter.compute_estimate(name, worst_in + est_output_tokens),
                device_class=self.state.device_class,
            )
            self._held = await run_in_threadpool(
                meter.admit, tenant_id=caller.tenant_id, estimate_nanos=estimate, hold_id=self.request_id
            )
        self.started = datetime.now(UTC)

    async def complete(self, work: Callable[[], Awaitable[Outcome]]) -> dict[str, Any]:
        """Run the engine call `work` and settle it: the answer with its `constellation` bill."""
        outcome = await self.guarded(work())
        return {**outcome.body, "constellation": await self.settle(outcome)}

    async def stream(self, start: Callable[[], Awaitable[Stream]]) -> EventStream:
        """Start the engine call (`start` fails before the first byte: an error answer) and
        answer with its chunks as server-sent events, settled exactly once (see `events`)."""
        return EventStream(self, await self.guarded(start()))

    async def run(
        self,
        caller: Principal,
        model: str,
        body: dict[str, Any],
        work: Callable[[], Awaitable[Outcome]],
        *,
        est_input_tokens: int,
        est_output_tokens: int = 0,
        max_input_tokens: int | None = None,
    ) -> dict[str, Any]:
        """The whole non-streaming path: resolve, replay or admit, complete."""
        replay = await self.resolve(caller, model, body)
        if replay is not None:
            return replay
        await self.admit(
            est_input_tokens=est_input_tokens,
            est_output_tokens=est_output_tokens,
            max_input_tokens=max_input_tokens,
        )
        return await self.complete(work)

    async def events(self, source: Stream) -> AsyncIterator[bytes]:
        """The SSE body: the chunks, then -- once the usage is committed -- the closing chunks
        with the bill and `[DONE]`. An error after the headers is recorded as a failure (not
        charged) and travels as an error event; a client gone away is `EventStream`'s to bill."""
        try:
            async for chunk in source.chunks():
                yield sse(chunk)
            ext = await self.settle(source.outcome())
            for chunk in source.closing(ext):
                yield sse(chunk)
            yield DONE
        except Exception as exc:
            await self.settle(None)
            yield sse_error(exc)

    async def guarded(self, work: Awaitable[T]) -> T:
        """Await the engine (or upstream) call; whatever it raises -- a platform error, a bug, a
        cancellation -- is recorded once as a failure (not charged, its hold released) before it
        propagates."""
        try:
            return await work
        except asyncio.CancelledError:
            self.settle_later(None, "failed")
            raise
        except BaseException:
            await self.settle(None)
            raise

    async def settle(self, outcome: Outcome | None, *, status: str | None = None) -> dict[str, Any]:
        """Record the usage once (a failure is recorded, not charged; a cancelled stream is charged
        for what it produced) and return the `constellation` extension. A second call records
        nothing: the first to begin, even if its caller is then cancelled, is the record (the
        meter has taken it before its first `await`)."""
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
            tenant_id=self.caller.tenant_id,
            model_name=self.resolved.name,
            idempotency_key=self.idempotency_key,
            fingerprint=self._fingerprint,
            input_tokens=outcome.input_tokens if outcome else 0,
            output_tokens=outcome.output_tokens if outcome else 0,
            compute_ns=outcome.compute_ns if outcome else 0,
            device_class=self.state.device_class,
            status=status or ("succeeded" if outcome else "failed"),
            started_at=self.started,
            finished_at=datetime.now(UTC),
            response={**outcome.body, "constellation": ext} if outcome and status is None else None,
            hold=self._held,
        )
        bill: Bill = await self.meter.record(record)
        self.request.state.billed = record, bill  # for the access log line (api/access_log.py)
        return {**ext, **bill.as_dict(), "request_id": bill.request_id}

    def settle_later(self, outcome: Outcome | None, status: str) -> None:
        """`settle` from a task of its own: for a request whose own task is being cancelled (a
        dropped connection), where an `await` would be cancelled again."""
        if self._settled:
            return
        task = asyncio.get_running_loop().create_task(self.settle(outcome, status=status))
        _background.add(task)
        task.add_done_callback(_background.discard)


_background: set[asyncio.Task[Any]] = set()  # keeps fire-and-forget settle tasks alive until done


class Stream(Protocol):
    """A streamed answer as a route supplies it to `Call.stream`: its engine's output as OpenAI
    chunks. The pipeline sends them, settles the request and closes the stream."""

    def chunks(self) -> AsyncIterator[dict[str, Any]]:
        """The chunks to send as they are produced, all but the closing ones; ends when done."""
        ...

    def outcome(self) -> Outcome:
        """Once `chunks` has ended: the whole answer as one body (what an idempotent retry
        replays) and what it used."""
        ...

    def closing(self, ext: dict[str, Any]) -> list[dict[str, Any]]:
        """The last chunks, carrying the committed bill `ext` (the `constellation` object)."""
        ...

    def produced(self) -> Outcome:
        """What has been produced so far: what a client that goes away is charged for."""
        ...

    async def aclose(self) -> None:
        """Stop producing at once (free the engine's sequence, close the upstream connection)."""
        ...


class EventStream(StreamingResponse):
    """Server-sent events that, however they end (finished, failed, or the client gone before or
    during the body, even as the last chunk leaves), stop the work and settle the request: a
    stream not settled by then is billed as `cancelled` for what it had produced."""

    def __init__(self, call: Call, source: Stream) -> None:
        super().__init__(
            call.events(source),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Request-Id": call.request_id},
        )
        self._call, self._source = call, source

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):  # the client's cancellation must not skip this
                await self._source.aclose()
            if not self._call.settled:
                self._call.settle_later(self._source.produced(), "cancelled")


DONE = b"data: [DONE]\n\n"


def sse(obj: dict[str, Any]) -> bytes:
    """One server-sent event carrying `obj` as JSON."""
    return b"data: " + pydantic_core.to_json(obj) + b"\n\n"


def sse_error(exc: BaseException) -> bytes:
    """An error after the headers, as an event in OpenAI's error shape (a bug is logged, and
    named only as an internal error)."""
    if not isinstance(exc, ConstellationError):
        log.error("streaming an answer failed", exc_info=exc)
        exc = ConstellationError("internal error while streaming; it has been logged", code="internal_error")
    return sse({"error": {"message": exc.message, "type": exc.type, "param": exc.param, "code": exc.code}})


async def get_call(request: Request) -> Call:
    return Call(
        request=request,
        state=state_of(request.app),
        request_id=request.state.request_id,  # the HTTP request's (api/access_log.py), one per call
    )


CallDep = Annotated[Call, Depends(get_call)]
