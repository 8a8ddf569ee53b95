"""/v1/embeddings and /v1/classify in-process: results equal sentence-transformers, OpenAI's
shapes (float and base64), and the bad inputs the encoder issue lists."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest
from tests.integration.conftest import Api

from constellation.api.state import state_of

pytestmark = pytest.mark.anyio


@pytest.fixture
def db_url(sqlite_url: str) -> str:  # the serving path is database-agnostic; SQLite keeps it quick
    return sqlite_url


@pytest.fixture
async def served(api: Api, minilm_path: Path) -> Api:
    r = await api.register(minilm_path, name="minilm")
    assert r.status_code == 201, r.text
    return api


@pytest.fixture(scope="module")
def st_model(minilm_path: Path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_path), device="cpu")


async def test_embeddings_match_sentence_transformers(served: Api, st_model) -> None:
    texts = ["The cat sat on the mat.", "Constellation serves many models.", "short"]
    r = await served.client.post(
        "/v1/embeddings", headers=served.key("acme"), json={"model": "minilm", "input": texts}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    got = np.array([d["embedding"] for d in body["data"]], dtype=np.float32)
    want = st_model.encode(texts, convert_to_numpy=True)
    assert np.abs(got - want).max() <= 1e-5
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 0
    ext = body["constellation"]
    assert ext["request_id"].startswith("req_") and ext["compute_ns"] > 0


async def test_base64_encoding_decodes_to_the_same_vector(served: Api) -> None:
    h = served.key("acme")
    f = (
        await served.client.post("/v1/embeddings", headers=h, json={"model": "minilm", "input": "hello"})
    ).json()
    b = (
        await served.client.post(
            "/v1/embeddings",
            headers=h,
            json={"model": "minilm", "input": "hello", "encoding_format": "base64"},
        )
    ).json()
    decoded = np.frombuffer(base64.b64decode(b["data"][0]["embedding"]), dtype="<f4")
    assert np.array_equal(decoded, np.array(f["data"][0]["embedding"], dtype=np.float32))


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        ({"input": []}, "empty"),
        ({"input": ["ok", "  "]}, "empty strings"),
        ({"input": "x", "dimensions": 8}, "dimensions"),
    ],
)
async def test_bad_inputs_are_400(served: Api, payload: dict, needle: str) -> None:
    r = await served.client.post(
        "/v1/embeddings", headers=served.key("acme"), json={"model": "minilm", **payload}
    )
    assert r.status_code == 400, r.text
    assert needle in r.json()["error"]["message"]


async def test_too_long_input_400_with_token_count_unless_truncate(served: Api) -> None:
    long_text = "word " * 600
    h = served.key("acme")
    r = await served.client.post("/v1/embeddings", headers=h, json={"model": "minilm", "input": long_text})
    assert r.status_code == 400
    msg = r.json()["error"]["message"]
    assert "truncate" in msg and any(ch.isdigit() for ch in msg)
    r = await served.client.post(
        "/v1/embeddings", headers=h, json={"model": "minilm", "input": long_text, "truncate": True}
    )
    assert r.status_code == 200


async def test_too_many_items_400(served: Api) -> None:
    limit = state_of(served.app).settings.engine.max_items_per_request
    r = await served.client.post(
        "/v1/embeddings", headers=served.key("acme"), json={"model": "minilm", "input": ["a"] * (limit + 1)}
    )
    assert r.status_code == 400 and str(limit) in r.json()["error"]["message"]


async def test_wrong_task_names_the_right_endpoint(served: Api) -> None:
    r = await served.client.post(
        "/v1/classify", headers=served.key("acme"), json={"model": "minilm", "input": "x"}
    )
    assert r.status_code == 400 and "/v1/embeddings" in r.json()["error"]["message"]


async def test_unknown_model_404(served: Api) -> None:
    r = await served.client.post(
        "/v1/embeddings", headers=served.key("acme"), json={"model": "nope", "input": "x"}
    )
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


async def test_a_large_answer_rendered_off_the_event_loop_is_the_same_and_replays(served: Api) -> None:
    """Past RENDER_INLINE_ROWS vectors the answer is rendered in a thread, row by row: the same
    JSON as inline, and an idempotent retry replays it exactly."""
    from constellation.api.routes.encoders import RENDER_INLINE_ROWS

    h = {**served.key("acme"), "Idempotency-Key": "big-1"}
    texts = [f"sentence number {i}" for i in range(RENDER_INLINE_ROWS + 36)]
    body = {"model": "minilm", "input": texts}
    first = await served.client.post("/v1/embeddings", headers=h, json=body)
    assert first.status_code == 200, first.text
    data = first.json()["data"]
    assert [d["index"] for d in data] == list(range(len(texts)))
    small = await served.client.post(
        "/v1/embeddings", headers=served.key("acme"), json={"model": "minilm", "input": texts[:3]}
    )
    for a, b in zip(small.json()["data"], data[:3], strict=True):
        assert np.allclose(a["embedding"], b["embedding"], atol=1e-5)  # inline and threaded agree
    again = await served.client.post("/v1/embeddings", headers=h, json=body)
    assert again.json()["data"] == data
    assert again.json()["constellation"]["request_id"] == first.json()["constellation"]["request_id"]
