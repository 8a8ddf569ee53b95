"""`serve --ray` on a Ray cluster of two nodes started on this machine (Ray's cluster utilities:
a head and a worker raylet, each with its own CPUs and memory), metering into one PostgreSQL
ledger: the official `openai` client against the ingress, answers equal to one process's, and
`kill -9` of an engine replica and of an ingress replica under load, then the ledger verified.

One cluster serves the module: starting it (six replicas importing torch) is most of its time."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from tests.e2e.conftest import free_port

from constellation.api.app import create_app
from constellation.api.state import state_of
from constellation.config import ClusterLimits, EngineLimits, Settings
from constellation.economy import ledger
from constellation.economy.tables import UsageEvent
from constellation.errors import InvalidInput
from constellation.registry import tenants
from constellation.registry.db import Database
from constellation.testing.toy_lm import save_random_adapters, save_random_lm

pytest.importorskip("ray.serve", reason="the `cluster` extra (Ray Serve) is not installed")

pytestmark = pytest.mark.slow
MiB = 1024**2
ADAPTERS = ("pirate", "poet")
RPM = 3
TEXTS = ["the first sentence", "a second, longer sentence about ledgers", "three"]


@dataclass
class Cluster:
    url: str
    settings: Settings
    key: str  # acme's inference key (commercial use)
    admin: str
    reference: list[list[float]]  # TEXTS' embeddings from one process
    small: str  # the key of a tenant limited to RPM requests per minute

    def headers(self, idempotency_key: str | None = None) -> dict[str, str]:
        h = {"Authorization": f"Bearer {self.key}"}
        return h | ({"Idempotency-Key": idempotency_key} if idempotency_key else {})


def _settings(root: Path, db_url: str, redis_url: str) -> Settings:
    engine = EngineLimits(
        base_model_bytes=256 * MiB, adapter_host_bytes=32 * MiB, kv_cache_bytes=16 * MiB, adapter_slots=4
    )
    cluster = ClusterLimits(
        ingress_replicas=2,
        ingress_max_replicas=2,
        ingress_cpus=0.25,
        engine_replicas=2,
        engine_max_replicas=2,
        engine_cpus=0.25,
        proxy_location="HeadOnly",  # two nodes on one machine: one HTTP port
    )
    return Settings(
        data_dir=root / "data",
        db_url=db_url,
        redis_url=redis_url,
        engine=engine,
        cluster=cluster,
        access_log=False,
    )


def _register(c: TestClient, admin: dict[str, str], tiny_bert: Path, lm: Path, adapters: list[Path]) -> None:
    def ok(r: httpx.Response) -> None:
        assert r.status_code == 201, r.text

    ok(c.post("/api/contributors", headers=admin, json={"id": "lab", "name": "Lab", "kind": "organisation"}))
    for name, path, task, licence in (
        ("bert", tiny_bert, "embedding", "apache-2.0"),
        ("bert-nc", tiny_bert, "embedding", "cc-by-nc-4.0"),
        ("tiny-llama", lm, "causal-lm", "apache-2.0"),
    ):
        body = {"name": name, "path": str(path), "task": task, "author": "lab", "license": licence}
        ok(c.post("/api/models", headers=admin, json=body))
    for name, path in zip(ADAPTERS, adapters, strict=True):
        body = {"name": name, "path": str(path), "base": "tiny-llama", "author": "lab", "license": "mit"}
        ok(c.post("/api/adapters", headers=admin, json=body))


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, pg_schemas: Any, redis_url: str, tiny_bert: Path
) -> Iterator[Cluster]:
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster as RayCluster

    from constellation.cluster.deploy import start

    root = tmp_path_factory.mktemp("cluster")
    lm = save_random_lm(root / "tiny-llama", "llama", seed=3, byte_level=True)  # byte-level: grammars
    adapters = save_random_adapters(lm, {root / n: i for i, n in enumerate(ADAPTERS)}, rank=4)
    with pg_schemas.fresh() as db_url:
        settings = _settings(root, db_url, redis_url)
        with TestClient(create_app(settings)) as one:  # the single-process server
            platform = state_of(one.app).platform  # type: ignore[arg-type]
            with platform.db.session() as s:
                tenants.add_tenant(s, id="ops", name="ops")
                tenants.add_tenant(s, id="acme", name="acme", declared_use="commercial")
                admin = tenants.create_key(s, tenant_id="ops", scopes=["admin"]).secret
                key = tenants.create_key(s, tenant_id="acme", scopes=["inference"]).secret
                small_id = f"small-{uuid.uuid4().hex[:8]}"  # Redis is shared with other test runs
                tenants.add_tenant(s, id=small_id, name="small").requests_per_minute = RPM
                small = tenants.create_key(s, tenant_id=small_id, scopes=["inference"]).secret
            _register(one, {"Authorization": f"Bearer {admin}"}, tiny_bert, lm, adapters)
            r = one.post("/v1/embeddings", headers={"Authorization": f"Bearer {key}"},
                         json={"model": "bert", "input": TEXTS})  # fmt: skip
            assert r.status_code == 200, r.text
            reference = [d["embedding"] for d in r.json()["data"]]

        os.environ.setdefault("OMP_NUM_THREADS", "1")  # the raylets' workers inherit it
        nodes = RayCluster(
            initialize_head=True,
            head_node_args={"num_cpus": 1, "memory": 3 * 1024**3, "resources": {"head": 1}},
        )
        nodes.add_node(num_cpus=1, memory=3 * 1024**3, resources={"worker": 1})
        try:
            url = start(settings, nodes.address, host="127.0.0.1", port=free_port())
            yield Cluster(url, settings, key, admin, reference, small)
        finally:
            serve.shutdown()
            ray.shutdown()
            nodes.shutdown()


def _openai(cluster: Cluster) -> Any:
    from openai import OpenAI

    return OpenAI(base_url=f"{cluster.url}/v1", api_key=cluster.key, max_retries=0, timeout=120)


def test_embeddings_equal_one_process(cluster: Cluster) -> None:
    out = _openai(cluster).embeddings.create(model="bert", input=TEXTS)
    got = np.array([d.embedding for d in out.data])
    # fp32 sums may differ in their last bit with the replica's thread count
    np.testing.assert_allclose(got, np.array(cluster.reference), rtol=0, atol=1e-6)
    assert out.usage.prompt_tokens > 0


def test_chat_streams_through_the_ingress(cluster: Cluster) -> None:
    stream = _openai(cluster).chat.completions.create(
        model="pirate",
        messages=[{"role": "user", "content": "hello"}],
        max_tokens=6,
        seed=7,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert text and finish == ["length"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6


def test_a_json_object_answer_crosses_replicas(cluster: Cluster) -> None:
    """A grammar is compiled where the request is prepared and again where it is generated."""
    r = _openai(cluster).chat.completions.create(
        model="tiny-llama",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=6,
        temperature=0,
        response_format={"type": "json_object"},
    )
    assert (r.choices[0].message.content or "").startswith("{")


def test_licence_refused_and_invoice(cluster: Cluster) -> None:
    import openai

    with pytest.raises(openai.PermissionDeniedError) as refused:
        _openai(cluster).embeddings.create(model="bert-nc", input="a commercial tenant")
    assert "non-commercial" in str(refused.value)
    invoice = httpx.get(f"{cluster.url}/api/invoices", headers=cluster.headers(), timeout=60).json()
    assert invoice["object"] == "invoice" and invoice["requests"] >= 1 and invoice["total_nanos"] > 0
    assert "bert-nc" not in {ln["model"] for ln in invoice["lines_by_model"]}  # refused: not billed


def test_rate_limit_buckets_are_shared_by_the_ingress_replicas(cluster: Cluster) -> None:
    """Twice its limit, spread over both ingress replicas: the limit holds in total (Redis)."""
    headers = {"Authorization": f"Bearer {cluster.small}"}
    with httpx.Client(base_url=cluster.url, timeout=60) as c:
        codes = [c.post("/v1/embeddings", json={"model": "bert", "input": "x"}, headers=headers).status_code
                 for _ in range(2 * RPM + 2)]  # fmt: skip
    assert Counter(codes) == {200: RPM, 429: RPM + 2}


def test_adapter_requests_stay_on_the_replica_that_holds_them(cluster: Cluster) -> None:
    """Multiplexing: after its first request, an adapter's requests go to the replica whose
    slots hold it, so each adapter is loaded into one replica's slots, not both."""
    from constellation.cluster.deploy import replica_stats

    client = _openai(cluster)
    for name in ADAPTERS:  # the first request registers the adapter on one replica
        client.completions.create(model=name, prompt="warm", max_tokens=1, seed=1)
    time.sleep(2)  # the replica's adapter list reaches the routers asynchronously
    for _ in range(4):
        for name in ADAPTERS:
            client.completions.create(model=name, prompt="again", max_tokens=1, seed=1)
    stats = replica_stats(cluster.settings.cluster.app_name, "decoder-default", replicas=2)
    misses = sum(s.get("adapter_misses", 0) for s in stats.values())
    hits = sum(s.get("adapter_hits", 0) for s in stats.values())
    assert len(stats) == 2 and misses == len(ADAPTERS), stats  # each loaded once, on one replica
    assert hits >= 4 * len(ADAPTERS)


