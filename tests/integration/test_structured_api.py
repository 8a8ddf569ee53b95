"""Structured outputs in-process on a tiny random Llama (whose free text is noise, so any valid
JSON comes from the constraint): response_format and tools on chat and completions, OpenAI's
tool_calls shape (also streamed), finish_reason "length" when max_tokens cuts a structure
short, and each bad input a 400 naming its field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from tests.integration.conftest import Api

from constellation.api.protocol.responses import ChatCompletion, ChatCompletionChunk
from constellation.api.state import state_of
from constellation.testing.toy_lm import save_random_adapter, save_random_lm

pytestmark = pytest.mark.anyio

SCHEMA = {
    "type": "object",
    "properties": {
        "label": {"enum": ["positive", "negative", "neutral"]},
        "score": {"type": "integer", "minimum": 0, "maximum": 9},
        "flags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 2},
    },
    "required": ["label", "score", "flags"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "the weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"enum": ["Paris", "Oslo"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 3},
            },
            "required": ["city", "days"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"enum": ["UTC", "CET"]}},
            "required": ["zone"],
            "additionalProperties": False,
        },
    },
}


@pytest.fixture(scope="module")
def lm_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny random Llama with a byte-level tokenizer, which can spell JSON."""
    root = tmp_path_factory.mktemp("lm")
    base = save_random_lm(root / "tiny-llama", "llama", seed=3, byte_level=True, ctx=1024)
    return base, save_random_adapter(base, root / "tiny-llama-pirate", rank=4, seed=5)


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'test.db'}"


def _chat(**extra: Any) -> dict[str, Any]:
    return {"model": "pirate", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 64, **extra}


def _fmt(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}}


def _events(text: str) -> list[dict[str, Any]]:
    return [
        json.loads(ln[6:]) for ln in text.splitlines() if ln.startswith("data: ") and ln != "data: [DONE]"
    ]


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_json_schema_answers_validate_on_chat_and_completions(served: Api, seed: int) -> None:
    h = served.key("acme")
    chat = await served.client.post(
        "/v1/chat/completions", headers=h, json=_chat(seed=seed, response_format=_fmt(SCHEMA))
    )
    assert chat.status_code == 200, chat.text
    choice = chat.json()["choices"][0]
    assert choice["finish_reason"] == "stop"
    jsonschema.validate(json.loads(choice["message"]["content"]), SCHEMA)
    body = {
        "model": "tiny-llama",
        "prompt": "x",
        "max_tokens": 64,
        "seed": seed,
        "response_format": _fmt(SCHEMA),
    }
    comp = await served.client.post("/v1/completions", headers=h, json=body)
    assert comp.status_code == 200, comp.text
    jsonschema.validate(json.loads(comp.json()["choices"][0]["text"]), SCHEMA)


async def test_json_object_is_an_object(served: Api) -> None:
    r = await served.client.post(
        "/v1/chat/completions",
        headers=served.key("acme"),
        json=_chat(max_tokens=100, temperature=0, response_format={"type": "json_object"}),
    )
    choice = r.json()["choices"][0]
    if choice["finish_reason"] == "stop":
        assert isinstance(json.loads(choice["message"]["content"]), dict)
    else:  # noise may fill a string to the end: still the start of an object
        assert choice["message"]["content"].startswith("{")


async def test_max_tokens_before_the_structure_closes_is_length_and_billed(served: Api) -> None:
    r = await served.client.post(
        "/v1/chat/completions",
        headers=served.key("acme"),
        json=_chat(max_tokens=3, response_format=_fmt(SCHEMA)),
    )
    body = r.json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 3 and body["constellation"]["price_nanos"] > 0


async def test_a_named_tool_choice_returns_its_call(served: Api) -> None:
    named = {"type": "function", "function": {"name": "get_weather"}}
    r = await served.client.post(
        "/v1/chat/completions",
        headers=served.key("acme"),
        json=_chat(tools=[WEATHER, TIME], tool_choice=named, seed=4),
    )
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert (
        call["type"] == "function"
        and call["id"].startswith("call_")
        and call["function"]["name"] == "get_weather"
    )
    jsonschema.validate(json.loads(call["function"]["arguments"]), WEATHER["function"]["parameters"])  # type: ignore[index]


@pytest.mark.parametrize("seed", [5, 6])
async def test_required_calls_one_of_the_tools(served: Api, seed: int) -> None:
    r = await served.client.post(
        "/v1/chat/completions",
        headers=served.key("acme"),
        json=_chat(tools=[WEATHER, TIME], tool_choice="required", seed=seed),
    )
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls", choice
    fn = choice["message"]["tool_calls"][0]["function"]
    tool = {"get_weather": WEATHER, "get_time": TIME}[fn["name"]]
    jsonschema.validate(json.loads(fn["arguments"]), tool["function"]["parameters"])  # type: ignore[index]


