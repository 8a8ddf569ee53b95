"""The money leaks of issue 14, each probed in-process: dropped streams are billed for what they
produced (once, also when the drop races the last chunk), spending holds keep concurrent
requests within a prepaid balance, money inputs are bounded, and every failure -- whatever is
raised -- is recorded once with its hold released."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError
from tests.integration.conftest import Api

from constellation.api.state import state_of
from constellation.economy import holds, ledger
from constellation.economy.money import MAX_BALANCE_NANOS
from constellation.economy.pricing import Leg
from constellation.economy.tables import UsageEvent
from constellation.engine.decoder.sequence import Delta
from constellation.errors import Overloaded

pytestmark = pytest.mark.anyio


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    return sqlite_url


PER_TOKEN_NS = 1_000_000_000
CHAT = {"model": "pirate", "messages": [{"role": "user", "content": "tell me a story"}], "temperature": 0}


async def _asgi_stream(api: Api, body: dict[str, Any], headers: dict[str, str], drop_after: int) -> int:
    """POST a streamed chat straight to the ASGI app and disconnect once `drop_after` body
    chunks (SSE events) have been sent (0: as soon as the request is read); returns the number of
    chunks the client received."""
    sent: list[bytes] = []
    dropped = asyncio.Event()
    if drop_after == 0:
        dropped.set()
    payload = json.dumps(body).encode()
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": payload, "more_body": False}
        await dropped.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            if dropped.is_set():
                return  # as uvicorn does: a body sent after the disconnect goes nowhere
            sent.append(message["body"])
            if len(sent) >= drop_after:
                dropped.set()

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},  # 2.3: Starlette listens for the disconnect
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
            *[(k.lower().encode(), v.encode()) for k, v in headers.items()],
        ],
        "client": ("127.0.0.1", 5000),
        "server": ("test", 80),
        "state": {},
        "app": api.app,
    }
    await api.app(scope, receive, send)
    return len(sent)


async def _events(api: Api, tenant: str, want: int) -> list[UsageEvent]:
    """The tenant's usage events once `want` exist (settling a dropped stream is a task of its own)."""
    for _ in range(200):
        with api.platform.db.session() as s:
            rows = list(s.scalars(select(UsageEvent).where(UsageEvent.tenant_id == tenant)))
        if len(rows) >= want:
            return rows
        await asyncio.sleep(0.05)
    return rows


async def test_a_dropped_stream_is_billed_for_what_it_produced(served: Api) -> None:
    h = served.key("dropper")
    received = await _asgi_stream(served, {**CHAT, "max_tokens": 40, "stream": True}, h, drop_after=4)
    assert received >= 4
    [event] = await _events(served, "dropper", 1)
    assert event.status == "cancelled"
    assert 3 <= event.output_tokens < 40  # the role chunk, then one token per chunk at least
    assert event.input_tokens > 0 and event.compute_ns > 0
    assert event.price_nanos > 0 and event.txn_id is not None
    await asyncio.sleep(0.2)  # a second settle, if any, would have landed by now
    assert len(await _events(served, "dropper", 1)) == 1
    with served.platform.db.session() as s:
        assert ledger.verify(s) == []


async def test_a_drop_racing_the_last_chunk_is_recorded_once(served: Api) -> None:
    h = served.key("racer")
    # max_tokens 3: role chunk, two content chunks, the final chunk with the bill; drop as it leaves.
    await _asgi_stream(served, {**CHAT, "max_tokens": 3, "stream": True}, h, drop_after=3)
    await _asgi_stream(served, {**CHAT, "max_tokens": 3, "stream": True}, h, drop_after=4)
    rows = await _events(served, "racer", 2)
    await asyncio.sleep(0.2)
    rows = await _events(served, "racer", 2)
    assert len(rows) == 2, [(r.status, r.output_tokens) for r in rows]
    assert all(r.status in ("succeeded", "cancelled") and r.price_nanos > 0 for r in rows)
    with served.platform.db.session() as s:
        assert ledger.verify(s) == []


async def test_a_drop_before_the_first_event_is_recorded_once_and_releases_the_hold(served: Api) -> None:
    """A client gone before its stream's body begins: the stream is still settled (cancelled, for
    whatever was produced), exactly once, and its spending hold is released."""
    h = served.key("early")
    with served.platform.db.session() as s:
        ledger.set_limit(s, tenant_id="early", prepaid=True)
        ledger.fund(s, tenant_id="early", amount_nanos=10**12)
    for _ in range(3):
        await _asgi_stream(served, {**CHAT, "max_tokens": 8, "stream": True}, h, drop_after=0)
    rows = await _events(served, "early", 3)
    await asyncio.sleep(0.2)  # a second settle, if any, would have landed by now
    rows = await _events(served, "early", 3)
    assert len(rows) == 3 and {r.status for r in rows} <= {"cancelled", "succeeded"}
    assert holds.held(served.platform.db, account_id="tenant:early") == 0
    with served.platform.db.session() as s:
        assert ledger.verify(s) == []