def test_cluster_mode_refuses_sqlite(tmp_path: Path) -> None:
    from constellation.cluster.deploy import check_cluster_settings

    with pytest.raises(InvalidInput, match="needs PostgreSQL"):
        check_cluster_settings(Settings(data_dir=tmp_path))


# -- faults ------------------------------------------------------------------------------------


def _replica_pids(deployment: str) -> list[int]:
    """Pids of this cluster's replica processes of one deployment (Ray names them so)."""
    tag = f"ServeReplica:constellation:{deployment}"
    return sorted(p.pid for p in psutil.process_iter(["cmdline"]) if tag in " ".join(p.info["cmdline"] or ()))


async def _load_and_kill(cluster: Cluster, prefix: str, victim: int, n: int = 120) -> dict[str, int]:
    """`n` concurrent requests under Idempotency-Keys; once 10 have succeeded, kill -9 `victim`."""
    status: dict[str, int] = {}
    async with httpx.AsyncClient(base_url=cluster.url, timeout=120) as c:

        async def one(key: str) -> None:
            path, body = _request(key)
            r = await c.post(path, json=body, headers=cluster.headers(key))
            status[key] = r.status_code
            if r.status_code == 200 and sum(s == 200 for s in status.values()) == 10:
                os.kill(victim, signal.SIGKILL)

        await asyncio.gather(*(one(f"{prefix}-{i:03d}") for i in range(n)))
    return status


