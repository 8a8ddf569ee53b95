"""Provider models through the real server: our app and a fault-injecting upstream, each under
uvicorn on a free port, driven over real HTTP. Covers registration, /v1/models, proxying (plain
and streamed, chunk by chunk), usage (upstream's or estimated), pricing with the provider's leg,
retries, Retry-After, the circuit breaker, timeouts, malformed answers, a stream cut midway, a
client that drops its stream, the concurrency cap, residency and licences, and outsiders."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select, text
from tests.integration.upstream_fake import WORDS, FaultyUpstream, serve

from constellation.api.app import create_app
from constellation.api.state import state_of
from constellation.config import Settings
from constellation.economy import ledger, reports
from constellation.economy.tables import UsageEvent
from constellation.platform import Platform
from constellation.registry import ownership, tenants

KEY_VAR = "PROVIDER_TEST_KEY"
SECRET = "sk-test-7f3a9c1e5b2d4f6a8c0e1b3d5f7a9c2e"
PRICE_IN, PRICE_OUT = 1_000_000, 2_000_000  # nano-USD per 1k tokens
CHAT = {"messages": [{"role": "user", "content": "Say hello like a pirate."}]}


@dataclass
class Proxy:
    url: str
    app: FastAPI
    admin: dict[str, str]
    http: httpx.Client
    upstream: FaultyUpstream
    upstream_url: str

    @property
    def platform(self) -> Platform:
        platform: Platform = state_of(self.app).platform
        return platform

    def key(self, tenant: str, *scopes: str) -> dict[str, str]:
        with self.platform.db.session() as s:
            if s.get(tenants.Tenant, tenant) is None:
                tenants.add_tenant(s, id=tenant, name=tenant)
            new = tenants.create_key(s, tenant_id=tenant, scopes=list(scopes) or ["inference"])
        return {"Authorization": f"Bearer {new.secret}"}

    def add_provider(self, name: str = "faulty", **extra: Any) -> httpx.Response:
        body = {"name": name, "base_url": self.upstream_url + "/v1", "api_key_env": KEY_VAR, **extra}
        return self.http.post("/api/providers", headers=self.admin, json=body)

    def expose(
        self, upstream_model: str, name: str, provider: str = "faulty", **extra: Any
    ) -> httpx.Response:
        body = {"model": upstream_model, "name": name, "task": "causal-lm", "license": "mit", **extra}
        return self.http.post(f"/api/providers/{provider}/models", headers=self.admin, json=body)

    def events(self, tenant: str, want: int = 1) -> list[UsageEvent]:
        rows: list[UsageEvent] = []
        for _ in range(200):
            with self.platform.db.session() as s:
                rows = list(s.scalars(select(UsageEvent).where(UsageEvent.tenant_id == tenant)))
            if len(rows) >= want:
                return rows
            time.sleep(0.02)
        return rows


@pytest.fixture
def upstream() -> Iterator[tuple[FaultyUpstream, str]]:
    fake = FaultyUpstream(slow_s=1.0)
    with serve(fake) as url:
        yield fake, url


@pytest.fixture
def proxy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, upstream: tuple[FaultyUpstream, str]
) -> Iterator[Proxy]:
    monkeypatch.setenv(KEY_VAR, SECRET)
    settings = Settings(data_dir=tmp_path / "data", db_url=f"sqlite:///{tmp_path / 'test.db'}")
    app = create_app(settings)
    with serve(app) as url, httpx.Client(base_url=url, timeout=30) as http:
        p = Proxy(url, app, {}, http, *upstream)
        p.admin = p.key("ops", "admin")
        yield p


def _sse(r: httpx.Response) -> list[Any]:
    return [
        json.loads(line[6:]) if line[6:] != "[DONE]" else "[DONE]"
        for line in r.text.splitlines()
        if line.startswith("data: ")
    ]


def _leg(body: dict[str, Any], role: str) -> int:
    return sum(x["amount_nanos"] for x in body["constellation"]["split"] if x["role"] == role)


# -- registration ----------------------------------------------------------------------------


def test_an_exposed_model_is_listed_as_a_provider_model(proxy: Proxy) -> None:
    r = proxy.add_provider()
    assert r.status_code == 201, r.text
    assert r.json()["api_key_env"] == KEY_VAR and r.json()["key_present"] is True
    assert proxy.expose("ok", "closed-chat").status_code == 201
    emb = {"task": "embedding", "model": "ok", "name": "closed-embed"}
    assert proxy.http.post("/api/providers/faulty/models", headers=proxy.admin, json=emb).status_code == 201
    models = proxy.http.get("/v1/models", headers=proxy.key("acme")).json()["data"]
    by_id = {m["id"]: m["constellation"] for m in models}
    assert by_id["closed-chat"]["kind"] == "provider" and by_id["closed-chat"]["provider"] == "faulty"
    assert by_id["closed-embed"]["task"] == "embedding"
    listed = proxy.http.get("/api/providers", headers=proxy.admin).json()
    assert [m["name"] for m in listed[0]["models"]] == ["closed-chat", "closed-embed"]
    assert proxy.http.delete("/api/providers/faulty", headers=proxy.admin).status_code == 409  # still exposes


BAD_PROVIDERS = [
    ({"base_url": "ftp://x"}, "base_url"),
    ({"base_url": "http://user:pw@127.0.0.1/v1"}, "base_url"),
    ({"api_key_env": "CONSTELLATION_DB_URL"}, "api_key_env"),
    ({"api_key_env": "BAD NAME"}, "api_key_env"),
    ({"api_key": SECRET}, "api_key"),  # the key itself is never accepted here
    ({"max_concurrency": 0}, "max_concurrency"),
    ({"timeout_s": 1e9}, "timeout_s"),
]


def test_bad_providers_are_refused_with_the_field_named(proxy: Proxy) -> None:
    for body, param in BAD_PROVIDERS:
        r = proxy.add_provider(**body)
        assert r.status_code == 400, (body, r.text)
        assert r.json()["error"]["param"] == param
    proxy.add_provider()
    bad = {"price_per_1k_input": -1}, {"task": "classification"}, {"license": "nope"}, {"model": ""}
    for body in bad:
        r = proxy.expose("ok", "x", **body)
        assert r.status_code == 400, (body, r.text)
    assert proxy.expose("ok", "dup").status_code == 201
    assert proxy.expose("ok", "dup").status_code == 409
    assert proxy.add_provider().status_code == 409


# -- proxying, usage and price ---------------------------------------------------------------


def test_a_chat_is_proxied_and_priced_with_the_providers_leg(proxy: Proxy) -> None:
    proxy.add_provider()
    proxy.expose("ok", "closed", price_per_1k_input=PRICE_IN, price_per_1k_output=PRICE_OUT)
    r = proxy.http.post(
        "/v1/chat/completions", headers=proxy.key("acme"), json={"model": "closed", **CHAT, "max_tokens": 20}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "closed" and body["choices"][0]["message"]["content"] == "".join(WORDS)
    assert body["usage"] == {"prompt_tokens": 7, "completion_tokens": 10, "total_tokens": 17}
    owed = (7 * PRICE_IN + 10 * PRICE_OUT) // 1000
    assert _leg(body, "provider") == owed
    assert {x["role"] for x in body["constellation"]["split"]} >= {"provider", "platform"}
    assert (
        sum(x["amount_nanos"] for x in body["constellation"]["split"]) == body["constellation"]["price_nanos"]
    )
    sent = proxy.upstream.bodies[-1]
    assert sent["model"] == "ok" and sent["stream"] is False and sent["max_tokens"] == 20
    assert "top_k" not in sent and "n" not in sent  # only what the client sent goes upstream
    with proxy.platform.db.session() as s:
        statement = reports.statement(s, contributor_id="faulty")
        assert ledger.verify(s) == []
    assert statement["total_nanos"] == owed
    [line] = statement["lines_by_artifact"]
    assert line["role"] == "provider" and body["constellation"]["request_id"] in json.dumps(statement)


def test_completions_and_embeddings_are_proxied(proxy: Proxy) -> None:
    proxy.add_provider()
    proxy.expose("ok", "closed")
    proxy.http.post(
        "/api/providers/faulty/models",
        headers=proxy.admin,
        json={"model": "ok", "name": "emb", "task": "embedding", "license": "mit"},
    )
    h = proxy.key("acme")
    r = proxy.http.post("/v1/completions", headers=h, json={"model": "closed", "prompt": "Once"})
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == "".join(WORDS)
    r = proxy.http.post("/v1/embeddings", headers=h, json={"model": "emb", "input": ["a", "bb"]})
    assert r.status_code == 200, r.text
    assert [d["embedding"][2] for d in r.json()["data"]] == [1.0, 2.0]
    assert r.json()["usage"]["prompt_tokens"] == 6 and r.json()["model"] == "emb"
    r = proxy.http.post("/v1/embeddings", headers=h, json={"model": "emb", "input": "a", "truncate": True})
    assert r.status_code == 400 and r.json()["error"]["param"] == "truncate"
    r = proxy.http.post("/v1/embeddings", headers=h, json={"model": "closed", "input": "a"})
    assert r.json()["error"]["code"] == "wrong_task"


def test_missing_usage_is_counted_with_a_tokenizer_and_marked_estimated(proxy: Proxy) -> None:
    proxy.add_provider()
    proxy.expose("no-usage", "closed", price_per_1k_output=PRICE_OUT)
    h = proxy.key("acme")
    body = proxy.http.post("/v1/chat/completions", headers=h, json={"model": "closed", **CHAT}).json()
    assert body["usage"]["estimated"] is True and body["usage"]["completion_tokens"] > 0
    assert body["usage"]["prompt_tokens"] > 0 and _leg(body, "provider") > 0
    r = proxy.http.post(
        "/v1/chat/completions",
        headers=h,
        json={"model": "closed", **CHAT, "stream": True, "stream_options": {"include_usage": True}},
    )
    usage = [e for e in _sse(r) if isinstance(e, dict) and e.get("usage")][-1]["usage"]
    assert usage["estimated"] is True and usage["completion_tokens"] == body["usage"]["completion_tokens"]


def test_a_stream_is_relayed_chunk_by_chunk_with_usage_requested_upstream(proxy: Proxy) -> None:
    proxy.add_provider()
    proxy.expose("ok", "closed", price_per_1k_input=PRICE_IN, price_per_1k_output=PRICE_OUT)
    h = proxy.key("acme")
    with proxy.http.stream(
        "POST", "/v1/chat/completions", headers=h, json={"model": "closed", **CHAT, "stream": True}
    ) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        r.read()
    events = _sse(r)
    assert proxy.upstream.bodies[-1]["stream_options"] == {"include_usage": True}
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["model"] == "closed" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "".join(WORDS)
    assert not any("usage" in c for c in chunks)  # the client did not ask for it
    assert all(c["choices"] for c in chunks)  # nor for the upstream's usage-only chunk
    last = chunks[-1]
    assert (
        last["choices"][0]["finish_reason"] == "stop"
        and _leg(last, "provider") == (7 * PRICE_IN + 10 * PRICE_OUT) // 1000
    )
    # with include_usage: the usage chunk carries the bill
    r = proxy.http.post(
        "/v1/completions",
        headers=h,
        json={"model": "closed", "prompt": "x", "stream": True, "stream_options": {"include_usage": True}},
    )
    tail = _sse(r)[-2]
    assert tail["choices"] == [] and tail["usage"]["completion_tokens"] == 10 and "constellation" in tail
    [a, b] = proxy.events("acme", 2)
    assert {a.status, b.status} == {"succeeded"} and a.output_tokens == b.output_tokens == 10


def test_an_idempotent_retry_of_a_stream_replays_it(proxy: Proxy) -> None:
    proxy.add_provider()
    proxy.expose("ok", "closed")
    h = {**proxy.key("acme"), "Idempotency-Key": "once"}
    first = _sse(
        proxy.http.post("/v1/chat/completions", headers=h, json={"model": "closed", **CHAT, "stream": True})
    )
    again = _sse(
        proxy.http.post("/v1/chat/completions", headers=h, json={"model": "closed", **CHAT, "stream": True})
    )
    assert proxy.upstream.calls["ok"] == 1
    assert first[-2]["constellation"]["request_id"] == again[-2]["constellation"]["request_id"]


# -- failures upstream -----------------------------------------------------------------------


def test_5xx_and_429_are_retried_honouring_retry_after(proxy: Proxy) -> None:
    proxy.add_provider(max_retries=2)
    proxy.expose("flaky", "flaky")
    proxy.expose("limited", "limited")
    h = proxy.key("acme")
    r = proxy.http.post("/v1/chat/completions", headers=h, json={"model": "flaky", **CHAT})
    assert r.status_code == 200 and proxy.upstream.calls["flaky"] == 3
    t0 = time.monotonic()
    r = proxy.http.post("/v1/chat/completions", headers=h, json={"model": "limited", **CHAT})
    assert r.status_code == 200 and proxy.upstream.calls["limited"] == 2
    assert time.monotonic() - t0 >= 0.95  # waited for the upstream's Retry-After: 1


def test_a_failing_upstream_gives_502_then_the_circuit_opens(proxy: Proxy) -> None:
    proxy.add_provider(max_retries=2)
    proxy.expose("fail", "broken")
    h = proxy.key("acme")
    for _ in range(2):  # 3 attempts each: the breaker's threshold (5) is passed on the second
        r = proxy.http.post("/v1/chat/completions", headers=h, json={"model": "broken", **CHAT})
        assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_status_500"
    calls = proxy.upstream.calls["fail"]
    r = proxy.http.post("/v1/chat/completions", headers=h, json={"model": "broken", **CHAT, "stream": True})
    assert r.status_code == 503 and r.json()["error"]["code"] == "upstream_circuit_open"
    assert int(r.headers["retry-after"]) >= 1 and proxy.upstream.calls["fail"] == calls  # failed fast
    assert proxy.http.get("/api/providers/faulty", headers=proxy.admin).json()["circuit"] == "open"
    events = proxy.events("acme", 3)
    assert {e.status for e in events} == {"failed"} and all(e.price_nanos == 0 for e in events)


def test_timeouts_malformed_answers_and_refusals_map_to_our_shape(proxy: Proxy) -> None:
    proxy.add_provider(timeout_s=0.3, max_retries=0)
    for name in ("slow", "malformed", "refuse"):
        proxy.expose(name, name)
    h = proxy.key("acme")
    want = {
        "slow": (504, "upstream_timeout"),
        "malformed": (502, "upstream_malformed_response"),
        "refuse": (502, "upstream_status_400"),
    }
    for name, (status, code) in want.items():
        r = proxy.http.post("/v1/chat/completions", headers=h, json={"model": name, **CHAT})
        assert (r.status_code, r.json()["error"]["code"]) == (status, code), r.text
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert "[redacted]" in r.json()["error"]["message"]  # the upstream quoted our key back


def test_a_stream_cut_midway_ends_with_an_error_event_and_is_not_charged(proxy: Proxy) -> None:
    proxy.add_provider()
    proxy.expose("cut", "cut")
    r = proxy.http.post(
        "/v1/chat/completions", headers=proxy.key("acme"), json={"model": "cut", **CHAT, "stream": True}
    )
    events = _sse(r)
    assert events[-1]["error"]["code"] == "upstream_stream_cut"
    assert sum(1 for e in events if "choices" in e) == 4  # what arrived was passed on
    [event] = proxy.events("acme")
    assert event.status == "failed" and event.price_nanos == 0


def test_a_dropped_stream_cancels_the_upstream_and_is_billed_for_what_it_produced(proxy: Proxy) -> None:
    proxy.add_provider()
    proxy.expose("drip", "drip", price_per_1k_output=PRICE_OUT)
    with proxy.http.stream(
        "POST",
        "/v1/chat/completions",
        headers=proxy.key("acme"),
        json={"model": "drip", **CHAT, "stream": True},
    ) as r:
        for i, _ in enumerate(r.iter_lines()):
            if i >= 10:
                break
    for _ in range(100):
        if proxy.upstream.disconnected:
            break
        time.sleep(0.02)
    assert proxy.upstream.disconnected == ["drip"] and not proxy.upstream.finished
    [event] = proxy.events("acme")
    assert event.status == "cancelled" and 0 < event.output_tokens < 300
    assert event.price_nanos > 0
    with proxy.platform.db.session() as s:
        assert ledger.verify(s) == []


def test_the_concurrency_cap_holds_under_load(proxy: Proxy) -> None:
    proxy.add_provider(max_concurrency=2)
    proxy.expose("hold", "hold")
    h = proxy.key("acme")
    statuses: list[int] = []

    def one() -> None:
        with httpx.Client(base_url=proxy.url, timeout=30) as c:
            statuses.append(
                c.post("/v1/chat/completions", headers=h, json={"model": "hold", **CHAT}).status_code
            )

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [200] * 8 and proxy.upstream.peak == 2


# -- governance and outsiders ----------------------------------------------------------------


def test_a_tenant_whose_data_stays_here_is_refused_before_any_byte_is_sent(proxy: Proxy) -> None:
    proxy.add_provider()
    proxy.expose("ok", "closed")
    proxy.add_provider("inhouse", on_platform=True)
    proxy.expose("ok", "inhouse-chat", provider="inhouse")
    h = proxy.key("bank")
    r = proxy.http.patch("/api/tenants/bank", headers=proxy.admin, json={"data_stays_on_platform": True})
    assert r.status_code == 200 and r.json()["data_stays_on_platform"] is True
    r = proxy.http.post("/v1/chat/completions", headers=h, json={"model": "closed", **CHAT, "stream": True})
    assert r.status_code == 403 and r.json()["error"]["code"] == "data_must_stay_on_platform"
    assert proxy.upstream.calls["ok"] == 0
    assert (
        proxy.http.post("/v1/chat/completions", headers=h, json={"model": "inhouse-chat", **CHAT}).status_code
        == 200
    )
    listed = {m["id"]: m["constellation"] for m in proxy.http.get("/v1/models", headers=h).json()["data"]}
    assert (
        listed["closed"]["permitted"] is False
        and listed["closed"]["refusal"]["code"] == "data_must_stay_on_platform"
    )
    assert listed["inhouse-chat"]["permitted"] is True


def test_provider_terms_need_acceptance_like_any_licence(proxy: Proxy) -> None:
    proxy.add_provider()
    r = proxy.http.post(
        "/api/providers/faulty/models",
        headers=proxy.admin,
        json={"model": "ok", "name": "gpt", "task": "causal-lm"},
    )
    assert r.status_code == 201
    h = proxy.key("acme")
    r = proxy.http.post("/v1/chat/completions", headers=h, json={"model": "gpt", **CHAT})
    assert r.status_code == 403 and r.json()["error"]["code"] == "license_restrictions_not_accepted"
    assert proxy.upstream.calls["ok"] == 0
    assert (
        proxy.http.post(
            "/api/tenants/acme/acceptances", headers=h, json={"license": "provider-terms"}
        ).status_code
        == 201
    )
    r = proxy.http.post("/v1/chat/completions", headers=h, json={"model": "gpt", **CHAT})
    assert r.status_code == 200 and any(
        "upstream provider" in n for n in r.json()["constellation"]["notices"]
    )


def test_outsiders_cannot_reach_providers_or_others_models(proxy: Proxy) -> None:
    proxy.add_provider()
    proxy.key("acme")
    proxy.expose("ok", "acme-only", visibility="private", owner_tenant="acme")
    other = proxy.key("rival")
    r = proxy.http.post("/v1/chat/completions", headers=other, json={"model": "acme-only", **CHAT})
    assert r.status_code == 404
    assert proxy.http.get("/api/providers", headers=other).status_code == 403
    assert (
        proxy.http.post(
            "/api/providers", headers=other, json={"name": "x", "base_url": "http://x"}
        ).status_code
        == 403
    )
    with proxy.platform.db.session() as s:
        ownership.link(s, tenant_id="acme", contributor_id="faulty")
    statement_key = proxy.key("acme", "contributor:faulty")
    assert (
        proxy.http.post(
            "/v1/chat/completions", headers=statement_key, json={"model": "acme-only", **CHAT}
        ).status_code
        == 403
    )
    huge = {"model": "acme-only", "messages": [{"role": "user", "content": "x" * (9 * 1024 * 1024)}]}
    assert proxy.http.post("/v1/chat/completions", headers=other, json=huge).status_code == 413
    r = proxy.http.post(
        "/v1/chat/completions", headers=proxy.key("acme"), content=b'{"model": "acme-only", "messages": ['
    )
    assert r.status_code == 400
    assert proxy.upstream.calls["ok"] == 0


def test_the_secret_appears_in_no_response_log_line_or_row(
    proxy: Proxy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []

    def keep(r: httpx.Response) -> httpx.Response:
        seen.append(json.dumps(dict(r.headers)) + r.text)
        return r

    keep(proxy.add_provider(max_retries=0))
    for name in ("ok", "refuse", "fail", "malformed", "no-usage", "cut"):
        keep(proxy.expose(name, f"m-{name}"))
    h = proxy.key("acme")
    for name in ("ok", "refuse", "fail", "malformed", "no-usage", "cut"):
        keep(proxy.http.post("/v1/chat/completions", headers=h, json={"model": f"m-{name}", **CHAT}))
        keep(
            proxy.http.post(
                "/v1/chat/completions", headers=h, json={"model": f"m-{name}", **CHAT, "stream": True}
            )
        )
    for path in (
        "/api/providers",
        "/api/providers/faulty",
        "/api/models",
        "/api/usage",
        "/api/terms",
        "/openapi.json",
        "/metrics",
    ):
        keep(proxy.http.get(path, headers=proxy.admin))
    keep(proxy.http.get("/v1/models", headers=h))
    assert f"Bearer {SECRET}" in proxy.upstream.auth  # it was sent where it belongs
    assert not [s for s in seen if SECRET in s]
    assert SECRET not in caplog.text
    with proxy.platform.db.session() as s:
        names = [r[0] for r in s.execute(text("SELECT name FROM sqlite_master WHERE type = 'table'"))]
        for table in names:
            for row in s.execute(text(f'SELECT * FROM "{table}"')):
                assert SECRET not in repr(tuple(row)), table


def test_a_finetune_on_provider_outputs_inherits_its_terms(proxy: Proxy, lm_dirs: tuple[Path, Path]) -> None:
    proxy.add_provider()
    assert proxy.expose("ok", "closed", license="provider-terms").status_code == 201
    base = {"name": "tiny-llama", "path": str(lm_dirs[0]), "task": "causal-lm", "author": "faulty"}
    assert (
        proxy.http.post("/api/models", headers=proxy.admin, json={**base, "license": "mit"}).status_code
        == 201
    )
    jsonl = "".join(json.dumps({"prompt": f"q{i}", "completion": f"a{i}"}) + "\n" for i in range(12))
    job = {
        "base": "tiny-llama", "task": "causal-lm", "name": "student", "license": "mit", "author": "faulty",
        "data_provider": "faulty", "data": [{"filename": "distilled.jsonl", "content": jsonl}],
        "outputs_of": ["closed"],
    }  # fmt: skip
    r = proxy.http.post("/api/finetunes", headers=proxy.admin, json=job)
    assert r.status_code == 400 and r.json()["error"]["code"] == "license_too_permissive", r.text
    assert "outputs of model 'closed'" in r.json()["error"]["message"]
    r = proxy.http.post("/api/finetunes", headers=proxy.admin, json={**job, "outputs_of": ["nope"]})
    assert r.status_code == 404
