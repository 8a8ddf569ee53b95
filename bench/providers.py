"""The latency a provider model's proxy adds, and its throughput, against calling the upstream
directly in the same run: an OpenAI-compatible stub upstream (bench/_openai_stub.py) and
`constellation serve` (metering on) each in a process of their own, on loopback.

1. Added latency: one client, requests alternating direct and through us (non-streamed chat
   completions, upstream answering at once); p50 and p99 of each, and the difference.
   Target: <= 2 ms added at p50.
2. Throughput at 64 concurrent connections, direct and through us, with the upstream answering
   after 0 ms (the proxy's own ceiling: the stub does next to nothing), 100 ms and 500 ms (a
   fast closed model's answer). Target >= 0.9x.

On a 2-core machine the load generator, the stub and the server share the cores.
`--tiny` runs every line with small counts in a few seconds of measurement.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _loadgen import HttpError, _read_response, encode_post, run_load
from constellation.config import Settings
from constellation.platform import Platform
from constellation.registry import providers, tenants

CLI = [sys.executable, "-m", "constellation.cli"]
STUB = Path(__file__).resolve().parent / "_openai_stub.py"
CLIENTS = 64
KEY_VAR = "BENCH_UPSTREAM_KEY"
BODY = {"model": "stub-1", "messages": [{"role": "user", "content": "Say hello like a pirate, briefly."}]}
ADDED_P50_TARGET_MS = 2.0
THROUGHPUT_TARGET = 0.9


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited: {log.read_text()[-2000:]}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} not up after 120 s")


@contextmanager
def _process(cmd: list[str], env: dict[str, str], probe: str, log: Path) -> Iterator[None]:
    proc = subprocess.Popen(cmd, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)
    try:
        _wait(probe, proc, log)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _register(data_dir: Path, stubs: dict[int, int]) -> str:
    """Our side: each stub (delay ms -> port) a provider, its model exposed as `stub-<delay>`,
    and a tenant key."""
    platform = Platform(Settings(data_dir=data_dir, db_url=None)).open()
    try:
        with platform.db.session() as s:
            for delay, port in stubs.items():
                providers.add_provider(
                    s, id=f"stub-{delay}", base_url=f"http://127.0.0.1:{port}/v1", api_key_env=KEY_VAR,
                    max_concurrency=256,
                )  # fmt: skip
                providers.expose_model(
                    s, provider_id=f"stub-{delay}", upstream_model="stub-1", name=f"stub-{delay}",
                    task="causal-lm", price_per_1k_input=150, price_per_1k_output=600, licence_id="mit",
                )  # fmt: skip
            tenants.add_tenant(s, id="bench", name="bench")
            return tenants.create_key(s, tenant_id="bench", scopes=["inference"], name="bench").secret
    finally:
        platform.close()


@contextmanager
def _servers(delays: tuple[int, ...]) -> Iterator[tuple[dict[int, int], int, str]]:
    """({delay ms: stub port}, our port, our key): a stub per delay, and one server of ours."""
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        stubs = {d: _free_port() for d in delays}
        our_port = _free_port()
        env = {**os.environ, "CONSTELLATION_DATA_DIR": str(Path(tmp) / "data"), KEY_VAR: "sk-bench"}
        env.pop("CONSTELLATION_DB_URL", None)
        key = _register(Path(tmp) / "data", stubs)
        for delay, port in stubs.items():
            cmd = [sys.executable, str(STUB), "--port", str(port), "--delay-ms", str(delay)]
            stack.enter_context(
                _process(cmd, env, f"http://127.0.0.1:{port}/", Path(tmp) / f"stub{delay}.log")
            )
        ours = [*CLI, "serve", "--port", str(our_port), "--log-level", "warning"]
        stack.enter_context(
            _process(ours, env, f"http://127.0.0.1:{our_port}/readyz", Path(tmp) / "server.log")
        )
        yield stubs, our_port, key


def _requests(port: int, key: str | None, n: int, model: str = "stub-1") -> list[bytes]:
    headers = {"Authorization": f"Bearer {key or 'sk-bench'}"}
    return [encode_post(f"127.0.0.1:{port}", "/v1/chat/completions", headers, {**BODY, "model": model})] * n


async def _latencies(up: int, ours: int, key: str, n: int) -> tuple[list[float], list[float]]:
    """Milliseconds per request, one client, alternating direct and through us."""
    conns = [await asyncio.open_connection("127.0.0.1", p) for p in (up, ours)]
    reqs = [_requests(up, None, 1)[0], _requests(ours, key, 1, "stub-0")[0]]
    out: tuple[list[float], list[float]] = ([], [])
    try:
        for i in range(n + 20):
            for side in (0, 1):
                reader, writer = conns[side]
                t0 = time.perf_counter()
                writer.write(reqs[side])
                status, body = await _read_response(reader)
                if status != 200:
                    raise HttpError(f"answered {status}: {body[:300]!r}")
                if i >= 20:  # the first ones warm caches and connections
                    out[side].append((time.perf_counter() - t0) * 1000)
    finally:
        for _, writer in conns:
            writer.close()
    return out


def _pct(xs: list[float], q: float) -> float:
    return statistics.quantiles(xs, n=100, method="inclusive")[int(q) - 1] if len(xs) > 1 else xs[0]


def _throughput(up: int, ours: int, key: str, model: str, n: int) -> tuple[float, float]:
    asyncio.run(run_load("127.0.0.1", ours, _requests(ours, key, CLIENTS * 2, model), CLIENTS))  # warm-up
    direct = asyncio.run(run_load("127.0.0.1", up, _requests(up, None, n), CLIENTS))
    proxied = asyncio.run(run_load("127.0.0.1", ours, _requests(ours, key, n, model), CLIENTS))
    return direct, proxied


def main(tiny: bool = False) -> None:
    n_lat, n_zero, n_slow = (100, 300, 256) if tiny else (2000, 6000, 6400)
    rows: list[tuple[str, str, str, str]] = []
    with _servers((0, 100, 500)) as (stubs, ours, key):
        direct, proxied = asyncio.run(_latencies(stubs[0], ours, key, n_lat))
        for q in (50, 99):
            d, p = _pct(direct, q), _pct(proxied, q)
            target = f"(target <= {ADDED_P50_TARGET_MS:g} ms)" if q == 50 else ""
            rows.append(
                (f"latency p{q}, 1 client", f"{d:.2f} ms", f"{p:.2f} ms", f"+{p - d:.2f} ms {target}")
            )
        for delay, n in ((0, n_zero), (100, n_slow), (500, n_slow // 4)):
            d_rps, p_rps = _throughput(stubs[delay], ours, key, f"stub-{delay}", n)
            ratio = f"{p_rps / d_rps:.2f}x" + (f" (target >= {THROUGHPUT_TARGET:g}x)" if delay else "")
            name = f"throughput, {CLIENTS} concurrent, upstream {delay} ms"
            rows.append((name, f"{d_rps:,.0f}/s", f"{p_rps:,.0f}/s", ratio))
    widths = [
        max(len(r[i]) for r in [("", "direct", "through us", "added / ratio"), *rows]) for i in range(4)
    ]
    for r in [("", "direct", "through us", "added / ratio"), *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))


if __name__ == "__main__":
    main(tiny="--tiny" in sys.argv)
