"""Meter.unlimited: a tenant seen without a spending floor skips `admit` for FLOOR_TTL_S; once
that expires one caller re-reads the floor while the others go on, for at most another TTL."""

from __future__ import annotations

import pytest

from constellation.economy import ledger
from constellation.economy.meter import FLOOR_TTL_S, Meter
from constellation.errors import PaymentRequired
from constellation.platform import Platform


def _age(meter: Meter, tenant: str, seconds: float) -> None:
    """Make the tenant's last floor read `seconds` older (instead of waiting)."""
    meter._unlimited[tenant] -= seconds


def test_unknown_tenant_is_not_unlimited(meter: Meter) -> None:
    assert meter.unlimited("acme") is False
    assert meter.unlimited("acme") is False  # never admitted: every caller must admit


def test_admitted_without_floor_is_unlimited(meter: Meter) -> None:
    meter.admit(tenant_id="acme", estimate_nanos=10**12)  # no floor: any estimate passes
    assert [meter.unlimited("acme") for _ in range(3)] == [True, True, True]
    assert meter.unlimited("beta") is False  # per tenant


def test_expiry_sends_one_caller_to_reread(meter: Meter) -> None:
    meter.admit(tenant_id="acme", estimate_nanos=0)
    _age(meter, "acme", FLOOR_TTL_S + 0.5)
    assert meter.unlimited("acme") is False  # this caller re-reads via admit
    assert [meter.unlimited("acme") for _ in range(3)] == [True, True, True]  # the rest go on
    meter.admit(tenant_id="acme", estimate_nanos=0)
    assert [meter.unlimited("acme") for _ in range(3)] == [True, True, True]


def test_pending_reread_covers_others_for_at_most_another_ttl(meter: Meter) -> None:
    meter.admit(tenant_id="acme", estimate_nanos=0)
    _age(meter, "acme", FLOOR_TTL_S + 0.5)
    assert meter.unlimited("acme") is False
    assert meter.unlimited("acme") is True
    _age(meter, "acme", FLOOR_TTL_S)  # the re-read never came back: past 2 * FLOOR_TTL_S
    assert meter.unlimited("acme") is False


def test_failed_reread_sends_the_next_caller(meter: Meter, monkeypatch: pytest.MonkeyPatch) -> None:
    meter.admit(tenant_id="acme", estimate_nanos=0)
    _age(meter, "acme", FLOOR_TTL_S + 0.5)
    assert meter.unlimited("acme") is False

    class Down:
        def session(self) -> None:
            raise ConnectionError("database down")

    monkeypatch.setattr(meter, "_db", Down())
    with pytest.raises(ConnectionError):
        meter.admit(tenant_id="acme", estimate_nanos=0)
    assert meter.unlimited("acme") is False  # nobody is re-reading now: this caller does


def test_floor_set_later_is_seen_at_the_reread(meter: Meter, priced: Platform) -> None:
    meter.admit(tenant_id="acme", estimate_nanos=0)
    with priced.db.session() as s:
        ledger.set_limit(s, tenant_id="acme", spending_limit_nanos=1_000)
    assert meter.unlimited("acme") is True  # cached until FLOOR_TTL_S has passed
    _age(meter, "acme", FLOOR_TTL_S + 0.5)
    assert meter.unlimited("acme") is False
    meter.admit(tenant_id="acme", estimate_nanos=10)
    assert [meter.unlimited("acme") for _ in range(3)] == [False, False, False]  # admit every time


def test_floor_refuses_once_reread(meter: Meter, priced: Platform) -> None:
    meter.admit(tenant_id="acme", estimate_nanos=0)
    with priced.db.session() as s:
        ledger.set_limit(s, tenant_id="acme", prepaid=True)  # balance 0, floor 0
    _age(meter, "acme", FLOOR_TTL_S + 0.5)
    assert meter.unlimited("acme") is False
    with pytest.raises(PaymentRequired):
        meter.admit(tenant_id="acme", estimate_nanos=1)
    assert meter.unlimited("acme") is False  # a refused re-read leaves the tenant checked
