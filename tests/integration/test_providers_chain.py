"""A second Constellation server as the upstream (its /v1 is OpenAI-compatible): our server
exposes its tiny Llama as a provider model, and the official `openai` client streams it
through us. Both servers run under uvicorn in threads, on free ports."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from openai import OpenAI
from tests.integration.upstream_fake import serve

from constellation.api.app import create_app
from constellation.api.state import state_of
from constellation.config import Settings
from constellation.economy import reports
from constellation.platform import Platform
from constellation.registry import contributors, service, tenants

KEY_VAR = "CHAIN_UPSTREAM_KEY"
ASK = {"messages": [{"role": "user", "content": "Tell me about the sea."}], "max_tokens": 8, "seed": 7}


@dataclass
class Chain:
    upstream_url: str
    upstream_key: str
    url: str
    key: str
    ours: Platform


def _key(p: Platform, tenant: str, *scopes: str) -> str:
    with p.db.session() as s:
        if s.get(tenants.Tenant, tenant) is None:
            tenants.add_tenant(s, id=tenant, name=tenant)
        return tenants.create_key(s, tenant_id=tenant, scopes=list(scopes) or ["inference"]).secret


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory, lm_dirs: tuple[Path, Path]) -> Iterator[Chain]:
    tmp_path = tmp_path_factory.mktemp("chain")
    up_app = create_app(Settings(data_dir=tmp_path / "up", db_url=f"sqlite:///{tmp_path / 'up.db'}"))
    our_app = create_app(Settings(data_dir=tmp_path / "ours", db_url=f"sqlite:///{tmp_path / 'ours.db'}"))
    with serve(up_app) as up_url, serve(our_app) as url:
        up: Platform = state_of(up_app).platform
        with up.db.session() as s:
            contributors.add_contributor(s, id="lab", name="Lab", kind="organisation")
            service.register_base(
                s,
                up.store,
                src=lm_dirs[0],
                name="tiny-llama",
                task="causal-lm",
                author="lab",
                licence="apache-2.0",
            )
        up_key = _key(up, "downstream")
        os.environ[KEY_VAR] = up_key  # read by our server at call time
        ours: Platform = state_of(our_app).platform
        admin = {"Authorization": f"Bearer {_key(ours, 'ops', 'admin')}"}
        with httpx.Client(base_url=url, headers=admin) as http:
            body = {"name": "upstream-constellation", "base_url": up_url + "/v1", "api_key_env": KEY_VAR}
            assert http.post("/api/providers", json=body).status_code == 201
            expose = {
                "model": "tiny-llama",
                "name": "remote-llama",
                "task": "causal-lm",
                "license": "apache-2.0",
            }
            expose |= {"price_per_1k_input": 3_000, "price_per_1k_output": 9_000}
            assert http.post("/api/providers/upstream-constellation/models", json=expose).status_code == 201
        try:
            yield Chain(up_url, up_key, url, _key(ours, "acme"), ours)
        finally:
            del os.environ[KEY_VAR]


def test_a_constellation_upstream_is_proxied_with_its_own_usage(chain: Chain) -> None:
    direct = httpx.post(
        f"{chain.upstream_url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {chain.upstream_key}"},
        json={"model": "tiny-llama", **ASK},
        timeout=60,
    ).json()
    ours = httpx.post(
        f"{chain.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {chain.key}"},
        json={"model": "remote-llama", **ASK},
        timeout=60,
    ).json()
    assert ours["choices"][0]["message"]["content"] == direct["choices"][0]["message"]["content"]
    assert ours["usage"] == direct["usage"]  # the upstream's own count, not an estimate
    assert ours["model"] == "remote-llama"
    owed = next(x for x in ours["constellation"]["split"] if x["role"] == "provider")["amount_nanos"]
    u = ours["usage"]
    exact = (3_000 * u["prompt_tokens"] + 9_000 * u["completion_tokens"]) // 1000
    assert owed in (exact, exact + 1)  # largest remainder may round a share up by one
    assert ours["constellation"]["request_id"] != direct["constellation"]["request_id"]


def test_the_openai_client_streams_a_provider_model_through_us(chain: Chain) -> None:
    client = OpenAI(base_url=f"{chain.url}/v1", api_key=chain.key, max_retries=0)
    plain = client.chat.completions.create(model="remote-llama", **ASK)  # type: ignore[call-overload]
    stream = client.chat.completions.create(
        model="remote-llama", stream=True, stream_options={"include_usage": True}, **ASK
    )  # type: ignore[call-overload]
    text, usage = "", None
    for chunk in stream:
        for choice in chunk.choices:
            text += choice.delta.content or ""
        usage = chunk.usage or usage
    assert text == plain.choices[0].message.content
    assert usage is not None and usage.completion_tokens == plain.usage.completion_tokens
    with chain.ours.db.session() as s:
        statement = reports.statement(s, contributor_id="upstream-constellation")
    rids = json.dumps(statement)
    assert statement["total_nanos"] > 0 and plain.id and statement["requests"] >= 2
    assert "lines_by_model" in statement and "remote-llama" in rids
