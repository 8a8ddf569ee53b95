"""Serving benchmark (item 3): 64 concurrent clients send one-sentence `/v1/embeddings` requests
to the real `constellation serve`, against in-process `SentenceTransformer.encode` and infinity-emb.

infinity-emb runs from its own venv (`.venv-peers/`, `make bench-peers`) so it cannot disturb ours.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from sentence_transformers import SentenceTransformer

from _loadgen import HttpError, encode_post, run_load
from constellation.config import Settings
from constellation.platform import Platform
from constellation.registry import contributors as contrib_repo
from constellation.registry import service
from constellation.registry import tenants as tenant_repo

ROOT = Path(__file__).resolve().parents[1]
INFINITY = ROOT / ".venv-peers" / "bin" / "infinity_emb"
CLI = [sys.executable, "-m", "constellation.cli"]
CLIENTS = 64
# Rounds per side, each side keeping its best: with 3, ours over in-process encode read 0.79 to
# 0.88 across full runs on this shared 2-core host, as both sides' best rounds drifted.
ROUNDS = 5


Row = tuple[str, float, str]


def sentences(n: int) -> list[str]:
    """n distinct one-sentence inputs of 8 to 20 words."""
    rng = random.Random(3)
    words = ["the", "a", "model", "serves", "many", "small", "adapters", "on", "one", "shared", "base",
             "quickly", "under", "load", "with", "care"]  # fmt: skip
    return [" ".join(rng.choice(words) for _ in range(rng.randint(8, 20))) + f" {i}." for i in range(n)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout_s:.0f} s: {log.read_text()[-2000:]}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def _fire(url: str, headers: dict[str, str], model: str, texts: list[str]) -> float:
    """Requests per second: CLIENTS keep-alive connections, each sending one sentence per request
    in turn, from the lean load generator (so the client takes little of the shared cores)."""
    u = httpx.URL(url)
    host, port = u.host, u.port or 80

    def post(text: str) -> bytes:
        return encode_post(f"{host}:{port}", u.path, headers, {"model": model, "input": text})

    try:
        # One request alone first (the model loads and caches fill), then a warm-up round.
        await run_load(host, port, [post(texts[0])], 1)
        await run_load(host, port, [post(t) for t in texts[:CLIENTS]], CLIENTS)
        return await run_load(host, port, [post(t) for t in texts], CLIENTS)
    except HttpError as exc:
        raise RuntimeError(f"{url} {exc}") from None


def st_throughput(st: SentenceTransformer, texts: list[str]) -> float:
    """In-process sentence-transformers at batch 64: sentences per second."""
    st.encode(texts[:64], batch_size=64)
    start = time.perf_counter()
    st.encode(texts, batch_size=64)
    return len(texts) / (time.perf_counter() - start)


def _register(data_dir: Path, model_dir: Path) -> str:
    """MiniLM, its author and a tenant key, through the service functions the CLI uses (in
    process: a CLI call per step would spend most of the tiny run importing)."""
    platform = Platform(Settings(data_dir=data_dir, db_url=None)).open()
    try:
        with platform.db.session() as s:
            tenant_repo.add_tenant(s, id="bench", name="bench")
            contrib_repo.add_contributor(s, id="sbert", name="SBERT", kind="organisation")
            service.register_base(
                s, platform.store, src=model_dir, name="minilm", task="embedding", author="sbert",
                licence="apache-2.0", labels=None, visibility="public", owner_tenant=None,
            )  # fmt: skip
            return tenant_repo.create_key(s, tenant_id="bench", scopes=["inference"], name="bench").secret
    finally:
        platform.close()


@contextmanager
def our_server(model_dir: Path) -> Iterator[Callable[[list[str]], float]]:
    """The real server in a subprocess, own data dir, MiniLM registered, one tenant key; yields
    a function that measures its requests per second on the given sentences."""
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        env = {**os.environ, "CONSTELLATION_DATA_DIR": str(data_dir)}
        env.pop("CONSTELLATION_DB_URL", None)
        key = _register(data_dir, model_dir)
        port, log = _free_port(), Path(tmp) / "server.log"
        cmd = [*CLI, "serve", "--port", str(port), "--log-level", "warning"]
        proc = subprocess.Popen(cmd, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)
        url, headers = f"http://127.0.0.1:{port}/v1/embeddings", {"Authorization": f"Bearer {key}"}
        try:
            _wait_ready(f"http://127.0.0.1:{port}/readyz", proc, log, 120)
            yield lambda texts: asyncio.run(_fire(url, headers, "minilm", texts))
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\nserver log:\n{log.read_text()[-3000:]}") from None
        finally:
            _stop(proc)


def infinity_throughput(model_dir: Path, texts: list[str], rounds: int) -> float:
    """infinity-emb v2 (torch engine, CPU) on the same model directory, bound to 127.0.0.1;
    its best of `rounds`, as ours."""
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "infinity.log"
        cmd = [str(INFINITY), "v2", "--model-id", str(model_dir), "--served-model-name", "minilm",
               "--engine", "torch", "--device", "cpu",
               "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
        env = {**os.environ, "INFINITY_ANONYMOUS_USAGE_STATS": "0", "DO_NOT_TRACK": "1"}
        proc = subprocess.Popen(cmd, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)
        try:
            _wait_ready(f"http://127.0.0.1:{port}/health", proc, log, 300)
            url = f"http://127.0.0.1:{port}/embeddings"
            return max(asyncio.run(_fire(url, {}, "minilm", texts)) for _ in range(rounds))
        finally:
            _stop(proc)


def bench_serving(model_dir: Path, tiny: bool) -> list[Row]:
    """(3) ours over in-process encode at batch 64, and ours over infinity-emb, same sentences.

    Ours and in-process encode alternate, ROUNDS times, and each keeps its best round: the
    cores are shared with whatever else the host runs, and drift then hits both sides alike."""
    texts = sentences(64 if tiny else 1024)
    st = SentenceTransformer(str(model_dir), device="cpu")
    theirs = ours = 0.0
    with our_server(model_dir) as measure:
        for _ in range(1 if tiny else ROUNDS):
            theirs = max(theirs, st_throughput(st, texts))
            ours = max(ours, measure(texts))
    rows: list[Row] = [
        ("(3) serving req/s, 64 clients: ours", ours, ""),
        ("(3) in-process SentenceTransformer.encode sent/s, batch 64", theirs, ""),
        ("(3) ours / in-process encode", ours / theirs, ">= 0.8"),
    ]
    if not INFINITY.exists():
        print("(3) infinity-emb skipped: no .venv-peers/bin/infinity_emb (install with make bench-peers)")
        return rows
    inf = infinity_throughput(model_dir, texts, 1 if tiny else ROUNDS)

    rows += [("(3) infinity-emb req/s, 64 clients", inf, ""), ("(3) ours / infinity-emb", ours / inf, "")]
    return rows
