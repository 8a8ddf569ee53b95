"""The pictures' data in-process: usage and earnings per day equal the invoice and the statement
(also for an empty month) and are read only by who may read those; the lineage graph shows
only what the key can see, with lineage weights, licence families, verdicts and price cards."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

import pytest
from tests.integration.conftest import Api
from tests.unit.economy.conftest import build_constellation, usage

from constellation.economy.meter import Meter
from constellation.registry import datasets, models, ownership
from constellation.registry.tables import Artifact

pytestmark = pytest.mark.anyio


@pytest.fixture
async def billed(api: Api) -> AsyncIterator[Api]:
    """The priced lineage of the economy tests plus a non-commercial adapter and beta's private
    model trained on beta's data set; three requests by acme, one by beta."""
    with api.platform.db.session() as s:
        build_constellation(s)
        digest = hashlib.sha256(b"insights").hexdigest()
        s.add(Artifact(digest=digest, kind="model", size_bytes=1, files={}))
        models.add_model(
            s,
            name="enc-nc",
            kind="adapter",
            task="classification",
            artifact_digest=digest,
            licence_id="cc-by-nc-4.0",
            author_id="ada",
            base_name="enc",
            labels=["a", "b"],
        )
        secret = models.add_model(
            s,
            name="beta-secret",
            kind="adapter",
            task="classification",
            artifact_digest=digest,
            licence_id="mit",
            author_id="dp2",
            base_name="enc",
            labels=["a", "b"],
            visibility="private",
            owner_tenant_id="beta",
        )
        d = datasets.add_dataset(
            s,
            name="beta-data",
            artifact_digest=digest,
            sha256=digest,
            example_count=5,
            licence_id="mit",
            provider_id="dp2",
        )
        models.link_dataset(s, model=secret, dataset=d, weight=5)
        ownership.link(s, tenant_id="acme", contributor_id="ada")
    meter = Meter(api.platform.db, api.platform.settings.prices)
    for i in range(3):
        await meter.record(usage(f"a{i}", output_tokens=i))
    await meter.record(usage("b0", tenant="beta", model="enc"))
    meter.close()
    yield api


@pytest.mark.parametrize("period", [None, "2001-01"])
async def test_usage_per_day_sums_to_the_invoice(billed: Api, period: str | None) -> None:
    acme = billed.key("acme")
    params = {"period": period} if period else {}
    daily = (await billed.client.get("/api/usage/daily", headers=acme, params=params)).json()
    invoice = (await billed.client.get("/api/invoices", headers=acme, params=params)).json()
    assert daily["object"] == "usage_series" and daily["period"] == invoice["period"]
    assert daily["totals"]["spend_nanos"] == invoice["total_nanos"]
    assert daily["totals"]["billed_requests"] == invoice["requests"] == (0 if period else 3)
    assert len(daily["days"]) == 31 and all(len(ln["spend_nanos"]) == 31 for ln in daily["series"])
    if period is None:
        (line,) = daily["series"]
        assert line["model"] == "enc-sent" and sum(line["requests"]) == 3 and sum(line["output_tokens"]) == 3


async def test_usage_per_day_is_the_tenants_own_or_an_admins(billed: Api) -> None:
    acme = billed.key("acme")
    r = await billed.client.get("/api/usage/daily", headers=acme, params={"tenant": "beta"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "insufficient_scope"
    r = await billed.client.get("/api/usage/daily", headers=billed.admin, params={"tenant": "beta"})
    assert r.status_code == 200 and r.json()["totals"]["billed_requests"] == 1
    r = await billed.client.get("/api/usage/daily", headers=acme, params={"period": "2026-13"})
    assert r.status_code == 400 and "YYYY-MM" in r.json()["error"]["message"]


@pytest.mark.parametrize("period", [None, "2001-01"])
async def test_earnings_per_day_sum_to_the_statement(billed: Api, period: str | None) -> None:
    ada = billed.key("acme", "contributor:ada")
    params = {"contributor": "ada", **({"period": period} if period else {})}
    daily = (await billed.client.get("/api/statements/daily", headers=ada, params=params)).json()
    statement = (await billed.client.get("/api/statements", headers=ada, params=params)).json()
    assert daily["totals"] == {"amount_nanos": statement["total_nanos"], "requests": statement["requests"]}
    for who in ("sbert", "dp1", "dp2", "platform", "infra-cpu"):
        q = {**params, "contributor": who}
        d = (await billed.client.get("/api/statements/daily", headers=billed.admin, params=q)).json()
        st = (await billed.client.get("/api/statements", headers=billed.admin, params=q)).json()
        assert d["totals"]["amount_nanos"] == st["total_nanos"], who
    r = await billed.client.get("/api/statements/daily", headers=ada, params={"contributor": "sbert"})
    assert r.status_code == 403 and "contributor:sbert" in r.json()["error"]["message"]


async def test_the_lineage_graph_shows_what_the_tenant_can_see(billed: Api) -> None:
    r = await billed.client.get("/api/lineage", headers=billed.key("acme"))
    assert r.status_code == 200, r.text
    g = r.json()
    nodes = {n["id"]: n for n in g["nodes"]}
    assert "model:beta-secret" not in nodes and "dataset:beta-data" not in nodes
    assert {"model:enc", "model:enc-sent", "model:enc-nc", "dataset:d1", "dataset:d2"} <= set(nodes)
    assert nodes["model:enc"]["type"] == "base" and nodes["model:enc-sent"]["base"] == "enc"
    assert nodes["model:enc-sent"]["family"] == "permissive" and nodes["model:enc-sent"]["permitted"] is True
    nc = nodes["model:enc-nc"]
    assert nc["family"] == "non-commercial" and nc["permitted"] is False
    assert nc["refusal"]["code"] == "license_non_commercial"
    assert nc["effective_terms"]["commercial_use"] is False
    edges = {(e["source"], e["target"]): e for e in g["edges"]}
    assert edges[("model:enc", "model:enc-sent")]["relations"] == ["adapter"]
    d2 = edges[("model:enc-sent", "dataset:d2")]
    assert d2["relations"] == ["trained_on"] and (d2["weight"], d2["weight_total"]) == (3, 4)
    assert edges[("dataset:d2", "contributor:dp2")]["relations"] == ["provider", "paid"]
    assert "paid" in edges[("model:enc", "contributor:sbert")]["relations"]
    assert all(e["source"] in nodes and e["target"] in nodes for e in g["edges"])


async def test_a_models_price_card_is_its_terms_and_a_reference_split(billed: Api) -> None:
    g = (await billed.client.get("/api/lineage", headers=billed.key("acme"))).json()
    card = next(n for n in g["nodes"] if n["id"] == "model:enc-sent")["price"]
    kinds = {(t["contributor"], t["role"], t["kind"]) for t in card["terms"]}
    assert ("sbert", "base", "per_1k_input_tokens") in kinds and ("ada", "adapter", "per_request") in kinds
    ref = card["reference"]
    assert ref["input_tokens"] == 1000 and ref["output_tokens"] == 0
    assert ref["price_nanos"] == sum(leg["amount_nanos"] for leg in ref["split"]) > 0
    assert {leg["role"] for leg in ref["split"]} == {"infra", "base", "adapter", "data", "platform"}


async def test_an_admin_sees_every_tenants_models(billed: Api) -> None:
    g = (await billed.client.get("/api/lineage", headers=billed.admin)).json()
    ids = {n["id"] for n in g["nodes"]}
    assert {"model:beta-secret", "dataset:beta-data", "contributor:dp2"} <= ids
