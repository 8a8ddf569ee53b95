"""The real server under uvicorn: the official `openai` client lists models, and raw httpx
sees OpenAI-shaped errors for 401, 404 and 400."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest
from tests.e2e.conftest import Server


def test_openai_client_lists_models(server: Server, minilm_path: Path) -> None:
    server.cli("contributors", "add", "sbert", "--name", "sentence-transformers")
    server.cli(
        "models", "add", str(minilm_path), "--name", "minilm", "--task", "embedding", "--author", "sbert"
    )
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=server.key)
    ids = [m.id for m in client.models.list()]
    assert "minilm" in ids
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_error_shapes_401_404_400(server: Server) -> None:
    r = httpx.get(f"{server.url}/v1/models")
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    auth = {"Authorization": f"Bearer {server.key}"}
    r = httpx.get(f"{server.url}/v1/models/nope", headers=auth)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    admin = {"Authorization": f"Bearer {server.admin_key}"}
    r = httpx.post(f"{server.url}/api/tenants", headers=admin, json={"id": "Bad Id", "name": "x"})
    assert r.status_code == 400 and "lowercase" in r.json()["error"]["message"]


def test_unreachable_database_is_one_line_and_nonzero(server: Server) -> None:
    import subprocess

    from tests.e2e.conftest import CLI

    env = {**server.env, "CONSTELLATION_DB_URL": "postgresql+psycopg://postgres@127.0.0.1:1/none"}
    out = subprocess.run([*CLI, "serve"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "cannot reach the database" in out.stderr
    assert "Traceback" not in out.stderr + out.stdout
