"""In-process app fixtures: the real FastAPI app with its lifespan, driven by httpx through
ASGITransport, plus an admin key and an inference key for a second tenant."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from constellation.api.app import create_app
from constellation.api.state import state_of
from constellation.config import EngineLimits, Settings
from constellation.finetune.demo import DEMO_DIR, DemoBuilder, DemoOptions, smollm2_gguf
from constellation.platform import Platform
from constellation.registry import models, tenants
from constellation.testing.toy_lm import save_random_adapter, save_random_lm


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Api:
    app: FastAPI
    client: httpx.AsyncClient
    platform: Platform
    admin: dict[str, str]

    async def register(
        self,
        path: Path,
        *,
        name: str,
        task: str = "embedding",
        base: str | None = None,
        license: str = "apache-2.0",
        author: str = "sbert",
        **extra: object,
    ) -> httpx.Response:
        """Register a base (or, with `base=`, an adapter) through the admin API, author included."""
        await self.client.post(
            "/api/contributors",
            headers=self.admin,
            json={"id": author, "name": author, "kind": "organisation"},
        )
        body = {"name": name, "path": str(path), "author": author, "license": license, **extra}
        if base is None:
            return await self.client.post("/api/models", headers=self.admin, json={**body, "task": task})
        return await self.client.post("/api/adapters", headers=self.admin, json={**body, "base": base})

    def key(self, tenant: str, *scopes: str, declared_use: str = "commercial") -> dict[str, str]:
        """Headers with a fresh key for `tenant` (created if missing)."""
        with self.platform.db.session() as s:
            if s.get(tenants.Tenant, tenant) is None:
                tenants.add_tenant(s, id=tenant, name=tenant, declared_use=declared_use)
            new = tenants.create_key(s, tenant_id=tenant, scopes=list(scopes) or ["inference"])
        return {"Authorization": f"Bearer {new.secret}"}


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[Api]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as client:
            platform: Platform = state_of(app).platform
            a = Api(app=app, client=client, platform=platform, admin={})
            a.admin = a.key("ops", "admin")
            yield a


@pytest.fixture(scope="module")
def lm_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("lm")
    base = save_random_lm(root / "tiny-llama", "llama", seed=3)
    return base, save_random_adapter(base, root / "tiny-llama-pirate", rank=4, seed=5)


@pytest.fixture
async def served(api: Api, lm_dirs: tuple[Path, Path], minilm_path: Path) -> Api:
    base, adapter = lm_dirs
    h = api.admin
    await api.client.post(
        "/api/contributors", headers=h, json={"id": "lab", "name": "Lab", "kind": "organisation"}
    )
    for body in (
        {
            "name": "tiny-llama",
            "path": str(base),
            "task": "causal-lm",
            "author": "lab",
            "license": "apache-2.0",
        },
        {
            "name": "minilm",
            "path": str(minilm_path),
            "task": "embedding",
            "author": "lab",
            "license": "apache-2.0",
        },
    ):
        assert (await api.client.post("/api/models", headers=h, json=body)).status_code == 201
    r = await api.client.post(
        "/api/adapters",
        headers=h,
        json={
            "name": "pirate",
            "path": str(adapter),
            "base": "tiny-llama",
            "author": "lab",
            "license": "mit",
        },
    )
    assert r.status_code == 201, r.text
    return api


# --- The demo's real chat model (SmolLM2-135M-Instruct and its chat adapters) -----------------
# The built demo (the GGUF import and the adapters' training: about five minutes on 2 cores) is
# cached between test runs, as a model hub's cache would be, in `$CONSTELLATION_TEST_CACHE`
# (default `~/.cache/constellation-tests`), keyed by the GGUF, the demo's manifest, its chat data
# and the training options, so later runs -- from any clone on the machine -- and every module
# that asks for `smollm2_demo` reuse one build. Delete the folder to rebuild from scratch.

SMOLLM2_ADAPTERS = ("pirate-v1", "support-reply-v1", "haiku-v1")
# Reduced training for tests: the first examples of each chat set, three epochs.
SMOLLM2_TEST_DEMO = DemoOptions(max_examples=32, epochs=3)
ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Demo:
    data: Path
    keys: dict[str, str]
    dirs: dict[str, Path]  # model name -> its verified artifact directory

    def settings(self) -> Settings:
        return demo_settings(self.data)


def demo_settings(data: Path) -> Settings:
    # A KV cache of 128 MiB holds every sequence these tests batch (1 GiB by default).
    engine = EngineLimits(kv_cache_bytes=128 * 1024**2)
    return Settings(data_dir=data, db_url=f"sqlite:///{data / 'constellation.db'}", engine=engine)


def build_smollm2_demo(data: Path) -> None:
    """The demo at the tests' size into `data` (run in a child process by the fixture)."""
    platform = Platform(demo_settings(data)).open()
    try:
        DemoBuilder(platform, options=SMOLLM2_TEST_DEMO, say=lambda _m: None).build()
    finally:
        platform.close()


def _smollm2_key() -> str:
    h = hashlib.sha256()
    h.update(smollm2_gguf().stat().st_size.to_bytes(8, "little"))
    for path in [DEMO_DIR / "demo.yaml", *sorted((DEMO_DIR / "chat").glob("*.jsonl"))]:
        h.update(path.read_bytes())
    h.update(repr(SMOLLM2_TEST_DEMO).encode())
    return h.hexdigest()[:16]


@pytest.fixture(scope="module")
def smollm2_demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    """A private copy of the cached SmolLM2 demo (built on first use)."""
    root = Path(os.environ.get("CONSTELLATION_TEST_CACHE") or Path.home() / ".cache" / "constellation-tests")
    cache = root / f"smollm2-demo-{_smollm2_key()}"
    cache.mkdir(parents=True, exist_ok=True)
    # Idempotent: after the first run it imports and trains nothing. In a child process, so that
    # the gigabytes training takes go back to the system rather than stay in this one's heap.
    code = "import sys; from pathlib import Path; from tests.integration.conftest import build_smollm2_demo; "
    code += "build_smollm2_demo(Path(sys.argv[1]))"
    subprocess.run([sys.executable, "-c", code, str(cache)], check=True, cwd=ROOT)
    data = tmp_path_factory.mktemp("smollm2") / "data"
    shutil.copytree(cache, data)
    platform = Platform(demo_settings(data)).open()
    try:
        with platform.db.session() as s:
            dirs = {
                name: platform.store.open(models.get_model(s, name=name).artifact_digest)
                for name in ("smollm2", *SMOLLM2_ADAPTERS)
            }
    finally:
        platform.close()
    yield Demo(data, json.loads((data / "demo-keys.json").read_text()), dirs)
