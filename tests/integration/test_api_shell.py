"""The API shell end to end in-process: auth, OpenAI error shape, /v1/models visibility,
admin registry routes and their bad inputs, health and metrics."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.integration.conftest import Api

from constellation.testing.toy_lm import save_random_adapter

pytestmark = pytest.mark.anyio


def assert_error(r, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"]
    if code is not None:
        assert err["code"] == code
    return err


async def _register_minilm(api: Api, minilm_path: Path, **extra) -> dict:
    await api.client.post(
        "/api/contributors", headers=api.admin, json={"id": "sbert", "name": "SBERT", "kind": "organisation"}
    )
    body = {
        "name": "minilm",
        "path": str(minilm_path),
        "task": "embedding",
        "author": "sbert",
        "license": "apache-2.0",
        **extra,
    }
    r = await api.client.post("/api/models", headers=api.admin, json=body)
    return {"status": r.status_code, "json": r.json()}


async def test_health_ready_metrics_docs(api: Api) -> None:
    assert (await api.client.get("/healthz")).json() == {"status": "ok"}
    assert (await api.client.get("/readyz")).json() == {"status": "ready"}
    await api.client.get("/v1/models")
    metrics = (await api.client.get("/metrics")).text
    assert "constellation_http_requests_total" in metrics
    assert (await api.client.get("/docs")).status_code == 200
    assert "/v1/models" in (await api.client.get("/openapi.json")).json()["paths"]


async def test_missing_bad_and_revoked_keys_are_401(api: Api) -> None:
    assert_error(await api.client.get("/v1/models"), 401, "missing_api_key")
    assert_error(await api.client.get("/v1/models", headers={"Authorization": "Bearer nope"}), 401)
    headers = api.key("acme")
    assert (await api.client.get("/v1/models", headers=headers)).status_code == 200
    key_id = headers["Authorization"].split("_")[1]
    assert (await api.client.delete(f"/api/keys/{key_id}", headers=api.admin)).status_code == 200
    assert_error(await api.client.get("/v1/models", headers=headers), 401, "revoked_api_key")


async def test_a_contributor_key_needs_its_tenant_linked(api: Api) -> None:
    api.key("acme")
    c = {"id": "sbert", "name": "SBERT", "kind": "organisation"}
    assert (await api.client.post("/api/contributors", headers=api.admin, json=c)).status_code == 201
    body = {"tenant": "acme", "scopes": ["contributor:sbert"]}
    err = assert_error(await api.client.post("/api/keys", headers=api.admin, json=body), 400)
    assert err["param"] == "scopes"
    assert "constellation tenants link acme --contributor sbert" in err["message"]
    linked = await api.client.put("/api/tenants/acme/contributors/sbert", headers=api.admin)
    assert linked.status_code == 200
    r = await api.client.post("/api/keys", headers=api.admin, json=body)
    assert r.status_code == 201 and r.json()["scopes"] == ["contributor:sbert"]


async def test_non_admin_on_admin_routes_is_403(api: Api) -> None:
    headers = api.key("acme")
    for path in (
        "/api/models",
        "/api/tenants",
        "/api/contributors",
        "/api/keys",
        "/api/datasets",
        "/api/terms",
    ):
        assert_error(await api.client.get(path, headers=headers), 403, "insufficient_scope")


async def test_register_list_and_404(api: Api, minilm_path: Path) -> None:
    r = await _register_minilm(api, minilm_path)
    assert r["status"] == 201, r
    listing = (await api.client.get("/v1/models", headers=api.key("acme"))).json()
    [m] = listing["data"]
    assert m["id"] == "minilm" and m["owned_by"] == "sbert" and m["object"] == "model"
    assert m["constellation"]["task"] == "embedding" and m["constellation"]["license"] == "apache-2.0"
    assert_error(await api.client.get("/v1/models/nope", headers=api.key("acme")), 404, "model_not_found")


async def test_duplicate_is_409_and_unknown_licence_400(api: Api, minilm_path: Path) -> None:
    assert (await _register_minilm(api, minilm_path))["status"] == 201
    dup = await api.client.post(
        "/api/models",
        headers=api.admin,
        json={
            "name": "minilm",
            "path": str(minilm_path),
            "task": "embedding",
            "author": "sbert",
            "license": "mit",
        },
    )
    assert_error(dup, 409)
    bad = await api.client.post(
        "/api/models",
        headers=api.admin,
        json={
            "name": "minilm2",
            "path": str(minilm_path),
            "task": "embedding",
            "author": "sbert",
            "license": "wtfpl",
        },
    )
    err = assert_error(bad, 400, "unknown_license")
    assert "apache-2.0" in err["message"]


async def test_pickle_weights_refused_with_400(api: Api, tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    await api.client.post(
        "/api/contributors", headers=api.admin, json={"id": "x", "name": "X", "kind": "person"}
    )
    r = await api.client.post(
        "/api/models",
        headers=api.admin,
        json={"name": "pickled", "path": str(tmp_path), "task": "embedding", "author": "x", "license": "mit"},
    )
    err = assert_error(r, 400)
    assert "safetensors" in err["message"]


async def test_private_model_hidden_from_other_tenant(api: Api, minilm_path: Path) -> None:
    for t in ("a", "b"):
        await api.client.post("/api/tenants", headers=api.admin, json={"id": t, "name": t})
    r = await _register_minilm(api, minilm_path, visibility="private", owner_tenant="a")
    assert r["status"] == 201
    seen_a = [m["id"] for m in (await api.client.get("/v1/models", headers=api.key("a"))).json()["data"]]
    seen_b = [m["id"] for m in (await api.client.get("/v1/models", headers=api.key("b"))).json()["data"]]
    assert seen_a == ["minilm"] and seen_b == []
    assert_error(await api.client.get("/v1/models/minilm", headers=api.key("b")), 404)


async def test_validation_errors_use_openai_shape(api: Api) -> None:
    r = await api.client.post("/api/tenants", headers=api.admin, json={"id": "t"})
    err = assert_error(r, 400, "invalid_request")
    assert err["param"] == "name"
    assert_error(await api.client.get("/nowhere"), 404)


async def test_docs_render_without_a_cdn(api: Api) -> None:
    page = (await api.client.get("/docs")).text
    assert "cdn" not in page.lower() and "/docs-assets/swagger-ui-bundle.js" in page
    js = await api.client.get("/docs-assets/swagger-ui-bundle.js")
    assert js.status_code == 200 and len(js.content) > 100_000


async def test_no_docs_page_loads_from_a_cdn(api: Api) -> None:
    """The server runs offline: FastAPI's /redoc, which loads its script from a CDN, is off."""
    assert_error(await api.client.get("/redoc"), 404)
    assert "/redoc" not in {getattr(r, "path", None) for r in api.app.routes}


async def test_an_adapter_above_the_rank_setting_is_refused_at_import(
    api: Api, lm_dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    """Refused by POST /api/adapters, never a 400 on every request after an import that passed."""
    base, _ = lm_dirs
    h = api.admin
    await api.client.post(
        "/api/contributors", headers=h, json={"id": "lab", "name": "Lab", "kind": "organisation"}
    )
    body = {
        "name": "tiny-llama",
        "path": str(base),
        "task": "causal-lm",
        "author": "lab",
        "license": "apache-2.0",
    }
    assert (await api.client.post("/api/models", headers=h, json=body)).status_code == 201
    adapter = save_random_adapter(base, tmp_path / "tiny-llama-r32", rank=32, seed=1)
    api.platform.settings.engine.max_lora_rank = 16
    body = {"name": "r32", "path": str(adapter), "base": "tiny-llama", "author": "lab", "license": "mit"}
    err = assert_error(await api.client.post("/api/adapters", headers=h, json=body), 400)
    assert "rank 32" in err["message"] and "largest rank served (16" in err["message"]
    api.platform.settings.engine.max_lora_rank = 64
    assert (await api.client.post("/api/adapters", headers=h, json=body)).status_code == 201
