"""The pipeline's contract with a route, against a recording meter: one usage event per request
whatever the engine call does -- succeeds, raises, breaks off mid-stream, or loses its client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest
from starlette.requests import ClientDisconnect

from constellation.api.deps import Principal
from constellation.api.pipeline import DONE, Call, EventStream, Outcome
from constellation.economy.bill import Bill
from constellation.economy.meter import UsageRecord
from constellation.errors import Overloaded

pytestmark = pytest.mark.anyio
ANSWER = Outcome(body={"object": "list", "data": []}, input_tokens=3, output_tokens=2, compute_ns=7)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class RecordingMeter:
    def __init__(self) -> None:
        self.records: list[UsageRecord] = []

    async def record(self, usage: UsageRecord) -> Bill:
        self.records.append(usage)
        return Bill(usage.request_id, price_nanos=usage.output_tokens * 10)

    def statuses(self) -> list[str]:
        return [r.status for r in self.records]


def _call(meter: RecordingMeter) -> Call:
    request = SimpleNamespace(headers={}, state=SimpleNamespace())
    state = SimpleNamespace(meter=meter, device_class="cpu")
    call = Call(request=request, state=state, request_id="req_1")  # type: ignore[arg-type]
    call.caller = Principal(tenant_id="acme", key_id="k1", scopes=frozenset({"inference"}))
    call.resolved = SimpleNamespace(name="m", lineage={}, notices=())  # type: ignore[assignment]
    return call


class Chunks:
    """A `Stream` of `n` chunks; raises `fail` after them if given."""

    def __init__(self, n: int, fail: BaseException | None = None) -> None:
        self.n, self.fail, self.sent, self.closed = n, fail, 0, False

    async def chunks(self) -> AsyncIterator[dict[str, Any]]:
        for i in range(self.n):
            self.sent += 1
            yield {"i": i}
        if self.fail is not None:
            raise self.fail

    def outcome(self) -> Outcome:
        return ANSWER

    def closing(self, ext: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"last": True, "constellation": ext}]

    def produced(self) -> Outcome:
        return Outcome(body={}, input_tokens=3, output_tokens=self.sent, compute_ns=1)

    async def aclose(self) -> None:
        self.closed = True


async def _settled(meter: RecordingMeter) -> list[str]:
    for _ in range(5):  # a cancelled stream is settled from a task of its own
        await asyncio.sleep(0)
    return meter.statuses()


async def test_complete_records_the_answer_once() -> None:
    meter = RecordingMeter()
    call = _call(meter)

    async def work() -> Outcome:
        return ANSWER

    body = await call.complete(work)
    assert body["constellation"]["request_id"] == "req_1" and body["constellation"]["price_nanos"] == 20
    assert meter.statuses() == ["succeeded"] and meter.records[0].response is not None
    await call.settle(ANSWER)  # a second settlement records nothing
    assert meter.statuses() == ["succeeded"]


@pytest.mark.parametrize("exc", [RuntimeError("a bug"), Overloaded("busy")])
async def test_complete_records_any_failure_once_and_reraises(exc: Exception) -> None:
    meter = RecordingMeter()

    async def work() -> Outcome:
        raise exc

    with pytest.raises(type(exc)):
        await _call(meter).complete(work)
    assert meter.statuses() == ["failed"] and meter.records[0].output_tokens == 0


async def test_a_stream_is_settled_before_its_closing_chunks() -> None:
    meter = RecordingMeter()
    call = _call(meter)
    events = [e async for e in call.events(Chunks(2))]
    assert events[-1] == DONE and b'"last":true' in events[-2] and b'"price_nanos":20' in events[-2]
    assert meter.statuses() == ["succeeded"]


async def test_a_stream_that_breaks_off_is_one_failure_and_an_error_event() -> None:
    meter = RecordingMeter()
    events = [e async for e in _call(meter).events(Chunks(2, RuntimeError("a bug")))]
    assert len(events) == 3 and b'"internal_error"' in events[-1]
    assert meter.statuses() == ["failed"]


async def _serve(response: EventStream, drop_after: int) -> int:
    """Send `response` to a client that goes away after `drop_after` body chunks (as an ASGI 2.4
    server reports it: the send raises); returns the chunks it received."""
    received = 0

    async def send(message: dict[str, Any]) -> None:
        nonlocal received
        if message["type"] == "http.response.body" and message.get("body"):
            if received == drop_after:
                raise OSError("the client went away")
            received += 1

    async def receive() -> dict[str, Any]:
        await asyncio.Event().wait()
        return {}

    scope = {"type": "http", "asgi": {"spec_version": "2.4"}}
    with pytest.raises(ClientDisconnect):
        await response(scope, receive, send)
    return received


@pytest.mark.parametrize("drop_after", [0, 1, 3])
async def test_a_client_gone_is_charged_for_what_was_produced_once(drop_after: int) -> None:
    meter = RecordingMeter()
    call, source = _call(meter), Chunks(5)
    assert await _serve(EventStream(call, source), drop_after) == drop_after
    assert await _settled(meter) == ["cancelled"] and source.closed
    assert meter.records[0].output_tokens == source.sent


async def test_a_client_gone_as_the_last_chunk_leaves_is_recorded_once() -> None:
    meter = RecordingMeter()
    source = Chunks(2)  # two chunks, the closing chunk, [DONE]: gone at the closing chunk
    assert await _serve(EventStream(_call(meter), source), 2) == 2
    assert await _settled(meter) == ["succeeded"] and source.closed
