"""Billing API in-process: invoices and statements (JSON and CSV), who may read which, usage,
funds and limits. Requests are recorded through the Meter the inference routes use."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from tests.integration.conftest import Api
from tests.unit.economy.conftest import build_constellation, usage

from constellation.api.routes import billing
from constellation.economy.meter import Meter
from constellation.registry import ownership

pytestmark = pytest.mark.anyio


@pytest.fixture
async def billed(api: Api) -> AsyncIterator[Api]:
    """The priced demo lineage, three requests by acme and one by beta, billing routes mounted."""
    if not any(getattr(r, "path", "") == "/api/invoices" for r in api.app.routes):
        api.app.include_router(billing.router)
    with api.platform.db.session() as s:
        build_constellation(s)
    meter = Meter(api.platform.db, api.platform.settings.prices)
    for i in range(3):
        await meter.record(usage(f"a{i}"))
    await meter.record(usage("b0", tenant="beta", model="enc"))
    meter.close()
    yield api


async def test_tenant_reads_own_invoice_json_and_csv(billed: Api) -> None:
    acme = billed.key("acme")
    r = await billed.client.get("/api/invoices", headers=acme)
    assert r.status_code == 200, r.text
    inv = r.json()
    assert inv["tenant"] == "acme" and inv["requests"] == 3 and inv["total_nanos"] > 0
    assert sorted(inv["lines_by_model"][0]["request_ids"]) == ["a0", "a1", "a2"]
    r = await billed.client.get(
        "/api/invoices", headers=acme, params={"period": inv["period"], "format": "csv"}
    )
    assert r.headers["content-type"].startswith("text/csv") and "a1" in r.text
    r = await billed.client.get("/api/invoices", headers=acme, params={"tenant": "beta"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "insufficient_scope"
    r = await billed.client.get("/api/invoices", headers=acme, params={"period": "2026-13"})
    assert r.status_code == 400 and "YYYY-MM" in r.json()["error"]["message"]


async def test_contributor_key_reads_only_its_own_statement(billed: Api) -> None:
    with billed.platform.db.session() as s:
        ownership.link(s, tenant_id="acme", contributor_id="ada")
    ada = billed.key("acme", "contributor:ada")
    r = await billed.client.get("/api/statements", headers=ada, params={"contributor": "ada"})
    assert r.status_code == 200, r.text
    st = r.json()
    assert (
        st["contributor"] == "ada"
        and st["requests"] == 3
        and st["lines_by_artifact"][0]["artifact"] == "enc-sent"
    )
    r = await billed.client.get("/api/statements", headers=ada, params={"contributor": "sbert"})
    assert r.status_code == 403
    r = await billed.client.get("/api/statements", headers=billed.admin, params={"contributor": "sbert"})
    assert r.status_code == 200 and r.json()["requests"] == 4


async def test_admin_funds_and_limits_and_usage_listing(billed: Api) -> None:
    r = await billed.client.post("/api/tenants/beta/funds", headers=billed.admin, json={"amount_nanos": 5000})
    assert r.status_code == 201, r.text
    r = await billed.client.put("/api/tenants/beta/limit", headers=billed.admin, json={"prepaid": True})
    assert r.status_code == 200, r.text
    r = await billed.client.put("/api/tenants/acme/limit", headers=billed.admin, json={"prepaid": True})
    assert r.status_code == 400  # acme owes money already: prepaid would start below its floor
    r = await billed.client.post(
        "/api/tenants/beta/funds", headers=billed.key("beta"), json={"amount_nanos": 1}
    )
    assert r.status_code == 403
    r = await billed.client.get("/api/usage", headers=billed.key("beta"))
    assert [e["request_id"] for e in r.json()] == ["b0"]
    r = await billed.client.get("/api/balances", headers=billed.admin)
    assert {b["account"] for b in r.json()} >= {
        "tenant:acme",
        "tenant:beta",
        "contributor:ada",
        "external:deposits",
    }


async def test_a_csv_for_a_non_latin_name_downloads(billed: Api) -> None:
    """Found by the fuzzer: a name outside Latin-1 in Content-Disposition was a 500."""
    r = await billed.client.get(
        "/api/invoices", headers=billed.admin, params={"tenant": "ĀcmeΩ", "format": "csv"}
    )
    assert r.status_code == 200, r.text
    disposition = r.headers["content-disposition"]
    assert disposition.isascii() and "filename*=UTF-8''invoice-%C4%80cme%CE%A9-" in disposition
