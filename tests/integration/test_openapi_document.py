"""The OpenAPI document describes what comes back: every /v1 and /api route documents its success
answer with a schema and its errors in OpenAI's shape, and real answers of the routes conform to
their documented models -- exactly, nothing undocumented in them, and, where a `response_model`
filters the handler's dict, nothing dropped or added by it."""

from __future__ import annotations

import importlib
import json
import pkgutil
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import routing
from fastapi.encoders import jsonable_encoder
from pydantic import BaseModel, TypeAdapter
from tests.integration.conftest import Api
from tests.integration.test_finetune_api import _link, _start, _wait, jsonl

from constellation.api import routes as routes_pkg
from constellation.api import schemas as schemas_pkg
from constellation.api.protocol import responses

pytestmark = pytest.mark.anyio
SUCCESS = ("200", "201", "202")


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    return sqlite_url


@pytest.fixture
def filtered(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every handler's return value that its `response_model` changed on the way out."""
    changed: list[str] = []
    serialize = routing.serialize_response

    async def recording(**kw: Any) -> Any:
        out = await serialize(**kw)
        if kw.get("field") is not None:
            sent = json.loads(out) if isinstance(out, bytes | str) else out
            raw = jsonable_encoder(kw["response_content"])
            if kw.get("exclude_none"):  # drops the model's None fields, not a dict's None values
                raw, sent = _without_none(raw), _without_none(sent)
            if sent != raw:
                changed.append(f"{kw['field'].name}: handler gave {raw!r}, sent {sent!r}")
        return out

    monkeypatch.setattr(routing, "serialize_response", recording)
    yield changed


def _without_none(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _without_none(x) for k, x in v.items() if x is not None}
    if isinstance(v, list):
        return [_without_none(x) for x in v]
    return v


def _operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in doc["paths"].items():
        for method, op in item.items():
            yield path, method, op


async def test_every_route_documents_its_answer_and_errors(api: Api) -> None:
    r = await api.client.get("/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    schemas = doc["components"]["schemas"]
    text = json.dumps(doc)
    for ref in {part.split('"')[0] for part in text.split('"$ref": "#/components/schemas/')[1:]}:
        assert ref in schemas, f"dangling $ref {ref}"
    routes = [(p, m, op) for p, m, op in _operations(doc) if p.startswith(("/v1", "/api"))]
    assert len(routes) > 40
    for path, method, op in routes:
        where = f"{method.upper()} {path}"
        responses = op["responses"]
        assert "422" not in responses, f"{where}: validation errors are 400 here"
        ok = [responses[s] for s in SUCCESS if s in responses]
        if not ok:
            assert "204" in responses, f"{where} documents no success"
            continue
        content = ok[0]["content"]
        assert content, f"{where}: no content documented"
        for media, body in content.items():
            assert body.get("schema") not in (None, {}), f"{where}: empty schema for {media}"
        assert "application/json" in content, where
        takes_input = "requestBody" in op or any(p["in"] == "query" for p in op.get("parameters", []))
        for status in ("400", "401") if takes_input else ("401",):
            err = responses.get(status, {}).get("content", {}).get("application/json", {})
            assert err.get("schema") == {"$ref": "#/components/schemas/ErrorOut"}, f"{where} {status}"
    for path in ("/v1/chat/completions", "/v1/completions"):
        assert "text/event-stream" in doc["paths"][path]["post"]["responses"]["200"]["content"]
    for name in ("ChatCompletionChunk", "TextCompletion", "ConstellationExt", "SplitEntry", "ErrorOut"):
        assert name in schemas


def _models() -> dict[str, type[BaseModel]]:
    """The pydantic models the routes' and the schemas' modules define, by name: what a `$ref` names."""
    found: dict[str, type[BaseModel]] = {}
    names = [
        f"{pkg.__name__}.{m.name}"
        for pkg in (routes_pkg, schemas_pkg)
        for m in pkgutil.iter_modules(pkg.__path__)
    ]
    protocol = ["constellation.api.protocol.requests", "constellation.api.protocol.responses"]
    for module in map(importlib.import_module, [*protocol, *names]):
        for v in vars(module).values():
            if isinstance(v, type) and issubclass(v, BaseModel):
                found[v.__name__] = v
    return found


class Checker:
    """Sends requests and checks each answer against the schema its route documents in
    /openapi.json (through the pydantic model that the schema's `$ref` names)."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.doc: dict[str, Any] = api.app.openapi()
        self.models = _models()

    def _template(self, path: str) -> str:
        for t in self.doc["paths"]:
            if re.fullmatch(re.sub(r"\\{[^/]+?\\}", "[^/]+", re.escape(t)), path):
                return t
        raise AssertionError(f"{path} is not in the document")

    def documented(self, method: str, url: str, status: int) -> Any:
        op = self.doc["paths"][self._template(httpx.URL(url).path)][method.lower()]
        assert str(status) in op["responses"], f"{method} {url}: {status} is not documented"
        schema = op["responses"][str(status)]["content"]["application/json"]["schema"]
        many = schema.get("type") == "array"
        model = self.models[(schema["items"] if many else schema)["$ref"].rsplit("/", 1)[1]]
        return list[model] if many else model  # type: ignore[valid-type]

    async def __call__(self, method: str, url: str, status: int = 200, **kw: Any) -> Any:
        r = await self.api.client.request(method, url, **kw)
        assert r.status_code == status, r.text
        body = r.json()
        conforms(self.documented(method, url, status), body)
        return body


def conforms(model: Any, data: Any) -> None:
    """`data` validates against `model`, and nothing in it is outside the model (a field the model
    does not declare would be dropped by the dump; extra="allow" models keep theirs)."""
    ta: TypeAdapter[Any] = TypeAdapter(model)
    value = ta.validate_python(data)
    assert ta.dump_python(value, mode="json", exclude_unset=True) == data, f"{model} vs {data}"


def events(text: str) -> list[dict[str, Any]]:
    return [json.loads(ln[6:]) for ln in text.splitlines() if ln.startswith("data: {")]


async def test_real_answers_match_their_documented_schemas(
    served: Api,
    tiny_bert: Path,
    lm_dirs: tuple[Path, Path],
    tmp_path: Path,
    filtered: list[str],
) -> None:
    api, h = served, served.admin
    check = Checker(api)
    key = api.key("acme")

    # /v1: the inference answers, documented but not validated on the way out
    emb = {"model": "minilm", "input": ["hello world", "good night"]}
    body = await check("POST", "/v1/embeddings", json=emb, headers=key)
    assert body["constellation"]["split"] and body["constellation"]["price_usd"]
    await check("POST", "/v1/embeddings", json={**emb, "encoding_format": "base64"}, headers=key)
    chat = {"model": "pirate", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    await check("POST", "/v1/chat/completions", json=chat, headers=key)
    await check(
        "POST", "/v1/completions", json={"model": "tiny-llama", "prompt": "a", "max_tokens": 4}, headers=key
    )
    completion = {"model": "tiny-llama", "prompt": "a", "max_tokens": 4}
    for path, req, chunk in (
        ("/v1/chat/completions", chat, responses.ChatCompletionChunk),
        ("/v1/completions", completion, responses.TextCompletion),
    ):
        for opts in ({}, {"stream_options": {"include_usage": True}}):
            r = await api.client.post(path, json={**req, "stream": True, **opts}, headers=key)
            assert r.headers["content-type"].startswith("text/event-stream")
            got = events(r.text)
            assert got and got[-1]["constellation"]["request_id"]
            for e in got:
                conforms(chunk, e)
    await check("GET", "/v1/models", headers=key)
    await check("GET", "/v1/models/pirate", headers=key)

    # errors, in OpenAI's shape, as documented
    await check("POST", "/v1/embeddings", 401, json=emb)
    await check("POST", "/v1/embeddings", 400, json={**emb, "input": []}, headers=key)
    await check("POST", "/v1/embeddings", 400, json={"model": 3}, headers=key)
    await check("GET", "/v1/models/nope", 404, headers=key)
    await check("GET", "/api/tenants", 403, headers=key)
    await check("GET", "/api/models/nope", 404, headers=h)

    # /api: catalog, tenants, keys, licences, money
    await check("GET", "/healthz")
    await check("GET", "/readyz")
    await check("GET", "/api/models", headers=h)
    adapter = {
        "name": "pirate-2",
        "path": str(lm_dirs[1]),
        "base": "tiny-llama",
        "author": "lab",
        "license": "mit",
    }
    await check("POST", "/api/adapters", 201, headers=h, json=adapter)
    (tmp_path / "qa.jsonl").write_text('{"text": "q", "label": "a"}\n')
    ds = {"name": "qa", "path": str(tmp_path / "qa.jsonl"), "license": "cc-by-4.0", "provider": "lab"}
    await check("POST", "/api/datasets", 201, headers=h, json=ds)
    await check("GET", "/api/models/pirate", headers=h)
    await check("GET", "/api/contributors", headers=h)
    await check(
        "POST", "/api/contributors", 201, headers=h, json={"id": "ann", "name": "Ann", "kind": "person"}
    )
    term = {
        "subject_type": "model",
        "subject": "pirate",
        "contributor": "ann",
        "kind": "per_request",
        "amount_nanos": 7,
    }
    await check("PUT", "/api/terms", headers=h, json=term)
    await check("GET", "/api/terms", headers=h)
    await check("GET", "/api/licences", headers=key)
    await check("GET", "/api/licences/mit", headers=key)
    lic = {"id": "acme-eula-1.0", "name": "Acme EULA", "commercial_use": True, "restrictions": ["no spam"]}
    await check("POST", "/api/licences", 201, headers=h, json=lic)
    await check("POST", "/api/tenants", 201, headers=h, json={"id": "shop", "name": "Shop"})
    await check("GET", "/api/tenants", headers=h)
    await check("GET", "/api/tenants/shop", headers=h)
    await check("PATCH", "/api/tenants/shop", headers=h, json={"requests_per_minute": 100})
    await check("POST", "/api/tenants/acme/acceptances", 201, headers=key, json={"license": "acme-eula-1.0"})
    await check("GET", "/api/tenants/acme/acceptances", headers=key)
    await check("DELETE", "/api/tenants/acme/acceptances/acme-eula-1.0", headers=key)
    new = await check("POST", "/api/keys", 201, headers=h, json={"tenant": "shop"})
    await check("GET", "/api/keys?tenant=shop", headers=h)
    await check("DELETE", f"/api/keys/{new['id']}", headers=h)
    await check("PUT", "/api/tenants/shop/contributors/ann", headers=h)
    await check("GET", "/api/tenants/shop/contributors", headers=h)
    await check("POST", "/api/tenants/shop/funds", 201, headers=h, json={"amount_nanos": 1000})
    await check("PUT", "/api/tenants/shop/limit", headers=h, json={"prepaid": True})
    await check("GET", "/api/balances", headers=h)
    await check("GET", "/api/usage", headers=key)
    await check("GET", "/api/invoices", headers=key)
    await check("GET", "/api/statements?contributor=lab", headers=h)
    await check("GET", "/api/usage/daily", headers=key)
    await check("GET", "/api/statements/daily?contributor=lab", headers=h)
    await check("GET", "/api/lineage", headers=key)
    await check("GET", "/api/me", headers=key)

    # fine-tuning, then classification with what it trained, and its data set
    assert (await api.register(tiny_bert, name="tiny", author="lab")).status_code == 201
    await _link(api, "acme", "acme-ml")
    r = await _start(api, key, "intent", jsonl(10), epochs=1)
    assert r.status_code == 202, r.text
    conforms(check.documented("POST", "/api/finetunes", 202), r.json())
    job = await _wait(api, key, r.json()["id"])
    assert job["status"] == "succeeded", job
    await check("GET", f"/api/finetunes/{job['id']}", headers=key)
    await check("GET", "/api/finetunes", headers=key)
    await check("POST", f"/api/finetunes/{job['id']}/cancel", headers=key)  # a no-op once ended
    await check(
        "POST", "/v1/classify", json={"model": "intent", "input": ["refund it", "crash"]}, headers=key
    )
    await check("GET", "/api/datasets", headers=h)
    await check("GET", "/api/invoices", headers=key)  # now with a fine-tune line

    assert filtered == [], "\n".join(filtered)


def test_error_body_is_the_documented_shape() -> None:
    from constellation.api.errors import error_body

    conforms(responses.ErrorOut, error_body("m", "invalid_request_error", param="x", code="c"))
    assert issubclass(responses.ErrorOut, BaseModel)
