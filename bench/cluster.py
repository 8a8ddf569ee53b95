"""The cluster (`serve --ray`): adapter-slot hit rate with adapter affinity (Ray Serve
multiplexing) against routing on queue length alone, over a Zipf workload of 200 adapters on 2
decoder replicas; decoder throughput with 1 and 2 replicas; and the capacity model: measured
per-replica throughput x replicas against the measured PostgreSQL ledger ceiling.

Drives the decoder deployments through the ingress's own engine client (cluster/engines.py) on a
local Ray instance; the ledger ceiling is `bench ledger`'s Meter line on PostgreSQL. Random toy
models (a tiny Llama, rank-4 adapters), one generated token per request: routing and slots are
what is measured, not the model. `--tiny` runs every line with small counts."""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from constellation.config import ClusterLimits, EngineLimits, Settings
from constellation.engine.decoder.sampling import SamplingParams
from constellation.engine.spec import AdapterSpec, BaseSpec
from constellation.testing.toy_lm import save_random_adapters, save_random_lm

ADAPTERS, ZIPF_S, SLOTS, CONCURRENCY = 200, 1.1, 16, 8
APP = "constellation-bench"


def _ledger_bench() -> Any:
    """bench/ledger.py, for its PostgreSQL Meter line (loaded by path, as `constellation bench` does)."""
    spec = importlib.util.spec_from_file_location(
        "constellation_bench_ledger", Path(__file__).with_name("ledger.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _models(root: Path, n: int) -> tuple[BaseSpec, list[AdapterSpec]]:
    """A tiny random Llama and `n` random adapters, as the specs the ingress would resolve
    (`resolve` returns the directory: these have no artifact store behind them)."""
    base_dir = save_random_lm(root / "base", "llama", seed=1)
    dirs = save_random_adapters(base_dir, {root / f"a{i:03d}": i for i in range(n)}, rank=4)
    base = BaseSpec(name="bench-llama", task="causal-lm", resolve=functools.partial(Path, str(base_dir)))
    adapters = [
        AdapterSpec(name=f"a{i:03d}", base=base.name, resolve=functools.partial(Path, str(d)))
        for i, d in enumerate(dirs)
    ]
    return base, adapters


def zipf_workload(n_adapters: int, n_requests: int, s: float, seed: int = 0) -> list[int]:
    """Adapter indices, rank k drawn with probability proportional to 1 / k^s."""
    weights = 1.0 / np.arange(1, n_adapters + 1) ** s
    rng = np.random.default_rng(seed)
    return [int(i) for i in rng.choice(n_adapters, size=n_requests, p=weights / weights.sum())]


def _settings(root: Path, replicas: int, affinity: bool) -> Settings:
    engine = EngineLimits(
        adapter_slots=SLOTS, base_model_bytes=256 * 1024**2, adapter_host_bytes=64 * 1024**2,
        kv_cache_bytes=16 * 1024**2,
    )  # fmt: skip
    cluster = ClusterLimits(
        app_name=APP, engine_replicas=replicas, engine_max_replicas=replicas, engine_cpus=0.5,
        adapter_affinity=affinity,
    )  # fmt: skip
    return Settings(data_dir=root / "data", engine=engine, cluster=cluster)


def _deploy(settings: Settings) -> Any:
    """The decoder deployment alone (no ingress: the driver is the ingress here); its handles."""
    from ray import serve

    from constellation.cluster.deploy import engine_deployment, for_replicas

    app = engine_deployment("decoder", settings).bind(for_replicas(settings))
    return serve.run(app, name=APP, route_prefix=None)


async def _drive(engine: Any, prepared: list[Any], order: list[int]) -> float:
    """Run `order`'s requests, CONCURRENCY at a time; seconds taken."""
    queue = list(reversed(order))

    async def worker() -> None:
        while queue:
            async for _ in engine.generate(prepared[queue.pop()]):
                pass

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return time.perf_counter() - t0


def _slot_counts(replicas: int) -> Counter[str]:
    from constellation.cluster.deploy import replica_stats

    total: Counter[str] = Counter()
    for stats in replica_stats(APP, "decoder-default", replicas).values():
        total.update({k: int(v) for k, v in stats.items() if k.startswith("adapter_")})
    return total


def _run(root: Path, base: BaseSpec, adapters: list[AdapterSpec], replicas: int, affinity: bool,
         order: list[int]) -> tuple[float, float]:  # fmt: skip
    """(slot hit rate, requests/s) of `order` on `replicas` decoder replicas."""
    from constellation.cluster.engines import RayDecoderEngine

    settings = _settings(root, replicas, affinity)
    handle = _deploy(settings)
    engine = RayDecoderEngine({"default": handle}, settings.cluster)
    params = SamplingParams(max_tokens=1, temperature=0.0)
    prepared = [engine.prepare(base, a, prompt="route me", params=params) for a in adapters]
    asyncio.run(_drive(engine, prepared, order[: len(order) // 10]))  # warm: the base loads
    before = _slot_counts(replicas)
    seconds = asyncio.run(_drive(engine, prepared, order))
    after = _slot_counts(replicas)
    hits = after["adapter_hits"] - before["adapter_hits"]
    misses = after["adapter_misses"] - before["adapter_misses"]
    return hits / max(1, hits + misses), len(order) / seconds


def _ledger_ceiling(tiny: bool) -> float | None:
    ledger = _ledger_bench()
    with ledger._pg_url() as url:
        if url is None:
            return None
        n, concurrency = (3_000, 256) if tiny else (50_000, 1024)
        rate: float = ledger._bench_meter(url, n, concurrency)
        return rate


def main(tiny: bool = False) -> None:
    try:
        import ray
        from ray import serve
    except ImportError:
        print("cluster: skipped, Ray Serve is not installed (pip install '.[cluster]')")
        return
    n_adapters = 40 if tiny else ADAPTERS
    n_requests = 200 if tiny else 3_000
    root = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    base, adapters = _models(root, n_adapters)
    order = zipf_workload(n_adapters, n_requests, ZIPF_S)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    ray.init(num_cpus=2, namespace="constellation-bench", include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"port": 0}, proxy_location="Disabled")
        rows = [
            ("affinity (multiplexing)", 2, True),
            ("queue length only", 2, False),
            ("affinity, 1 replica", 1, True),
        ]
        results = {label: _run(root, base, adapters, r, aff, order) for label, r, aff in rows}
    finally:
        serve.shutdown()
        ray.shutdown()
    ceiling = _ledger_ceiling(tiny)

    print(
        f"cluster: Zipf(s={ZIPF_S}) over {n_adapters} adapters, {n_requests} requests of 1 token, "
        f"{CONCURRENCY} in flight, {SLOTS} adapter slots per decoder replica, local Ray"
    )
    print(f"{'routing':>26}  {'replicas':>8}  {'slot hit rate':>13}  {'req/s':>7}")
    for label, r, _ in rows:
        hit, rps = results[label]
        print(f"{label:>26}  {r:>8}  {hit:>13.3f}  {rps:>7.1f}")
    aff, rnd = results[rows[0][0]][0], results[rows[1][0]][0]
    print(f"  affinity / queue-length hit rate: {aff / max(rnd, 1e-9):.2f}x")
    one = results[rows[2][0]][1]
    two = results[rows[0][0]][1]
    print(f"  2 replicas / 1 replica throughput: {two / one:.2f}x (2 cores: replicas share them)")
    if ceiling is None:
        print("  capacity model: skipped, PostgreSQL not reachable")
        return
    print(f"  capacity model: per-replica {one:.1f} req/s x N replicas against the PostgreSQL ledger "
          f"ceiling {ceiling:,.0f} postings/s: the ledger becomes the bottleneck past "
          f"{ceiling / one:,.0f} replicas of this size")  # fmt: skip


if __name__ == "__main__":
    main(tiny="--tiny" in sys.argv[1:])
