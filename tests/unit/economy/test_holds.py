"""Spending holds, on SQLite and PostgreSQL: admission is atomic across threads and meters
(processes), a posting releases its hold in the same transaction -- also a duplicate's or a
refused one's -- and an abandoned hold expires instead of blocking the tenant for good."""

from __future__ import annotations

import asyncio
import threading

import pytest
from sqlalchemy import text
from tests.unit.economy.conftest import usage

from constellation.economy import holds, ledger
from constellation.economy.meter import Meter
from constellation.errors import Conflict, PaymentRequired
from constellation.platform import Platform


def _prepaid(p: Platform, amount: int) -> None:
    with p.db.session() as s:
        ledger.set_limit(s, tenant_id="acme", prepaid=True)
        ledger.fund(s, tenant_id="acme", amount_nanos=amount)


def test_concurrent_admissions_hold_exactly_what_the_balance_covers(priced: Platform) -> None:
    """Two meters (two processes) and 40 threads race for a balance that covers 7 holds."""
    _prepaid(priced, 7_000)
    meters = [Meter(priced.db, priced.settings.prices) for _ in range(2)]
    admitted, refused, start = [], [], threading.Barrier(40)

    def go(i: int) -> None:
        start.wait()
        try:
            meters[i % 2].admit(tenant_id="acme", estimate_nanos=1_000, hold_id=f"h{i}")
            admitted.append(i)
        except PaymentRequired:
            refused.append(i)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for m in meters:
        m.close()
    assert len(admitted) == 7 and len(refused) == 33
    assert holds.held(priced.db, account_id="tenant:acme") == 7_000


def test_recording_releases_the_hold_and_charges_the_actual_price(meter: Meter, priced: Platform) -> None:
    _prepaid(priced, 10**9)
    assert meter.admit(tenant_id="acme", estimate_nanos=10**6, hold_id="r1")
    assert holds.held(priced.db, account_id="tenant:acme") == 10**6
    u = usage("r1")
    u.hold = True
    bill = asyncio.run(meter.record(u))
    assert holds.held(priced.db, account_id="tenant:acme") == 0
    with priced.db.session() as s:
        assert ledger.balance(s, account_id="tenant:acme") == 10**9 - bill.price_nanos
        assert s.execute(text("SELECT COUNT(*) FROM ledger_holds")).scalar() == 0


def test_a_duplicate_or_refused_posting_still_releases_its_hold(meter: Meter, priced: Platform) -> None:
    _prepaid(priced, 10**9)
    first = usage("k1", key="same", body="one")
    asyncio.run(meter.record(first))
    for rid, body in (("k2", "one"), ("k3", "two")):  # a replay, then a reused key
        meter.admit(tenant_id="acme", estimate_nanos=10**6, hold_id=rid)
        u = usage(rid, key="same", body=body)
        u.hold = True
        if body == "one":
            asyncio.run(meter.record(u))
        else:
            with pytest.raises(Conflict):
                asyncio.run(meter.record(u))
        assert holds.held(priced.db, account_id="tenant:acme") == 0


def test_an_abandoned_hold_expires(meter: Meter, priced: Platform) -> None:
    _prepaid(priced, 5_000)
    meter.admit(tenant_id="acme", estimate_nanos=5_000, hold_id="lost")  # its request never records
    with pytest.raises(PaymentRequired):
        meter.admit(tenant_id="acme", estimate_nanos=1_000, hold_id="next")
    with priced.db.session() as s:
        s.execute(text("UPDATE ledger_holds SET expires_us = 0 WHERE id = 'lost'"))
    assert meter.admit(tenant_id="acme", estimate_nanos=1_000, hold_id="next")
    assert holds.held(priced.db, account_id="tenant:acme") == 1_000


def test_a_tenant_without_a_floor_holds_nothing(meter: Meter, priced: Platform) -> None:
    assert meter.admit(tenant_id="beta", estimate_nanos=10**15, hold_id="x") is False
    assert holds.held(priced.db, account_id="tenant:beta") == 0


def test_an_overrun_is_written_off_by_the_platform_not_the_contributors(
    meter: Meter, priced: Platform
) -> None:
    """A request whose actual price exceeds what the tenant can pay: the tenant pays what it
    can, every contributor gets its full leg, the platform writes off the rest."""
    _prepaid(priced, 100)
    bill = asyncio.run(meter.record(usage("over", input_tokens=10_000)))
    assert bill.price_nanos == 100 and bill.written_off_nanos > 0
    contributors = [g for g in bill.split if g["role"] not in ("writeoff",)]
    writeoff = [g for g in bill.split if g["role"] == "writeoff"]
    assert sum(g["amount_nanos"] for g in contributors) == 100 + bill.written_off_nanos
    assert writeoff == [
        {"account": "platform", "role": "writeoff", "artifact": None, "amount_nanos": -bill.written_off_nanos}
    ]
    with priced.db.session() as s:
        assert ledger.balance(s, account_id="tenant:acme") == 0
        assert ledger.verify(s) == []
