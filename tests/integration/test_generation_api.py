"""/v1/completions and /v1/chat/completions in-process on a tiny random Llama with a LoRA
adapter: OpenAI shapes, streaming equal to non-streaming, usage chunks, and bad input."""

from __future__ import annotations

import json

import pytest
from tests.integration.conftest import Api

pytestmark = pytest.mark.anyio


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    return sqlite_url


def _events(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            out.append(json.loads(line[6:]))
    assert text.rstrip().endswith("data: [DONE]")
    return out


async def test_chat_stream_equals_non_stream_with_exact_usage(served: Api) -> None:
    h = served.key("acme")
    req = {
        "model": "pirate",
        "messages": [{"role": "user", "content": "hello there"}],
        "max_tokens": 12,
        "temperature": 0,
    }
    full = await served.client.post("/v1/chat/completions", headers=h, json=req)
    assert full.status_code == 200, full.text
    body = full.json()
    assert body["object"] == "chat.completion"
    answer = body["choices"][0]["message"]["content"]
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert 0 < usage["completion_tokens"] <= 12
    assert body["constellation"]["compute_ns"] > 0
    streamed = await served.client.post(
        "/v1/chat/completions",
        headers=h,
        json={**req, "stream": True, "stream_options": {"include_usage": True}},
    )
    events = _events(streamed.text)
    assert all(e["object"] == "chat.completion.chunk" for e in events)
    text = "".join(c["delta"].get("content", "") for e in events for c in e["choices"])
    assert text == answer
    assert events[-1]["usage"] == usage and events[-1]["choices"] == []
    assert events[-2]["choices"][0]["finish_reason"] in ("stop", "length")


async def test_adapter_changes_the_answer_and_completions_work(served: Api) -> None:
    h = served.key("acme")
    outs = []
    for model in ("tiny-llama", "pirate"):
        r = await served.client.post(
            "/v1/completions",
            headers=h,
            json={"model": model, "prompt": "the cat", "max_tokens": 8, "temperature": 0},
        )
        assert r.status_code == 200, r.text
        assert r.json()["object"] == "text_completion"
        outs.append(r.json()["choices"][0]["text"])
    assert outs[0] != outs[1]


async def test_seeded_sampling_is_reproducible(served: Api) -> None:
    h = served.key("acme")
    req = {"model": "pirate", "prompt": "once upon", "max_tokens": 10, "temperature": 1.0, "seed": 42}
    a = (await served.client.post("/v1/completions", headers=h, json=req)).json()["choices"][0]["text"]
    b = (await served.client.post("/v1/completions", headers=h, json=req)).json()["choices"][0]["text"]
    assert a == b


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        ({"messages": [{"role": "user", "content": "hi"}], "n": 2}, "n > 1"),
        ({"messages": []}, "empty"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "role"),
        ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**6}, "max_tokens"),
        ({"messages": [{"role": "user", "content": "word " * 5000}]}, "tokens"),
        ({"messages": [{"role": "user", "content": "hi"}], "temperature": 7}, "temperature"),
    ],
)
async def test_bad_chat_requests_are_400(served: Api, payload: dict, needle: str) -> None:
    r = await served.client.post(
        "/v1/chat/completions", headers=served.key("acme"), json={"model": "pirate", **payload}
    )
    assert r.status_code == 400, r.text
    assert needle in r.json()["error"]["message"]


async def test_embedding_model_on_chat_names_the_right_endpoint(served: Api) -> None:
    r = await served.client.post(
        "/v1/chat/completions",
        headers=served.key("acme"),
        json={"model": "minilm", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert r.status_code == 400 and "/v1/embeddings" in r.json()["error"]["message"]
