"""Every route of the OpenAPI document fuzzed with schemathesis, in-process, with a key of each
kind (admin, tenant inference, contributor statement, revoked, none) and, in two of three
inference bodies, a model that exists: never a 5xx, every error in OpenAI's shape, and every
status and JSON body as the document describes it (schemathesis' conformance checks).
A bounded, derandomised number of examples per route keeps it quick and repeatable;
CONSTELLATION_FUZZ_EXAMPLES=200 digs deeper by hand."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import response_schema_conformance, status_code_conformance

from constellation.api.app import create_app
from constellation.config import Settings
from constellation.platform import Platform
from constellation.registry import ownership, service, tenants
from constellation.registry.contributors import add_contributor
from constellation.testing.toy_lm import save_random_lm

# Per route, each sent with five keys: about 40 s for ~50 routes on 2 cores.
EXAMPLES = int(os.environ.get("CONSTELLATION_FUZZ_EXAMPLES", "10"))


def _seed(settings_: Settings, minilm: Path, tiny_lm: Path) -> dict[str, str]:
    """Two servable models and one key of each kind, made before the app starts (schemathesis
    runs its lifespan on the first call)."""
    platform = Platform(settings_).open()
    try:
        with platform.db.session() as s:
            tenants.add_tenant(s, id="ops", name="ops")
            tenants.add_tenant(s, id="acme", name="acme")
            add_contributor(s, id="sbert", name="sbert", kind="organisation")
            ownership.link(s, tenant_id="acme", contributor_id="sbert")
            for src, name, task in ((minilm, "minilm", "embedding"), (tiny_lm, "tiny", "causal-lm")):
                service.register_base(
                    s, platform.store, src=src, name=name, task=task, author="sbert", licence="apache-2.0"
                )
            out = {
                "admin": tenants.create_key(s, tenant_id="ops", scopes=["admin"]).secret,
                "inference": tenants.create_key(s, tenant_id="acme", scopes=["inference"]).secret,
                "statement": tenants.create_key(s, tenant_id="acme", scopes=["contributor:sbert"]).secret,
            }
            revoked = tenants.create_key(s, tenant_id="acme", scopes=["inference"])
            tenants.revoke_key(s, key_id=revoked.row.id)
            out["revoked"] = revoked.secret
    finally:
        platform.close()
    return out


@dataclass
class Fuzzed:
    keys: dict[str, str]
    app: Any
    doc: dict[str, Any]
    schema: Any


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory, minilm_path: Path) -> Iterator[Fuzzed]:
    root: Path = tmp_path_factory.mktemp("fuzz")
    s = Settings(data_dir=root / "data", db_url=f"sqlite:///{root / 'fuzz.db'}", access_log=False)
    tiny_lm = save_random_lm(root / "tiny-llama", "llama", seed=3)
    keys, app = _seed(s, minilm_path, tiny_lm), create_app(s)
    doc = app.openapi()
    yield Fuzzed(keys, app, doc, schemathesis.openapi.from_dict(doc))


def _labels() -> list[str]:
    """Every operation in the OpenAPI document, e.g. `POST /v1/embeddings` (no lifespan needed)."""
    doc = create_app(Settings(data_dir=Path("unused"))).openapi()
    return [f"{m.upper()} {path}" for path, ops in doc["paths"].items() for m in ops]


def _fields(doc: dict[str, Any], operation: Any) -> set[str]:
    """The properties an operation's JSON body declares."""
    body = doc["paths"][operation.path][operation.method.lower()]["requestBody"]
    ref = body["content"]["application/json"]["schema"]["$ref"]
    return set(doc["components"]["schemas"][ref.rsplit("/", 1)[1]]["properties"])


def _openai_error(body: Any) -> bool:
    err = body.get("error") if isinstance(body, dict) else None
    return isinstance(err, dict) and {"message", "type", "param", "code"} <= err.keys()


@pytest.mark.parametrize("label", _labels())
def test_no_route_answers_5xx_and_every_error_is_openai_shaped(label: str, fuzzed: Fuzzed) -> None:
    keys, app = fuzzed.keys, fuzzed.app
    operation = fuzzed.schema.find_operation_by_label(label)
    assert operation is not None
    modes = st.sampled_from([GenerationMode.POSITIVE, GenerationMode.NEGATIVE])

    @given(case=modes.flatmap(operation.as_strategy), model=st.sampled_from([None, "minilm", "tiny"]))
    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def check(case: Any, model: str | None) -> None:
        if model is not None and isinstance(case.body, dict) and "model" in case.body:
            # Past the 400 for fields the protocol does not know and the 404, into the engines.
            known = _fields(fuzzed.doc, operation)
            case.body = {k: v for k, v in case.body.items() if k in known} | {"model": model}
        for kind in ("admin", "inference", "statement", "revoked", None):
            headers = {"Authorization": f"Bearer {keys[kind]}"} if kind else {}
            response = case.call(app=app, headers=headers)
            request = f"{case.method} {case.formatted_path} as {kind or 'no key'}: {case.query=} {case.body=}"
            assert response.status_code < 500, f"{request} -> {response.status_code} {response.text[:500]}"
            if response.status_code >= 400:
                assert _openai_error(response.json()), (
                    f"{request} -> not OpenAI's error shape: {response.text}"
                )
            # The answer is documented: its status, and its body against the route's schema.
            case.validate_response(response, checks=[status_code_conformance, response_schema_conformance])

    check()
