"""OpenAI fields this server does not implement are refused by name instead of silently ignored
(unless they carry their neutral value), and text that is not valid Unicode is a 400."""

from __future__ import annotations

import pytest
from tests.integration.conftest import Api

pytestmark = pytest.mark.anyio

CHAT = {"model": "pirate", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    return sqlite_url


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("logprobs", True),
        ("top_logprobs", 3),
        ("presence_penalty", 0.5),
        ("frequency_penalty", -1),
        ("logit_bias", {"50256": -100}),
        ("not_an_openai_field", 1),
    ],
)
async def test_unimplemented_fields_are_refused_by_name(served: Api, field: str, value: object) -> None:
    r = await served.client.post(
        "/v1/chat/completions", headers=served.key("acme"), json={**CHAT, field: value}
    )
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == field and field in err["message"] and err["code"] == "unsupported_field"


async def test_neutral_values_of_those_fields_are_accepted(served: Api) -> None:
    neutral = {"response_format": {"type": "text"}, "presence_penalty": 0, "logprobs": False, "tools": []}
    r = await served.client.post("/v1/chat/completions", headers=served.key("acme"), json={**CHAT, **neutral})
    assert r.status_code == 200, r.text


async def test_embeddings_refuse_unknown_fields(served: Api) -> None:
    r = await served.client.post(
        "/v1/embeddings", headers=served.key("acme"), json={"model": "minilm", "input": "x", "colour": "red"}
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "colour"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/embeddings", b'{"model": "minilm", "input": ["ok", "bad \\ud800 text"]}'),
        (
            "/v1/chat/completions",
            b'{"model": "pirate", "messages": [{"role": "user", "content": "\\udfff"}]}',
        ),
        ("/v1/completions", b'{"model": "pirate", "prompt": "a\\ud83d", "max_tokens": 2}'),
    ],
)
async def test_a_lone_surrogate_is_a_400_naming_the_field(served: Api, path: str, body: bytes) -> None:
    headers = {**served.key("acme"), "content-type": "application/json"}
    r = await served.client.post(path, headers=headers, content=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_text" and "surrogate" in err["message"]
    assert err["param"].split("[")[0].split(".")[0] in ("input", "messages", "prompt")


async def test_a_paired_surrogate_escape_is_fine(served: Api) -> None:
    headers = {**served.key("acme"), "content-type": "application/json"}
    body = b'{"model": "minilm", "input": "rocket \\ud83d\\ude80"}'
    r = await served.client.post("/v1/embeddings", headers=headers, content=body)
    assert r.status_code == 200, r.text
