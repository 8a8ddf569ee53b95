"""The fine-tuning job API on a tiny random BERT: upload JSONL, poll to success, classify with
the new private adapter; bad data is a 400 with line numbers and registers nothing; cancel works."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import httpx
import pytest
import torch
from tests.integration.conftest import Api
from transformers import BertConfig, BertModel

pytestmark = pytest.mark.anyio
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'test.db'}"


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory, minilm_path: Path) -> Path:
    path = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    config = BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(config, add_pooling_layer=False).save_pretrained(path)
    for name in TOKENIZER_FILES:
        shutil.copy(minilm_path / name, path / name)
    return path


def jsonl(n: int) -> str:
    rows = [{"text": f"refund my order number {i} please", "label": "refund"} for i in range(n)]
    rows += [{"text": f"the app crashes on screen {i}", "label": "bug"} for i in range(n)]
    return "".join(json.dumps(r) + "\n" for r in rows)


async def _setup(api: Api, tiny_bert: Path) -> dict[str, str]:
    r = await api.register(tiny_bert, name="tiny", author="lab")
    assert r.status_code == 201, r.text
    return api.key("acme")


async def _start(api: Api, h: dict[str, str], name: str, content: str, **over: object) -> httpx.Response:
    """POST a classification job on the tiny base with one uploaded file."""
    body = {
        "base": "tiny",
        "task": "classification",
        "name": name,
        "license": "mit",
        "data": [{"filename": f"{name}.jsonl", "content": content}],
        **over,
    }
    return await api.client.post("/api/finetunes", headers=h, json=body)


async def _wait(api: Api, h: dict[str, str], job_id: str) -> dict:
    for _ in range(600):
        job = (await api.client.get(f"/api/finetunes/{job_id}", headers=h)).json()
        if job["status"] not in ("queued", "running"):
            return job
        await asyncio.sleep(0.2)
    raise AssertionError("job did not finish")


async def test_finetune_job_to_private_adapter(api: Api, tiny_bert: Path) -> None:
    h = await _setup(api, tiny_bert)
    r = await _start(api, h, "intent", jsonl(20), license="cc-by-4.0", epochs=2)
    assert r.status_code == 202, r.text
    job = await _wait(api, h, r.json()["id"])
    assert job["status"] == "succeeded", job
    assert job["result"]["labels"] == ["bug", "refund"] and "accuracy" in str(job["result"]["metrics"])
    model = (await api.client.get("/api/models/intent", headers=api.admin)).json()
    assert model["visibility"] == "private" and model["owner_tenant"] == "acme"
    assert model["lineage"]["datasets"][0]["weight"] == 40
    out = await api.client.post(
        "/v1/classify", headers=h, json={"model": "intent", "input": "refund order 3"}
    )
    assert out.status_code == 200 and out.json()["data"][0]["label"] in ("bug", "refund")
    other = await api.client.post(
        "/v1/classify", headers=api.key("other"), json={"model": "intent", "input": "x"}
    )
    assert other.status_code == 404


async def test_malformed_data_is_400_with_line_numbers_and_registers_nothing(
    api: Api, tiny_bert: Path
) -> None:
    h = await _setup(api, tiny_bert)
    bad = jsonl(10) + "{not json\n" + json.dumps({"text": "no label"}) + "\n"
    r = await _start(api, h, "broken", bad)
    assert r.status_code == 400
    msg = r.json()["error"]["message"]
    assert "21" in msg and "22" in msg
    assert (await api.client.get("/api/datasets", headers=api.admin)).json() == []
    assert (await api.client.get("/api/models/broken", headers=api.admin)).status_code == 404


async def test_cancel_registers_nothing(api: Api, tiny_bert: Path) -> None:
    h = await _setup(api, tiny_bert)
    r = await _start(api, h, "slow", jsonl(60), epochs=50)
    job_id = r.json()["id"]
    await api.client.post(f"/api/finetunes/{job_id}/cancel", headers=h)
    job = await _wait(api, h, job_id)
    assert job["status"] == "cancelled"
    assert (await api.client.get("/api/models/slow", headers=api.admin)).status_code == 404
    assert (await api.client.get("/api/datasets", headers=api.admin)).json() == []


async def test_public_adapter_needs_admin(api: Api, tiny_bert: Path) -> None:
    h = await _setup(api, tiny_bert)
    r = await _start(api, h, "pub", jsonl(10), visibility="public")
    assert r.status_code == 403
