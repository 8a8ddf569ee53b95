"""Seeing it happen: `X-Request-Id` on every answer (the same id as the usage event's), one JSON
log line per request with tenant, model, tokens and price, and Prometheus metrics under
conventional names: requests by route template, token latencies, engine and ledger counters."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.integration.conftest import Api

from constellation.api.access_log import JSONFormatter
from constellation.api.metrics import Metrics
from constellation.testing.toy_lm import save_random_lm

pytestmark = pytest.mark.anyio


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    return sqlite_url


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def scrape(api: Api) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    r = await api.client.get("/metrics")
    assert r.status_code == 200
    return samples(r.text)


def labels(**kw: str) -> frozenset[tuple[str, str]]:
    return frozenset(kw.items())


async def test_embeddings_request_is_logged_counted_and_carries_its_id(
    api: Api, minilm_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert (await api.register(minilm_path, name="minilm")).status_code == 201
    h = api.key("acme")
    caplog.set_level(logging.INFO, logger="constellation.access")
    r = await api.client.post("/v1/embeddings", headers=h, json={"model": "minilm", "input": ["a b", "c"]})
    assert r.status_code == 200, r.text
    rid = r.headers["x-request-id"]
    assert rid == r.json()["constellation"]["request_id"]  # one id: response, usage event, ledger

    [line] = [rec for rec in caplog.records if getattr(rec, "fields", {}).get("request_id") == rid]
    fields = line.fields  # type: ignore[attr-defined]
    assert fields["tenant"] == "acme" and fields["model"] == "minilm" and fields["status"] == 200
    assert fields["route"] == "/v1/embeddings"
    assert fields["input_tokens"] == r.json()["usage"]["prompt_tokens"] and fields["output_tokens"] == 0
    assert fields["price_nanos"] == r.json()["constellation"]["price_nanos"] > 0
    assert fields["latency_s"] > 0
    parsed = json.loads(JSONFormatter().format(line))
    assert parsed["request_id"] == rid and parsed["msg"] == "request" and parsed["level"] == "info"

    m = await scrape(api)
    ok = labels(method="POST", route="/v1/embeddings", status="200")
    assert m[("constellation_http_requests_total", ok)] == 1
    assert (
        m[
            (
                "constellation_http_request_duration_seconds_count",
                labels(method="POST", route="/v1/embeddings"),
            )
        ]
        == 1
    )
    assert m[("constellation_engine_steps_total", labels(engine="encoder"))] >= 1
    assert m[("constellation_engine_batch_rows_total", labels(engine="encoder"))] >= 2
    assert m[("constellation_engine_busy_seconds_total", labels(engine="encoder"))] > 0
    assert m[("constellation_ledger_postings_total", labels())] >= 1
    assert ("constellation_ledger_written_off_usd_total", labels()) in m


async def test_refusals_and_unknown_paths_carry_an_id_and_a_route(api: Api) -> None:
    r = await api.client.post("/v1/embeddings", json={"model": "x", "input": "y"})  # no key: the gate
    assert r.status_code == 401 and r.headers["x-request-id"].startswith("req_")
    r = await api.client.get("/api/tenants/acme", headers={"Authorization": "Bearer cst_bad_bad"})
    assert r.status_code == 401
    r = await api.client.get("/no/such/thing")
    assert r.status_code == 404 and r.headers["x-request-id"]
    m = await scrape(api)
    assert m[
        ("constellation_http_requests_total", labels(method="POST", route="/v1/embeddings", status="401"))
    ]
    assert m[
        ("constellation_http_requests_total", labels(method="GET", route="/api/tenants/{id}", status="401"))
    ]
    assert m[("constellation_http_requests_total", labels(method="GET", route="unmatched", status="404"))]


async def test_a_crash_is_a_500_in_openai_shape_with_an_id(api: Api) -> None:
    async def boom() -> None:
        raise RuntimeError("a bug")

    api.app.add_api_route("/boom", boom)
    r = await api.client.get("/boom")
    assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"
    assert r.headers["x-request-id"].startswith("req_")


async def test_streamed_generation_observes_ttft_and_inter_token_latency(api: Api, tmp_path: Path) -> None:
    base = save_random_lm(tmp_path / "tiny-llama", "llama", seed=3)
    await api.client.post(
        "/api/contributors", headers=api.admin, json={"id": "lab", "name": "Lab", "kind": "organisation"}
    )
    body = {"name": "tiny", "path": str(base), "task": "causal-lm", "author": "lab", "license": "apache-2.0"}
    assert (await api.client.post("/api/models", headers=api.admin, json=body)).status_code == 201
    req = {"model": "tiny", "prompt": "the cat", "max_tokens": 6, "temperature": 0, "stream": True}
    r = await api.client.post("/v1/completions", headers=api.key("acme"), json=req)
    assert r.status_code == 200 and r.headers["x-request-id"].startswith("req_")
    m = await scrape(api)
    assert m[("constellation_time_to_first_token_seconds_count", labels())] == 1
    assert m[("constellation_inter_token_latency_seconds_count", labels())] >= 1
    assert m[("constellation_engine_output_tokens_total", labels(engine="decoder"))] >= 1
    assert ("constellation_kv_cache_blocks", labels(engine="decoder")) in m


def test_engine_and_ledger_counters_are_read_at_scrape_time() -> None:
    stats = {"adapter_hits": 7.0, "adapter_misses": 2.0, "adapter_evictions": 1.0, "novel_stat": 3.0}
    stats["queue_wait_ns"] = 1.5e9
    engines = SimpleNamespace(stats=lambda: {"encoder": stats})
    writer = SimpleNamespace(postings=5, written_off_nanos=250_000_000)
    metrics = Metrics()
    state = SimpleNamespace(engines=engines, meter=SimpleNamespace(_writer=writer))
    metrics.watch(lambda: state)  # type: ignore[arg-type,return-value]  # duck-typed AppState
    from prometheus_client import generate_latest

    m = samples(generate_latest(metrics.registry).decode())
    enc = labels(engine="encoder")
    assert m[("constellation_adapter_cache_hits_total", enc)] == 7
    assert m[("constellation_adapter_cache_misses_total", enc)] == 2
    assert m[("constellation_adapter_cache_evictions_total", enc)] == 1
    assert m[("constellation_engine_stat", labels(engine="encoder", stat="novel_stat"))] == 3
    assert m[("constellation_engine_queue_wait_seconds_total", enc)] == 1.5
    assert m[("constellation_ledger_postings_total", labels())] == 5
    assert m[("constellation_ledger_written_off_usd_total", labels())] == 0.25
    stats["adapter_hits"] = 9.0  # read again at the next scrape, not copied at registration
    assert (
        samples(generate_latest(metrics.registry).decode())[("constellation_adapter_cache_hits_total", enc)]
        == 9
    )
