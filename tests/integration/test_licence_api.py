"""Licence handling through the HTTP API in-process: each refusal code (through a test-only
route that calls check_use, as the inference routes do), acceptances, tenant declarations,
effective terms on GET /api/models/{name}, /v1/models flags, custom licences."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import APIRouter
from tests.integration.conftest import Api

from constellation.api.deps import InferenceCaller, SessionDep
from constellation.registry import contributors, datasets, models
from constellation.registry.effective import check_use
from constellation.registry.tables import Artifact

pytestmark = pytest.mark.anyio
DIGEST = "0" * 64


def _use_route() -> APIRouter:
    """What an inference route does before any compute: resolve the model, then check_use."""
    router = APIRouter()

    @router.post("/test/use/{name}")
    def use(name: str, caller: InferenceCaller, s: SessionDep) -> dict[str, Any]:
        m = models.get_visible_model(s, name=name, tenant_id=caller.tenant_id)
        return {"notices": check_use(s, tenant_id=caller.tenant_id, model=m).notices}

    return router


@pytest.fixture
def lic_api(api: Api) -> Api:
    """Models: `minilm` (apache base), `nc-sent` (NC adapter on NC data), `llama` (capped, AUP)."""
    api.app.include_router(_use_route())
    with api.platform.db.session() as s:
        contributors.ensure_contributor(s, id="acme", name="ACME", kind="organisation")
        s.add(Artifact(digest=DIGEST, kind="model", size_bytes=0, files={}))

        def add(name: str, licence: str, kind: str = "base", base: str | None = None) -> models.Model:
            return models.add_model(
                s,
                name=name,
                kind=kind,
                task="embedding",
                artifact_digest=DIGEST,
                licence_id=licence,
                author_id="acme",
                base_name=base,
            )

        add("minilm", "apache-2.0")
        add("llama", "llama3-community")
        nc = add("nc-sent", "cc-by-nc-4.0", kind="adapter", base="minilm")
        d = datasets.add_dataset(
            s,
            name="reviews-nc",
            artifact_digest=DIGEST,
            sha256="1" * 64,
            example_count=4,
            licence_id="cc-by-nc-4.0",
            provider_id="acme",
        )
        models.link_dataset(s, model=nc, dataset=d, weight=4)
    return api


def refused(r: Any, code: str) -> str:
    assert r.status_code == 403, r.text
    err = r.json()["error"]
    assert (err["type"], err["code"], err["param"]) == ("permission_error", code, "model")
    message: str = err["message"]
    return message


async def test_non_commercial_refusal_and_non_commercial_tenant_served(lic_api: Api) -> None:
    c = lic_api.client
    msg = refused(await c.post("/test/use/nc-sent", headers=lic_api.key("shop")), "license_non_commercial")
    assert "model 'nc-sent' (cc-by-nc-4.0)" in msg and "non-commercial use only" in msg
    assert "you may use: minilm." in msg
    r = await c.post("/test/use/nc-sent", headers=lic_api.key("lab", declared_use="non-commercial"))
    assert r.status_code == 200, r.text
    notices = r.json()["notices"]
    assert any(n.startswith("reviews-nc (cc-by-nc-4.0): ") for n in notices)
    assert any(n.startswith("minilm (apache-2.0): ") for n in notices)


async def test_restrictions_refusal_until_the_tenant_accepts(lic_api: Api) -> None:
    c, key = lic_api.client, lic_api.key("shop")
    msg = refused(await c.post("/test/use/llama", headers=key), "license_restrictions_not_accepted")
    assert "model 'llama' (llama3-community)" in msg and "Acceptable Use Policy" in msg
    assert "POST /api/tenants/shop/acceptances" in msg
    r = await c.post("/api/tenants/shop/acceptances", headers=key, json={"license": "llama3-community"})
    assert r.status_code == 201, r.text
    key_id = key["Authorization"].split("_")[1]
    assert (r.json()["key_id"], r.json()["via"]) == (key_id, "api")
    assert (await c.post("/test/use/llama", headers=key)).status_code == 200
    r = await c.delete("/api/tenants/shop/acceptances/llama3-community", headers=key)
    assert r.status_code == 200 and r.json()["withdrawn_at"]
    refused(await c.post("/test/use/llama", headers=key), "license_restrictions_not_accepted")


async def test_user_limit_refusal_after_declaring_more_users(lic_api: Api) -> None:
    c, key = lic_api.client, lic_api.key("shop")
    await c.post("/api/tenants/shop/acceptances", headers=key, json={"license": "llama3-community"})
    r = await c.patch("/api/tenants/shop", headers=lic_api.admin, json={"monthly_active_users": 700_000_001})
    assert r.status_code == 200 and r.json()["monthly_active_users"] == 700_000_001
    msg = refused(await c.post("/test/use/llama", headers=key), "license_user_limit")
    assert "700,000,000 monthly active users" in msg and "model 'llama' (llama3-community)" in msg


async def test_acceptances_are_the_tenants_own_business(lic_api: Api) -> None:
    c = lic_api.client
    lic_api.key("shop")
    other = lic_api.key("rival")
    r = await c.post("/api/tenants/shop/acceptances", headers=other, json={"license": "gemma"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "wrong_tenant"
    r = await c.post("/api/tenants/shop/acceptances", headers=lic_api.admin, json={"license": "gemma"})
    assert r.status_code == 201
    listed = (await c.get("/api/tenants/shop/acceptances", headers=lic_api.admin)).json()
    assert [a["license"] for a in listed] == ["gemma"]
    r = await c.post("/api/tenants/shop/acceptances", headers=lic_api.admin, json={"license": "mit"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "nothing_to_accept"
    r = await c.patch("/api/tenants/shop", headers=other, json={"declared_use": "non-commercial"})
    assert r.status_code == 403  # declarations are changed by an admin only


async def test_declaring_non_commercial_use_through_the_api(lic_api: Api) -> None:
    c, key = lic_api.client, lic_api.key("shop")
    refused(await c.post("/test/use/nc-sent", headers=key), "license_non_commercial")
    r = await c.patch("/api/tenants/shop", headers=lic_api.admin, json={"declared_use": "non-commercial"})
    assert r.json()["declared_use"] == "non-commercial"
    assert (await c.post("/test/use/nc-sent", headers=key)).status_code == 200
    r = await c.patch("/api/tenants/shop", headers=lic_api.admin, json={"declared_use": "personal"})
    assert r.status_code == 400


async def test_admin_model_shows_effective_terms_with_sources(lic_api: Api) -> None:
    body = (await lic_api.client.get("/api/models/nc-sent", headers=lic_api.admin)).json()
    terms = body["effective_terms"]
    assert terms["commercial_use"] is False
    sources = {(b["artifact"], b["artifact_type"], b["license"]) for b in terms["commercial_blockers"]}
    assert sources == {("nc-sent", "model", "cc-by-nc-4.0"), ("reviews-nc", "dataset", "cc-by-nc-4.0")}


async def test_v1_models_says_what_the_tenant_may_use(lic_api: Api) -> None:
    data = (await lic_api.client.get("/v1/models", headers=lic_api.key("shop"))).json()["data"]
    flags = {m["id"]: (m["constellation"]["permitted"], m["constellation"]["refusal"]) for m in data}
    assert flags["minilm"] == (True, None)
    assert flags["nc-sent"][0] is False and flags["nc-sent"][1]["code"] == "license_non_commercial"
    assert flags["llama"][1]["code"] == "license_restrictions_not_accepted"
    one = (await lic_api.client.get("/v1/models/minilm", headers=lic_api.key("shop"))).json()
    assert one["constellation"]["permitted"] is True and one["constellation"]["notices"]


async def test_custom_licence_is_validated_then_enforced(lic_api: Api) -> None:
    c, admin = lic_api.client, lic_api.admin
    bad = {"id": "Acme EULA", "name": "ACME", "commercial_use": True, "user_limit": 0}
    r = await c.post("/api/licences", headers=admin, json=bad)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request"
    good = {"id": "acme-eula", "name": "ACME EULA", "commercial_use": True, "user_limit": 10}
    assert (await c.post("/api/licences", headers=admin, json=good)).status_code == 201
    with lic_api.platform.db.session() as s:
        models.add_model(
            s,
            name="acme-model",
            kind="base",
            task="embedding",
            artifact_digest=DIGEST,
            licence_id="acme-eula",
            author_id="acme",
        )
    key = lic_api.key("shop")
    assert (await c.post("/test/use/acme-model", headers=key)).status_code == 200
    await c.patch("/api/tenants/shop", headers=admin, json={"monthly_active_users": 11})
    msg = refused(await c.post("/test/use/acme-model", headers=key), "license_user_limit")
    assert "model 'acme-model' (acme-eula)" in msg
