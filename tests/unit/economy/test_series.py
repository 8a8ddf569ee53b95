"""Daily series against the invoice and the statements: charges posted on chosen days of a month
(and just outside it), free and failed requests, a fine-tune and a write-off; every sum equals
the invoice's or the statement's total to the nano-USD, also for an empty month."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import UTC, datetime
from typing import Any

import pytest
from tests.unit.economy.conftest import build_constellation, usage

from constellation.config import Settings
from constellation.economy import ledger, reports, writer
from constellation.economy.meter import Meter
from constellation.economy.series import DAY_US, earnings_series, month_days, usage_series
from constellation.platform import Platform

MARCH = int(datetime(2025, 3, 1, tzinfo=UTC).timestamp()) * 1_000_000
CONTRIBUTORS = ("sbert", "ada", "dp1", "dp2", "platform", "infra-cpu")


def _at(us: int) -> datetime:
    return datetime.fromtimestamp(us / 1e6, UTC)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def month(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    """Charges posted on 1, 1, 15, 22, 30 and 31 March, one on 28 Feb 23:59:59.999999 and one at
    1 April 00:00; a failed request, a fine-tune, and a charge capped by a prepaid balance. Built
    once per database for the module: every test here only reads it."""
    tmp = tmp_path_factory.mktemp("month")
    with ExitStack() as stack:
        if request.param == "sqlite":
            shutil.copyfile(request.getfixturevalue("sqlite_template"), tmp / "test.db")
            url = f"sqlite:///{tmp / 'test.db'}"
        else:
            url = stack.enter_context(request.getfixturevalue("pg_schemas").fresh())
        platform = Platform(Settings(data_dir=tmp / "data", db_url=url)).open()
        stack.callback(platform.close)
        with platform.db.session() as s:
            build_constellation(s)
        meter = Meter(platform.db, platform.settings.prices)
        stack.callback(meter.close)
        _post_month(meter, platform, stack.enter_context(pytest.MonkeyPatch.context()))
        yield platform


def _post_month(meter: Meter, priced: Platform, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [0]
    monkeypatch.setattr(writer, "now_us", lambda: clock[0])

    def post(rid: str, at_us: int, **kw: Any) -> None:
        clock[0] = at_us
        u = usage(rid, when=_at(at_us), **kw)
        if rid.startswith("ft"):
            u.operation = "finetune"
        asyncio.run(meter.record(u))

    post("a", MARCH + 10)
    post("b", MARCH + 3_600_000_000, model="enc", input_tokens=250)
    post("c", MARCH + 14 * DAY_US + 5, output_tokens=7)
    post("fail", MARCH + 20 * DAY_US, status="failed")
    post("ft1", MARCH + 21 * DAY_US, compute_ns=3 * 10**9)
    post("late", MARCH + 31 * DAY_US - 1)
    post("feb", MARCH - 1)
    post("apr", MARCH + 31 * DAY_US)
    with priced.db.session() as s:  # what it owes so far, plus 100: too little for the next charge
        owed = -ledger.balance(s, account_id="tenant:acme")
        ledger.fund(s, tenant_id="acme", amount_nanos=owed + 100)
        ledger.set_limit(s, tenant_id="acme", prepaid=True)
    meter.invalidate_prices()
    post("capped", MARCH + 29 * DAY_US, input_tokens=10_000)


@pytest.mark.parametrize("period", ["2025-02", "2025-03", "2025-04", "2024-01"])
def test_usage_series_sums_to_the_invoice(month: Platform, period: str) -> None:
    with month.db.session() as s:
        inv = reports.invoice(s, tenant_id="acme", period=period)
        doc = usage_series(s, tenant_id="acme", period=period)
    assert doc["totals"]["spend_nanos"] == inv["total_nanos"]
    assert doc["totals"]["billed_requests"] == inv["requests"]
    by_model = {(ln["model"], ln["operation"]): ln["amount_nanos"] for ln in inv["lines_by_model"]}
    assert {(ln["model"], ln["operation"]): sum(ln["spend_nanos"]) for ln in doc["series"]} == by_model
    assert all(len(ln[f]) == len(doc["days"]) for ln in doc["series"] for f in ("requests", "spend_nanos"))


@pytest.mark.parametrize("period", ["2025-02", "2025-03", "2025-04", "2024-01"])
@pytest.mark.parametrize("contributor", CONTRIBUTORS)
def test_earnings_series_sums_to_the_statement(month: Platform, period: str, contributor: str) -> None:
    with month.db.session() as s:
        st = reports.statement(s, contributor_id=contributor, period=period)
        doc = earnings_series(s, contributor_id=contributor, period=period)
    assert doc["totals"] == {"amount_nanos": st["total_nanos"], "requests": st["requests"]}
    by_artifact = {(ln["role"], ln["artifact"]): ln["amount_nanos"] for ln in st["lines_by_artifact"]}
    assert {(ln["role"], ln["artifact"]): sum(ln["amount_nanos"]) for ln in doc["series"]} == by_artifact


def test_each_request_counts_on_the_day_it_was_charged(month: Platform) -> None:
    with month.db.session() as s:
        doc = usage_series(s, tenant_id="acme", period="2025-03")
    assert len(doc["days"]) == 31 and doc["days"][0] == "2025-03-01" and doc["days"][-1] == "2025-03-31"
    lines = {(ln["model"], ln["operation"]): ln for ln in doc["series"]}
    adapter = lines[("enc-sent", "inference")]
    assert [i for i, n in enumerate(adapter["requests"]) if n] == [
        0,
        14,
        20,
        29,
        30,
    ]  # a, c, fail, capped, late
    assert adapter["failed"][20] == 1 and adapter["spend_nanos"][20] == 0
    assert adapter["output_tokens"][14] == 7 and adapter["input_tokens"][29] == 10_000
    assert lines[("enc", "inference")]["input_tokens"][0] == 250
    assert lines[("enc-sent", "finetune")]["spend_nanos"][21] > 0
    assert doc["totals"]["requests"] == 7 and doc["totals"]["billed_requests"] == 6
    assert doc["totals"]["failed"] == 1


def test_a_write_off_is_a_negative_series_of_the_platform(month: Platform) -> None:
    with month.db.session() as s:
        doc = earnings_series(s, contributor_id="platform", period="2025-03")
    writeoff = next(ln for ln in doc["series"] if ln["role"] == "writeoff")
    assert writeoff["artifact"] is None and writeoff["amount_nanos"][29] < 0
    assert sum(writeoff["amount_nanos"]) == writeoff["amount_nanos"][29]


def test_an_empty_month_has_every_day_and_nothing_in_it(platform: Platform) -> None:
    with platform.db.session() as s:
        doc = usage_series(s, tenant_id="nobody", period="2024-02")
        earned = earnings_series(s, contributor_id="nobody", period="2024-02")
    assert doc["days"] == month_days(*reports.period_bounds("2024-02")[1:]) and len(doc["days"]) == 29
    assert doc["series"] == [] and earned["series"] == []
    assert doc["totals"] == dict.fromkeys(doc["totals"], 0)
    assert earned["totals"] == {"amount_nanos": 0, "requests": 0}
