"""Every route of the app against every kind of key: the route checks the scope it needs, never
only the tenant. The statement key belongs to the same tenant as the inference key, so a route
that checked only the tenant would let it through.

TABLE has one entry per route, keyed as the app lists it; a route added without an entry fails
`test_every_route_checks_its_scope`, and so does an entry whose route is gone."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import fastapi.routing
import pytest
from fastapi import FastAPI
from tests.integration.conftest import Api

from constellation.registry import contributors, models, ownership, tenants
from constellation.registry.tables import Artifact

pytestmark = pytest.mark.anyio

KINDS = ("none", "revoked", "statement", "inference", "admin")  # admin last: it may change state
PUBLIC = frozenset(KINDS)
ANY_KEY = frozenset({"statement", "inference", "admin"})
INFERENCE = frozenset({"inference", "admin"})
STATEMENT = frozenset({"statement", "admin"})
ADMIN = frozenset({"admin"})


@dataclass(frozen=True)
class Case:
    """How to call one route, who may, and the status an allowed caller gets (or by kind)."""

    url: str
    allowed: frozenset[str]
    ok: int | dict[str, int] = 200
    body: dict[str, Any] | None = field(default=None, hash=False)

    def expected(self, kind: str) -> int:
        if kind in self.allowed:
            return self.ok if isinstance(self.ok, int) else self.ok[kind]
        return 401 if kind in ("none", "revoked") else 403


JSONL = "".join(json.dumps({"text": f"text {i}", "label": "ab"[i % 2]}) + "\n" for i in range(20))
FINETUNE = {
    "base": "nope",
    "task": "classification",
    "name": "scoped",
    "license": "mit",
    "author": "acme-data",
    "data_provider": "acme-data",
    "data": [{"filename": "train.jsonl", "content": JSONL}],
}
NO_MODEL = {"model": "nope"}
LICENCE = {"id": "scope-test", "name": "Scope test", "commercial_use": True}

TABLE: dict[tuple[str, str], Case] = {
    ("GET", "/openapi.json"): Case("/openapi.json", PUBLIC),
    ("MOUNT", "/docs-assets"): Case("/docs-assets/swagger-ui.css", PUBLIC),
    ("GET", "/healthz"): Case("/healthz", PUBLIC),
    ("GET", "/readyz"): Case("/readyz", PUBLIC),
    ("GET", "/metrics"): Case("/metrics", PUBLIC),
    ("GET", "/docs"): Case("/docs", PUBLIC),
    ("GET", "/"): Case("/", PUBLIC),
    ("GET", "/static/{path:path}"): Case("/static/app.js", PUBLIC),
    ("GET", "/api/me"): Case("/api/me", ANY_KEY),
    # OpenAI-compatible: inference. An unknown model is a 404 once the scope has passed.
    ("GET", "/v1/models"): Case("/v1/models", INFERENCE),
    ("GET", "/v1/models/{name}"): Case("/v1/models/pub", INFERENCE),
    ("POST", "/v1/embeddings"): Case("/v1/embeddings", INFERENCE, 404, {**NO_MODEL, "input": "x"}),
    ("POST", "/v1/classify"): Case("/v1/classify", INFERENCE, 404, {**NO_MODEL, "input": "x"}),
    ("POST", "/v1/completions"): Case("/v1/completions", INFERENCE, 404, {**NO_MODEL, "prompt": "x"}),
    ("POST", "/v1/chat/completions"): Case(
        "/v1/chat/completions", INFERENCE, 404, {**NO_MODEL, "messages": [{"role": "user", "content": "x"}]}
    ),
    # The tenant's own records: its inference keys or admin.
    ("GET", "/api/usage"): Case("/api/usage", INFERENCE),
    ("GET", "/api/invoices"): Case("/api/invoices", INFERENCE),
    ("GET", "/api/usage/daily"): Case("/api/usage/daily", INFERENCE),
    ("GET", "/api/lineage"): Case("/api/lineage", INFERENCE),
    ("GET", "/api/tenants/{id}/acceptances"): Case("/api/tenants/acme/acceptances", INFERENCE),
    ("POST", "/api/tenants/{id}/acceptances"): Case(
        "/api/tenants/acme/acceptances", INFERENCE, 201, {"license": "openrail-m"}
    ),
    ("DELETE", "/api/tenants/{id}/acceptances/{license}"): Case(
        "/api/tenants/acme/acceptances/openrail-m", INFERENCE, {"inference": 200, "admin": 404}
    ),
    ("GET", "/api/tenants/{id}/contributors"): Case("/api/tenants/acme/contributors", INFERENCE),
    ("GET", "/api/licences"): Case("/api/licences", INFERENCE),
    ("GET", "/api/licences/{id}"): Case("/api/licences/mit", INFERENCE),
    ("POST", "/api/finetunes"): Case("/api/finetunes", INFERENCE, 404, FINETUNE),
    ("GET", "/api/finetunes"): Case("/api/finetunes", INFERENCE),
    ("GET", "/api/finetunes/{job_id}"): Case("/api/finetunes/ft_nope", INFERENCE, 404),
    ("POST", "/api/finetunes/{job_id}/cancel"): Case("/api/finetunes/ft_nope/cancel", INFERENCE, 404),
    # A contributor's statement: that contributor's key or admin.
    ("GET", "/api/statements"): Case("/api/statements?contributor=acme-data", STATEMENT),
    ("GET", "/api/statements/daily"): Case("/api/statements/daily?contributor=acme-data", STATEMENT),
    # Everything else is the operator's.
    ("GET", "/api/models"): Case("/api/models", ADMIN),
    ("GET", "/api/models/{name}"): Case("/api/models/pub", ADMIN),
    ("POST", "/api/models"): Case(
        "/api/models", ADMIN, 400, {"name": "new", "path": "/nowhere", "task": "embedding", "author": "lab"}
    ),
    ("POST", "/api/adapters"): Case(
        "/api/adapters", ADMIN, 404, {"name": "new", "path": "/nowhere", "base": "pub", "author": "lab"}
    ),
    ("DELETE", "/api/models/{name}"): Case("/api/models/doomed", ADMIN, 204),
    ("GET", "/api/datasets"): Case("/api/datasets", ADMIN),
    ("POST", "/api/datasets"): Case(
        "/api/datasets",
        ADMIN,
        400,
        {"name": "d", "path": "/nowhere.jsonl", "license": "mit", "provider": "lab"},
    ),
    ("GET", "/api/contributors"): Case("/api/contributors", ADMIN),
    ("POST", "/api/contributors"): Case(
        "/api/contributors", ADMIN, 201, {"id": "newbie", "name": "N", "kind": "person"}
    ),
    ("GET", "/api/terms"): Case("/api/terms", ADMIN),
    ("PUT", "/api/terms"): Case(
        "/api/terms",
        ADMIN,
        200,
        {
            "subject_type": "model",
            "subject": "pub",
            "contributor": "lab",
            "kind": "per_request",
            "amount_nanos": 1,
        },
    ),
    ("GET", "/api/balances"): Case("/api/balances", ADMIN),
    ("POST", "/api/tenants/{id}/funds"): Case("/api/tenants/acme/funds", ADMIN, 201, {"amount_nanos": 1000}),
    ("PUT", "/api/tenants/{id}/limit"): Case("/api/tenants/acme/limit", ADMIN, 200, {"prepaid": False}),
    ("POST", "/api/licences"): Case("/api/licences", ADMIN, 201, LICENCE),
    ("GET", "/api/tenants"): Case("/api/tenants", ADMIN),
    ("GET", "/api/tenants/{id}"): Case("/api/tenants/acme", ADMIN),
    ("POST", "/api/tenants"): Case("/api/tenants", ADMIN, 201, {"id": "newco", "name": "N"}),
    ("PATCH", "/api/tenants/{id}"): Case("/api/tenants/acme", ADMIN, 200, {"monthly_active_users": 5}),
    ("GET", "/api/keys"): Case("/api/keys", ADMIN),
    ("POST", "/api/keys"): Case("/api/keys", ADMIN, 201, {"tenant": "acme"}),
    ("DELETE", "/api/keys/{key_id}"): Case("/api/keys/{spare}", ADMIN),
    ("PUT", "/api/tenants/{id}/contributors/{contributor}"): Case(
        "/api/tenants/acme/contributors/lab", ADMIN
    ),
    ("DELETE", "/api/tenants/{id}/contributors/{contributor}"): Case(
        "/api/tenants/acme/contributors/lab", ADMIN, 204
    ),
    # Upstream providers: the operator's. The routes that name one get a 404 for an unknown one.
    ("GET", "/api/providers"): Case("/api/providers", ADMIN),
    ("GET", "/api/providers/{name}"): Case("/api/providers/nope", ADMIN, 404),
    ("POST", "/api/providers"): Case(
        "/api/providers", ADMIN, 201, {"name": "up", "base_url": "http://127.0.0.1:9/v1"}
    ),
    ("POST", "/api/providers/{name}/models"): Case(
        "/api/providers/nope/models", ADMIN, 404, {"model": "m", "name": "up-m", "task": "causal-lm"}
    ),
    ("DELETE", "/api/providers/{name}"): Case("/api/providers/nope", ADMIN, 404),
    # Workflows: registered and read by the operator, run by inference keys (unknown: 404).
    ("POST", "/api/workflows"): Case(
        "/api/workflows", ADMIN, 400, {"name": "wf", "document": "steps: []", "author": "lab"}
    ),
    ("GET", "/api/workflows"): Case("/api/workflows", ADMIN),
    ("GET", "/api/workflows/{name}"): Case("/api/workflows/nope", ADMIN, 404),
    ("GET", "/api/workflows/{name}/runs"): Case("/api/workflows/nope/runs", ADMIN, 404),
    ("POST", "/v1/workflows/{name}/runs"): Case("/v1/workflows/nope/runs", INFERENCE, 404, {"inputs": {}}),
}


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    return sqlite_url


def app_routes(app: FastAPI) -> Iterator[tuple[str, str]]:
    """(method, path) of every route the app serves; HEAD beside GET is the same handler."""
    flatten = getattr(fastapi.routing, "iter_route_contexts", iter)  # FastAPI >= 0.16x nests routers
    for route in flatten(app.routes):
        methods = route.methods or {"MOUNT"}
        for method in sorted(methods - {"HEAD"} if "GET" in methods else methods):
            yield method, route.path


def _seed(api: Api) -> dict[str, dict[str, str]]:
    """Models `pub` and `doomed`, contributors `lab` and `acme-data` (owned by tenant acme), and
    one key of each kind; the statement key is acme's too."""
    digest = "0" * 64
    with api.platform.db.session() as s:
        s.add(Artifact(digest=digest, kind="model", size_bytes=0, files={}))
        for cid in ("lab", "acme-data"):
            contributors.add_contributor(s, id=cid, name=cid, kind="organisation")
        for name in ("pub", "doomed"):
            models.add_model(
                s,
                name=name,
                kind="base",
                task="embedding",
                artifact_digest=digest,
                licence_id="mit",
                author_id="lab",
            )
    inference = api.key("acme")  # makes the tenant, which a contributor key's link needs
    with api.platform.db.session() as s:
        ownership.link(s, tenant_id="acme", contributor_id="acme-data")
    keys = {
        "none": {},
        "inference": inference,
        "statement": api.key("acme", "contributor:acme-data"),
        "revoked": api.key("acme", "admin", "inference"),
        "admin": api.admin,
    }
    with api.platform.db.session() as s:
        tenants.revoke_key(s, key_id=keys["revoked"]["Authorization"].split("_")[1])
    return keys


async def test_every_route_checks_its_scope(api: Api) -> None:
    keys = _seed(api)
    spare = api.key("acme")["Authorization"].split("_")[1]
    routes = list(app_routes(api.app))
    missing = [r for r in routes if r not in TABLE]
    assert not missing, f"routes without an entry in TABLE (say who may call them): {missing}"
    stale = [r for r in TABLE if r not in routes]
    assert not stale, f"TABLE entries for routes the app no longer has: {stale}"
    wrong = []
    for method, path in routes:
        case = TABLE[(method, path)]
        for kind in KINDS:
            r = await api.client.request(
                "GET" if method == "MOUNT" else method,
                case.url.format(spare=spare),
                headers=keys[kind],
                json=case.body,
            )
            if r.status_code != case.expected(kind):
                wrong.append(
                    f"{method} {path} as {kind}: {r.status_code}, want {case.expected(kind)}: {r.text[:200]}"
                )
    assert not wrong, "\n".join(wrong)