async def test_an_unexpected_error_is_recorded_once_and_releases_the_hold(
    served: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    with served.platform.db.session() as s:
        ledger.set_limit(s, tenant_id="ops", prepaid=True)  # any tenant with a floor holds funds
    h = served.key("broke")
    with served.platform.db.session() as s:
        ledger.set_limit(s, tenant_id="broke", prepaid=True)
        ledger.fund(s, tenant_id="broke", amount_nanos=10**12)

    async def boom(_: object) -> AsyncIterator[Delta]:
        raise RuntimeError("a bug, not a platform error")
        yield  # pragma: no cover

    monkeypatch.setattr(state_of(served.app).engines.decoder, "generate", boom)
    r = await served.client.post("/v1/chat/completions", headers=h, json={**CHAT, "max_tokens": 4})
    assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"
    r = await served.client.post(
        "/v1/chat/completions", headers=h, json={**CHAT, "max_tokens": 4, "stream": True}
    )
    assert r.status_code == 200 and '"internal_error"' in r.text  # after the headers: an error event
    rows = await _events(served, "broke", 2)
    assert sorted(r.status for r in rows) == ["failed", "failed"] and all(r.price_nanos == 0 for r in rows)
    assert holds.held(served.platform.db, account_id="tenant:broke") == 0


async def test_a_platform_error_mid_stream_is_settled_once(
    served: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = served.key("midway")

    async def half(_: object) -> AsyncIterator[Delta]:
        yield Delta("ahoy", (1,), None, 5, 1, 10)
        raise Overloaded("the engine went away")

    monkeypatch.setattr(state_of(served.app).engines.decoder, "generate", half)
    r = await served.client.post(
        "/v1/chat/completions", headers=h, json={**CHAT, "max_tokens": 4, "stream": True}
    )
    assert "the engine went away" in r.text
    await asyncio.sleep(0.2)
    rows = await _events(served, "midway", 1)
    assert [(r.status, r.price_nanos) for r in rows] == [("failed", 0)]


@pytest.mark.parametrize(
    ("field", "value"),
    [("seed", 2**80), ("seed", -(2**70)), ("max_tokens", 2**63), ("top_k", 2**40), ("temperature", 1e308)],
)
async def test_numbers_out_of_bounds_are_400_before_any_compute(served: Api, field: str, value: int) -> None:
    r = await served.client.post(
        "/v1/chat/completions", headers=served.key("nums"), json={**CHAT, "max_tokens": 4, field: value}
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == field


async def test_a_64_bit_seed_works(served: Api) -> None:
    r = await served.client.post(
        "/v1/chat/completions", headers=served.key("nums"), json={**CHAT, "max_tokens": 2, "seed": 2**64 - 1}
    )
    assert r.status_code == 200, r.text


async def test_concurrent_requests_never_overrun_a_prepaid_balance(
    served: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """50 requests at once against a balance covering 5 worst cases: 5 are served, 45 are 402,
    nothing is written off. The engine is held until every request has been admitted or refused,
    so that no early settlement frees funds for a later request."""
    meter = state_of(served.app).meter
    # A worst case that holds even on a loaded 2-core machine, where attributed compute inflates.
    monkeypatch.setattr(meter, "compute_estimate", lambda _m, tokens: tokens * PER_TOKEN_NS)
    body = {**CHAT, "max_tokens": 6}
    h = served.key("thrifty")
    ok = await served.client.post("/v1/chat/completions", headers=served.key("warm"), json=body)
    prompt = ok.json()["usage"]["prompt_tokens"]
    worst = meter.quote(
        model_name="pirate",
        input_tokens=prompt,
        max_output_tokens=6,
        compute_ns_estimate=(prompt + 6) * PER_TOKEN_NS,
    )
    with served.platform.db.session() as s:
        ledger.set_limit(s, tenant_id="thrifty", prepaid=True)
        ledger.fund(s, tenant_id="thrifty", amount_nanos=5 * worst + worst // 2)

    decoder = state_of(served.app).engines.decoder
    real, gate, entered = decoder.generate, asyncio.Event(), []

    async def gated(prepared: object) -> AsyncIterator[Delta]:
        entered.append(1)
        await gate.wait()
        async for d in real(prepared):
            yield d

    monkeypatch.setattr(decoder, "generate", gated)

    async def one() -> int:
        return (await served.client.post("/v1/chat/completions", headers=h, json=body)).status_code

    tasks = [asyncio.create_task(one()) for _ in range(50)]
    while len(entered) + sum(t.done() for t in tasks) < 50:
        await asyncio.sleep(0.01)
    gate.set()
    codes = await asyncio.gather(*tasks)
    assert codes.count(200) == 5 and codes.count(402) == 45
    with served.platform.db.session() as s:
        rows = list(s.scalars(select(UsageEvent).where(UsageEvent.tenant_id == "thrifty")))
        assert len(rows) == 5 and all(r.price_nanos == r.list_price_nanos <= worst for r in rows)
        assert s.execute(text("SELECT COUNT(*) FROM ledger_legs WHERE role = 'writeoff'")).scalar() == 0
        assert ledger.verify(s) == []
        assert ledger.balance(s, account_id="tenant:thrifty") >= 0
    assert holds.held(served.platform.db, account_id="tenant:thrifty") == 0


@pytest.mark.parametrize("amount", [2**63 - 1, 10**30, 1e30, 10**15 + 1, -5])
async def test_money_inputs_out_of_bounds_are_400(served: Api, amount: float) -> None:
    served.key("acme")
    h = served.admin
    for path, body in [
        ("/api/tenants/acme/funds", {"amount_nanos": amount}),
        ("/api/tenants/acme/limit", {"spending_limit_nanos": amount}),
    ]:
        send = served.client.post if path.endswith("funds") else served.client.put
        r = await send(path, headers=h, json=body)
        assert r.status_code == 400, (path, r.text)
    r = await served.client.put(
        "/api/terms",
        headers=h,
        json={
            "subject_type": "model",
            "subject": "pirate",
            "contributor": "lab",
            "kind": "per_request",
            "amount_nanos": amount,
        },
    )
    assert r.status_code == 400, r.text
    with served.platform.db.session() as s:
        assert ledger.balance(s, account_id="tenant:acme") == 0
        assert ledger.verify(s) == []


async def test_a_balance_cannot_grow_past_its_maximum(served: Api) -> None:
    served.key("rich")
    with served.platform.db.session() as s:
        near = MAX_BALANCE_NANOS - 10
        ledger.post(
            s,
            kind="correction",
            tenant_id="rich",
            legs=[
                Leg("tenant:rich", "correction", None, near),
                Leg(ledger.DEPOSITS, "correction", None, -near),
            ],
        )
    r = await served.client.post("/api/tenants/rich/funds", headers=served.admin, json={"amount_nanos": 11})
    assert r.status_code == 400 and "the most a balance may hold" in r.json()["error"]["message"]
    r = await served.client.post("/api/tenants/rich/funds", headers=served.admin, json={"amount_nanos": 10})
    assert r.status_code == 201
    with served.platform.db.session() as s:
        assert ledger.balance(s, account_id="tenant:rich") == MAX_BALANCE_NANOS
        assert ledger.verify(s) == []


async def test_the_tables_refuse_an_overflowing_balance(served: Api) -> None:
    """The last guard: on SQLite an overflowing addition would silently become a float."""
    served.key("rich")
    with served.platform.db.session() as s:
        ledger.fund(s, tenant_id="rich", amount_nanos=1)
    with (
        pytest.raises(DBAPIError, match=r"ck_account_bounds|out of range"),
        served.platform.db.session() as s,
    ):
        s.execute(text("UPDATE ledger_accounts SET balance_nanos = balance_nanos + 9223372036854775807"))
    with served.platform.db.session() as s:
        assert ledger.balance(s, account_id="tenant:rich") == 1 and ledger.verify(s) == []


async def test_verify_reports_sums_too_large_for_the_database(served: Api) -> None:
    """Legs written behind the ledger's back whose sums overflow 64 bits: verify reports them
    (summed exactly) instead of crashing on SQLite's integer overflow."""
    big = 2**62
    with served.platform.db.session() as s:
        for txn in (900_001, 900_002, 900_003):
            s.execute(
                text(
                    "INSERT INTO ledger_legs (txn_id, n, account_id, role, artifact, amount_nanos) VALUES "
                    f"({txn}, 0, 'tenant:x', 'correction', NULL, {big}), "
                    f"({txn}, 1, 'contributor:y', 'correction', NULL, -{big})"
                )
            )
            s.execute(
                text(
                    "INSERT INTO ledger_transactions (id, kind, tenant_id, created_us, memo) "
                    f"VALUES ({txn}, 'correction', 'x', 0, '')"
                )
            )
    with served.platform.db.session() as s:
        problems = ledger.verify(s)
    assert f"legs on tenant:x (sum {3 * big}) but no account row" in problems