def _request(key: str) -> tuple[str, dict[str, Any]]:
    """Path and body: a completion of 24 tokens for a decoder fault (of the base: no adapter to
    keep it on one replica), else 16 inputs to embed."""
    if key.startswith("decoder"):
        return "/v1/completions", {"model": "tiny-llama", "prompt": key, "max_tokens": 24, "seed": 1}
    return "/v1/embeddings", {
        "model": "bert",
        "input": [f"sentence {i} of {key}, long enough to take a while" for i in range(16)],
    }


def _retry(cluster: Cluster, status: dict[str, int]) -> list[int]:
    """Retry every failed request under its key until Ray has replaced the killed replica."""
    codes: list[int] = []
    with httpx.Client(base_url=cluster.url, timeout=120) as c:
        for key in [k for k, s in status.items() if s != 200]:
            deadline = time.monotonic() + 120
            while True:
                path, body = _request(key)
                r = c.post(path, json=body, headers=cluster.headers(key))
                if r.status_code == 200 or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            codes.append(r.status_code)
    return codes


def _charges(cluster: Cluster, prefix: str) -> Counter[str]:
    """Succeeded, charged usage events per idempotency key under `prefix` (the failed ones charged
    nothing); the ledger verified, and `constellation ledger verify` passes."""
    from typer.testing import CliRunner

    from constellation.cli import app

    db = Database(cluster.settings.database_url)
    under = UsageEvent.idempotency_key.like(f"{prefix}-%")
    try:
        with db.session() as s:
            succeeded = UsageEvent.status == "succeeded"
            rows = s.scalars(select(UsageEvent.idempotency_key).where(under, succeeded)).all()
            others = s.scalar(
                select(func.coalesce(func.sum(UsageEvent.price_nanos), 0)).where(under, ~succeeded)
            )
            assert others == 0
            assert ledger.verify(s) == []
    finally:
        db.close()
    env = {
        "CONSTELLATION_DB_URL": cluster.settings.database_url,
        "CONSTELLATION_DATA_DIR": str(cluster.settings.data_dir),
    }
    out = CliRunner().invoke(app, ["ledger", "verify"], env=env)
    assert out.exit_code == 0, out.stdout
    return Counter(k for k in rows if k is not None)


