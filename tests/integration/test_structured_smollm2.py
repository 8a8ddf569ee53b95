"""Structured outputs with the demo's real chat model (SmolLM2-135M-Instruct and its adapters):

- every answer of several prompts × schemas (nested objects, enums, arrays, bounded numbers)
  validates against its schema, alone and batched with free-text requests and adapters, and
  batching does not change a constrained answer;
- the official `openai` client's `chat.completions.parse` with a pydantic model, and
  LangChain's `ChatOpenAI(...).with_structured_output(Model)` (JSON schema and function
  calling), work end to end against the in-process app.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

import httpx
import jsonschema
import pytest
from pydantic import BaseModel, Field
from tests.integration.conftest import Demo

from constellation.api.app import create_app

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
MAX_TOKENS = 64

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 32},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "address": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 24},
                "country": {"type": "string", "maxLength": 24},
            },
            "required": ["city", "country"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "age", "address"],
    "additionalProperties": False,
}
SENTIMENT = {
    "type": "object",
    "properties": {
        "label": {"enum": ["positive", "negative", "neutral"]},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
    },
    "required": ["label", "confidence"],
    "additionalProperties": False,
}
SHOPPING = {
    "type": "object",
    "properties": {
        "items": {
            "type": "array",
            "minItems": 1,
            "maxItems": 3,
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "maxLength": 20},
                    "qty": {"type": "integer", "minimum": 1, "maximum": 12},
                },
                "required": ["name", "qty"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["items"],
    "additionalProperties": False,
}
SCHEMAS = {"person": PERSON, "sentiment": SENTIMENT, "shopping": SHOPPING}
PROMPTS = {
    "person": [
        "Describe Maria, a 31 year old nurse from Lisbon, as JSON.",
        "Invent a person and give their details as JSON.",
    ],
    "sentiment": [
        "Classify the sentiment of: 'I love this phone!'",
        "Classify the sentiment of: 'The food was cold.'",
    ],
    "shopping": [
        "I need eggs, two loaves of bread and milk. List my shopping.",
        "Make a shopping list for pancakes.",
    ],
}
CASES = [(name, prompt) for name, prompts in PROMPTS.items() for prompt in prompts]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@asynccontextmanager
async def _client(demo: Demo) -> AsyncIterator[httpx.AsyncClient]:
    """The in-process app; the non-commercial demo tenant may use every adapter."""
    app = create_app(demo.settings())
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        headers = {"Authorization": f"Bearer {demo.keys['demo-lab']}"}
        async with httpx.AsyncClient(
            transport=transport, base_url="http://t", headers=headers, timeout=300
        ) as c:
            yield c


def _body(model: str, prompt: str, schema: dict[str, Any] | None, seed: int) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": MAX_TOKENS,
        "temperature": 0.7,
        "seed": seed,
    }
    if schema is not None:
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}
    return body


async def _ask(c: httpx.AsyncClient, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """All at once, so the engine batches them."""
    rs = await asyncio.gather(*(c.post("/v1/chat/completions", json=b) for b in bodies))
    for r in rs:
        assert r.status_code == 200, r.text
    return [r.json()["choices"][0] for r in rs]


def _valid(choice: dict[str, Any], schema: dict[str, Any]) -> None:
    assert choice["finish_reason"] == "stop", choice
    jsonschema.validate(json.loads(choice["message"]["content"]), schema)


async def test_every_answer_validates_alone_and_batched_with_free_text_and_adapters(
    smollm2_demo: Demo,
) -> None:
    models = ["smollm2", "pirate-v1", "support-reply-v1"]
    constrained = [_body(models[i % 3], p, SCHEMAS[name], seed=i) for i, (name, p) in enumerate(CASES)]
    free = [
        _body(m, "Tell me a short story about a boat.", None, seed=100 + i) for i, m in enumerate(models[1:])
    ]
    async with _client(smollm2_demo) as c:
        alone = await _ask(c, constrained[1:2])  # a constrained request on an adapter, by itself
        mixed = await _ask(c, constrained + free)
    for (name, _), choice in zip(CASES, mixed, strict=False):
        _valid(choice, SCHEMAS[name])
    assert mixed[1:2] == alone, "a seeded constrained answer changed with its batch"
    assert all(x["message"]["content"] for x in mixed[len(CASES) :])


class City(BaseModel):
    name: str = Field(max_length=30)
    country: str = Field(max_length=30)
    population_millions: int = Field(ge=0, le=40)
    rating: Literal["great", "good", "fine"]


QUESTION = "Tell me about Paris as a city."


async def test_openai_client_parse_with_a_pydantic_model(smollm2_demo: Demo) -> None:
    import openai

    app = create_app(smollm2_demo.settings())
    async with app.router.lifespan_context(app):
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t", timeout=300)
        client = openai.AsyncOpenAI(
            api_key=smollm2_demo.keys["demo-lab"], base_url="http://t/v1", http_client=http
        )
        done = await client.chat.completions.parse(
            model="smollm2",
            messages=[{"role": "user", "content": QUESTION}],
            response_format=City,
            max_tokens=MAX_TOKENS,
            temperature=0,
        )
        await http.aclose()
    city = done.choices[0].message.parsed
    assert isinstance(city, City) and done.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
async def test_langchain_with_structured_output(smollm2_demo: Demo, method: str) -> None:
    from langchain_openai import ChatOpenAI

    app = create_app(smollm2_demo.settings())
    async with app.router.lifespan_context(app):
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t", timeout=300)
        llm = ChatOpenAI(
            model="smollm2",
            api_key=smollm2_demo.keys["demo-lab"],  # type: ignore[arg-type]
            base_url="http://t/v1",
            http_async_client=http,
            max_tokens=MAX_TOKENS,  # type: ignore[call-arg]
            temperature=0,
        )
        # strict: closed objects, as OpenAI requires; an open one lets the model add properties
        # until max_tokens (JSON Schema allows them), and the cut-off call does not parse.
        structured = llm.with_structured_output(City, method=method, strict=True)  # type: ignore[arg-type]
        city = await structured.ainvoke(QUESTION)
        await http.aclose()
    assert isinstance(city, City)
