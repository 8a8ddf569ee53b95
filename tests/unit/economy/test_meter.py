"""Meter on SQLite and PostgreSQL: each request charged once with a balanced split; retries
replay the first bill; failures are free; prepaid balances are never overdrawn under
concurrency; invoices and statements add up to the ledger."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import select
from tests.unit.economy.conftest import usage

from constellation.economy import ledger, reports
from constellation.economy.meter import Bill, Meter
from constellation.economy.tables import UsageEvent
from constellation.errors import Conflict, PaymentRequired
from constellation.platform import Platform


def _balances(p: Platform) -> dict[str, int]:
    with p.db.session() as s:
        return {str(r["account"]): int(r["balance_nanos"]) for r in ledger.balances(s)}  # type: ignore[call-overload]


def test_record_charges_tenant_and_credits_each_contributor(meter: Meter, priced: Platform) -> None:
    bill = asyncio.run(meter.record(usage("r1")))
    assert bill.price_nanos > 0 and sum(x["amount_nanos"] for x in bill.split) == bill.price_nanos
    assert {x["role"] for x in bill.split} == {"infra", "base", "adapter", "data", "platform"}
    bal = _balances(priced)
    assert bal["tenant:acme"] == -bill.price_nanos
    for x in bill.split:
        assert bal[f"contributor:{x['account']}"] == x["amount_nanos"]
    with priced.db.session() as s:
        assert ledger.verify(s) == []


def test_same_idempotency_key_is_charged_once_and_replays_first_response(
    meter: Meter, priced: Platform
) -> None:
    async def go() -> list:
        first = await meter.record(usage("r1", key="k"))
        again = await meter.record(usage("r2", key="k"))
        together = await asyncio.gather(*(meter.record(usage(f"c{i}", key="k2")) for i in range(20)))
        return [first, again, *together]

    first, again, *together = asyncio.run(go())
    assert again == first and all(b == together[0] for b in together)
    assert _balances(priced)["tenant:acme"] == -(first.price_nanos + together[0].price_nanos)
    body = meter.replay(tenant_id="acme", idempotency_key="k", fingerprint=usage("x").fingerprint)
    assert (
        body is not None
        and body["data"] == ["r1"]
        and body["constellation"]["price_nanos"] == first.price_nanos
    )
    assert meter.replay(tenant_id="beta", idempotency_key="k", fingerprint=usage("x").fingerprint) is None
    with pytest.raises(Conflict):
        meter.replay(tenant_id="acme", idempotency_key="k", fingerprint=usage("x", body="other").fingerprint)


def test_failed_request_recorded_not_charged_and_key_stays_free(meter: Meter, priced: Platform) -> None:
    async def go() -> tuple:
        failed = await meter.record(usage("f1", key="k", status="failed"))
        ok = await meter.record(usage("f2", key="k"))
        return failed, ok

    failed, ok = asyncio.run(go())
    assert failed.price_nanos == 0 and failed.split == []
    assert ok.price_nanos > 0 and _balances(priced)["tenant:acme"] == -ok.price_nanos
    with priced.db.session() as s:
        events = {e["request_id"]: e for e in reports.usage_events(s, tenant_id="acme")}
        assert events["f1"]["status"] == "failed" and events["f1"]["price_nanos"] == 0
        assert ledger.verify(s) == []


def test_admit_refuses_before_compute_with_balance_and_price(meter: Meter, priced: Platform) -> None:
    with priced.db.session() as s:
        ledger.set_limit(s, tenant_id="acme", prepaid=True)
        ledger.fund(s, tenant_id="acme", amount_nanos=1_000)
    est = meter.quote(
        model_name="enc-sent", input_tokens=100, max_output_tokens=0, compute_ns_estimate=2_000_000
    )
    meter.admit(tenant_id="acme", estimate_nanos=est)  # holds `est` until record
    with pytest.raises(PaymentRequired) as e:
        meter.admit(tenant_id="acme", estimate_nanos=1_000)
    assert "0.000001000" in e.value.message and "tenants fund acme" in e.value.message
    meter.admit(tenant_id="beta", estimate_nanos=10**15)  # no limit set: admitted


@pytest.mark.parametrize("writers", [1, 2])
def test_parallel_postings_never_overdraw_a_prepaid_balance(priced: Platform, writers: int) -> None:
    """Two Meters stand in for two server processes racing on one tenant."""
    with priced.db.session() as s:
        ledger.set_limit(s, tenant_id="acme", prepaid=True)
        ledger.fund(s, tenant_id="acme", amount_nanos=10_000)
    meters = [Meter(priced.db, priced.settings.prices) for _ in range(writers)]

    async def go() -> list:
        return await asyncio.gather(*(meters[i % writers].record(usage(f"p{i}")) for i in range(60)))

    bills = asyncio.run(go())
    for m in meters:
        m.close()
    charged = sum(b.price_nanos for b in bills)
    assert _balances(priced)["tenant:acme"] == 10_000 - charged >= 0
    assert charged > 10_000 - bills[0].price_nanos - 10  # it did spend the funds, up to the floor
    with priced.db.session() as s:
        assert ledger.verify(s) == []


def test_invoice_and_statements_equal_ledger_balances(meter: Meter, priced: Platform) -> None:
    async def go() -> None:
        await asyncio.gather(*(meter.record(usage(f"i{i}", input_tokens=10 * i)) for i in range(12)))
        await asyncio.gather(*(meter.record(usage(f"j{i}", tenant="beta", model="enc")) for i in range(5)))

    asyncio.run(go())
    bal = _balances(priced)
    with priced.db.session() as s:
        inv = reports.invoice(s, tenant_id="acme")
        assert inv["total_nanos"] == -bal["tenant:acme"] and inv["requests"] == 12
        assert sum(ln["amount_nanos"] for ln in inv["lines_by_artifact"]) == inv["total_nanos"]
        assert (
            inv["lines_by_model"][0]["model"] == "enc-sent"
            and len(inv["lines_by_model"][0]["request_ids"]) == 12
        )
        assert inv["notices"] and inv["notices"][0]["model"] == "enc-sent"
        for acct, amount in bal.items():
            if acct.startswith("contributor:"):
                st = reports.statement(s, contributor_id=acct.split(":", 1)[1])
                assert st["total_nanos"] == amount
        sbert = reports.statement(s, contributor_id="sbert")
        assert {ln["model"] for ln in sbert["lines_by_model"]} == {"enc", "enc-sent"}
        assert "i3" in reports.to_csv(inv) and reports.to_csv(sbert).count("\n") == 5
        assert reports.invoice(s, tenant_id="acme", period="2001-01")["total_nanos"] == 0


def test_unlimited_tenant_skips_the_balance_read_until_its_limit_changes(
    meter: Meter, priced: Platform
) -> None:
    assert not meter.unlimited("beta")
    meter.admit(tenant_id="beta", estimate_nanos=10**15)
    assert meter.unlimited("beta")  # the hot path now admits without a database read
    with priced.db.session() as s:
        ledger.set_limit(s, tenant_id="beta", prepaid=True)
    meter.invalidate_prices()  # what the API does after an admin write
    assert not meter.unlimited("beta")
    with pytest.raises(PaymentRequired):
        meter.admit(tenant_id="beta", estimate_nanos=1_000)


def test_repeated_request_id_returns_first_bill_and_keys_are_per_tenant(
    meter: Meter, priced: Platform
) -> None:
    async def go() -> list[Bill]:
        first = await meter.record(usage("r1", key="k"))
        repeat = await meter.record(usage("r1", input_tokens=999))  # same request id, other usage
        other = await meter.record(usage("r2", tenant="beta", key="k"))  # same key, other tenant
        return [first, repeat, other]

    first, repeat, other = asyncio.run(go())
    assert repeat == first and other.request_id == "r2"
    bal = _balances(priced)
    assert bal["tenant:acme"] == -first.price_nanos and bal["tenant:beta"] == -other.price_nanos


def test_stored_bill_is_the_returned_bill_even_for_odd_request_ids(meter: Meter, priced: Platform) -> None:
    rid = 'r"1\\é\n'  # quotes, a backslash, non-ASCII and a newline: the bill's JSON must escape them
    bill = asyncio.run(meter.record(usage(rid)))
    with priced.db.session() as s:
        stored = s.execute(select(UsageEvent.bill).where(UsageEvent.request_id == rid)).scalar_one()
    assert Bill.from_dict(stored) == bill and bill.price_nanos > 0 and len(bill.split) >= 3
    assert {x["role"] for x in bill.split} >= {"infra", "base", "adapter", "data", "platform"}