def _engine_retries(cluster: Cluster, engine: str) -> float:
    """The most calls any ingress replica has retried on `engine` (a scrape reaches one of them)."""
    seen = [0.0]
    for _ in range(30):
        for line in httpx.get(f"{cluster.url}/metrics", timeout=60).text.splitlines():
            if line.startswith(f'constellation_engine_stat{{engine="{engine}",stat="retries"}}'):
                seen.append(float(line.split()[-1]))
    return max(seen)


def _wait_for(deployment: str, replicas: int, gone: int) -> list[int]:
    deadline = time.monotonic() + 120
    while True:
        pids = _replica_pids(deployment)
        if len(pids) == replicas and gone not in pids:
            return pids
        assert time.monotonic() < deadline, f"Ray did not restart {deployment}: {pids}"
        time.sleep(0.5)


@pytest.mark.parametrize("deployment", ["encoder-default", "decoder-default", "ingress"])
def test_kill_9_a_replica_under_load(cluster: Cluster, deployment: str) -> None:
    """An engine replica's in-flight calls are retried on the other (an engine call has no side
    effect) or fail with 503; an ingress replica's requests fail at Ray's proxy (500: its fixed
    answer for a replica that died). Either way a retry under the same Idempotency-Key succeeds,
    nothing is charged twice, and Ray brings the replica back. A kill can land while the victim
    has nothing in flight: then it is repeated on a fresh replica, up to three times."""
    engine = deployment.split("-")[0]
    status: dict[str, int] = {}
    failed: Counter[int] = Counter()
    for attempt in range(3):
        victim = _replica_pids(deployment)[0]
        retries_before = _engine_retries(cluster, engine) if engine != "ingress" else 0.0
        round_ = asyncio.run(_load_and_kill(cluster, f"{deployment}-{attempt}", victim))
        status |= round_
        failed_now = Counter(s for s in round_.values() if s != 200)
        failed += failed_now
        assert set(failed_now) <= ({500, 503} if engine == "ingress" else {503}), failed_now
        _wait_for(deployment, 2, victim)
        if failed_now or (engine != "ingress" and _engine_retries(cluster, engine) > retries_before):
            break  # this kill hit requests in flight
    else:
        pytest.fail(f"three kills of a {deployment} replica hit no request in flight")
    retried = _retry(cluster, status)
    assert retried == [200] * len(retried)
    charged = _charges(cluster, deployment)
    assert set(charged.values()) == {1} and len(charged) == len(status)  # each key once, none twice
    n_failed, kills = sum(failed.values()), attempt + 1
    print(
        f"{deployment}: {kills} kill(s), {len(status)} sent, {n_failed} failed {dict(failed)}, "
        f"{len(retried)} retried by the client, {len(charged)} charged once each, ledger verified"
    )