async def test_auto_answers_text_or_a_valid_call(served: Api) -> None:
    for seed in range(4):
        r = await served.client.post(
            "/v1/chat/completions",
            headers=served.key("acme"),
            json=_chat(tools=[WEATHER], seed=seed, max_tokens=16),
        )
        choice = r.json()["choices"][0]
        if choice["finish_reason"] == "tool_calls":
            fn = choice["message"]["tool_calls"][0]["function"]
            jsonschema.validate(json.loads(fn["arguments"]), WEATHER["function"]["parameters"])  # type: ignore[index]
        else:
            assert not choice["message"]["content"].startswith("{")


async def test_tool_choice_none_is_free_text(served: Api) -> None:
    r = await served.client.post(
        "/v1/chat/completions",
        headers=served.key("acme"),
        json=_chat(tools=[WEATHER], tool_choice="none", max_tokens=4),
    )
    assert r.status_code == 200 and "tool_calls" not in r.json()["choices"][0]["message"]


@pytest.mark.parametrize("choice", [{"type": "function", "function": {"name": "get_weather"}}, "required"])
async def test_streamed_tool_calls_add_up_to_the_non_streamed_call(served: Api, choice: Any) -> None:
    h = served.key("acme")
    req = _chat(tools=[WEATHER, TIME], tool_choice=choice, seed=9)
    body = (await served.client.post("/v1/chat/completions", headers=h, json=req)).json()
    ChatCompletion.model_validate(body)  # the documented shape (OpenAPI) holds for tool calls
    full = body["choices"][0]
    r = await served.client.post("/v1/chat/completions", headers=h, json={**req, "stream": True})
    events = _events(r.text)
    for e in events:
        ChatCompletionChunk.model_validate(e)
    deltas = [d for e in events for d in e["choices"][0]["delta"].get("tool_calls", [])]
    assert deltas[0]["id"].startswith("call_") and deltas[0]["type"] == "function"
    assert deltas[0]["function"]["name"] == full["message"]["tool_calls"][0]["function"]["name"]
    args = "".join(d["function"]["arguments"] for d in deltas)
    assert json.loads(args) == json.loads(full["message"]["tool_calls"][0]["function"]["arguments"])
    assert events[-1]["choices"][0]["finish_reason"] == "tool_calls"


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        (dict(response_format=_fmt({"type": "strin"})), "response_format.json_schema.schema"),
        (
            dict(response_format=_fmt({"properties": {"a": {"$ref": "#/$defs/nope"}}})),
            "response_format.json_schema.schema",
        ),
        (dict(response_format=_fmt({"enum": ["x" * 100] * 400})), "response_format.json_schema.schema"),
        (
            dict(response_format=_fmt({"type": "array", "minItems": 100_000})),
            "response_format.json_schema.schema",
        ),
        (dict(response_format={"type": "json_schema"}), "response_format"),
        (
            dict(tools=[{**WEATHER, "function": {"name": "f", "parameters": {"type": 3}}}]),
            "tools[0].function.parameters",
        ),
        (
            dict(tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "nope"}}),
            "tool_choice",
        ),
        (dict(tool_choice="required"), "tool_choice"),
        (dict(tools=[WEATHER, WEATHER]), "tools"),
    ],
)
async def test_bad_structure_is_a_400_naming_the_field(
    served: Api, extra: dict[str, Any], param: str
) -> None:
    r = await served.client.post("/v1/chat/completions", headers=served.key("acme"), json=_chat(**extra))
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param, r.text


async def test_grammars_are_compiled_once_per_schema(served: Api) -> None:
    h = served.key("acme")
    schema = {**SCHEMA, "title": "once"}
    for _ in range(3):
        r = await served.client.post(
            "/v1/chat/completions", headers=h, json=_chat(max_tokens=2, response_format=_fmt(schema))
        )
        assert r.status_code == 200
    (compiler,) = state_of(served.app).engines.decoder._grammars.values()
    assert compiler.misses == 1 and compiler.hits == 2


async def test_a_conversation_with_earlier_tool_calls_is_accepted(served: Api) -> None:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
    }
    messages = [
        {"role": "user", "content": "weather in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"function": {"name": "x", "arguments": "not json"}}],
        },
    ]
    body = {"model": "pirate", "messages": messages, "tools": [WEATHER], "max_tokens": 4}
    r = await served.client.post("/v1/chat/completions", headers=served.key("acme"), json=body)
    assert r.status_code == 200, r.text
