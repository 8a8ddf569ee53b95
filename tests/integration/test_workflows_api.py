"""Workflows end to end in-process: registered through /api/workflows, run on the tiny test
models (two LoRA classifiers on a tiny BERT, a tiny Llama with a chat adapter) through the same
pipeline as single requests: billed step by step plus the author's fee, licences checked first,
replayed under an Idempotency-Key, deterministic under load, streamed through `openai`."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from sqlalchemy import func, select
from tests.integration.conftest import Api

from constellation.api.state import state_of
from constellation.economy.tables import LedgerLeg, UsageEvent
from constellation.registry.workflow_tables import WorkflowRun, WorkflowRunStep
from constellation.testing.toy_lm import save_random_adapter, save_random_lm

pytestmark = pytest.mark.anyio


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    return sqlite_url


@pytest.fixture(scope="module")
def lm_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny random Llama with a byte-level tokenizer, which can spell JSON (extract steps)."""
    root = tmp_path_factory.mktemp("lm")
    base = save_random_lm(root / "tiny-llama", "llama", seed=3, byte_level=True, ctx=1024)
    return base, save_random_adapter(base, root / "tiny-llama-pirate", rank=4, seed=5)


def save_classifier(base: Path, out: Path, labels: list[str], seed: int) -> Path:
    """A LoRA classification adapter in PEFT format (random, so its labels are arbitrary)."""
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import save_file
    from transformers import AutoModel

    torch.manual_seed(seed)
    model = get_peft_model(
        AutoModel.from_pretrained(str(base)), LoraConfig(r=2, target_modules=["query", "value"])
    )
    model.save_pretrained(str(out))
    hidden = model.config.hidden_size
    save_file(
        {"weight": torch.randn(len(labels), hidden), "bias": torch.zeros(len(labels))},
        str(out / "classifier_head.safetensors"),
    )
    (out / "classifier_head.json").write_text(json.dumps({"labels": labels, "pooling": "base"}))
    return out


@pytest.fixture(scope="module")
def classifiers(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("classifiers")
    return {
        "intent": save_classifier(tiny_bert, root / "intent", ["billing", "other"], 1),
        "urgency": save_classifier(tiny_bert, root / "urgency", ["low", "high"], 2),
    }


TRIAGE = """
description: classify a ticket twice, then reply with the chat model the intent picks
inputs: {message: string}
terms: {per_run_nanos: 5000}
steps:
  - {name: intent, classify: {model: intent, input: "{{ inputs.message }}"}}
  - {name: urgency, classify: {model: urgency, input: "{{ inputs.message }}"}}
  - name: route
    switch: {on: steps.intent.label, cases: {billing: billing_reply}, default: general_reply}
  - name: billing_reply
    chat:
      model: pirate
      messages: [{role: user, content: "({{ steps.urgency.label }}) {{ inputs.message }}"}]
      max_tokens: 8
  - name: general_reply
    chat: {model: tiny-llama, messages: [{role: user, content: "{{ inputs.message }}"}], max_tokens: 8}
output: route
"""


@pytest.fixture
async def wf(served: Api, tiny_bert: Path, classifiers: dict[str, Path]) -> Api:
    h = served.admin
    r = await served.register(tiny_bert, name="tiny-bert", author="lab")
    assert r.status_code == 201, r.text
    for name, path in classifiers.items():
        r = await served.register(path, name=name, base="tiny-bert", author="lab")
        assert r.status_code == 201, r.text
    await served.client.post(
        "/api/contributors", headers=h, json={"id": "designer", "name": "D", "kind": "person"}
    )
    r = await served.client.post(
        "/api/workflows", headers=h, json={"name": "triage", "document": TRIAGE, "author": "designer"}
    )
    assert r.status_code == 201, r.text
    return served


async def run(api: Api, h: dict[str, str], inputs: dict[str, Any], **extra: Any) -> Any:
    return await api.client.post("/v1/workflows/triage/runs", headers=h, json={"inputs": inputs, **extra})


def legs_balance(api: Api) -> int:
    with api.platform.db.session() as s:
        return int(s.scalar(select(func.sum(LedgerLeg.amount_nanos))) or 0)


async def test_registered_workflow_shows_its_graph_terms_and_versions(wf: Api) -> None:
    r = await wf.client.get("/api/workflows/triage", headers=wf.admin)
    body = r.json()
    assert body["version"] == 1 and body["output_kind"] == "text" and body["fee_per_run_nanos"] == 5000
    assert set(body["models"]) == {"intent", "urgency", "pirate", "tiny-llama"}
    assert body["effective_terms"]["commercial_use"] is True
    assert {"from": "route", "to": "billing_reply", "kind": "select"} in body["graph"]["edges"]
    r = await wf.client.post(
        "/api/workflows", headers=wf.admin, json={"name": "triage", "document": TRIAGE, "author": "designer"}
    )
    assert r.json()["version"] == 2
    assert (await wf.client.get("/api/workflows/triage@1", headers=wf.admin)).json()["version"] == 1
    models = (await wf.client.get("/v1/models", headers=wf.key("acme"))).json()["data"]
    entry = next(m for m in models if m["id"] == "triage")
    assert entry["constellation"]["kind"] == "workflow" and entry["constellation"]["permitted"] is True
    one = await wf.client.get("/v1/models/triage", headers=wf.key("acme"))
    assert one.status_code == 200 and one.json()["constellation"]["kind"] == "workflow"


async def test_a_run_bills_every_step_plus_the_fee_and_the_split_sums_to_the_price(wf: Api) -> None:
    h = wf.key("acme")
    r = await run(wf, h, {"message": "my invoice is wrong"}, seed=3)
    assert r.status_code == 200, r.text
    body = r.json()
    ext = body["constellation"]
    chosen = body["selected"]["route"]
    assert {s["step"] for s in ext["steps"]} == {"intent", "urgency", chosen}
    assert body["output"]["text"] == body["steps"][chosen]["text"]
    assert all(s["price_nanos"] > 0 and s["compute_ns"] > 0 for s in ext["steps"])
    assert ext["fee"]["price_nanos"] >= 5000 and any(g["account"] == "designer" for g in ext["fee"]["split"])
    assert ext["price_nanos"] == sum(s["price_nanos"] for s in ext["steps"]) + ext["fee"]["price_nanos"]
    assert sum(g["amount_nanos"] for g in ext["split"]) == ext["price_nanos"]
    assert legs_balance(wf) == 0
    with wf.platform.db.session() as s:
        events = {e.request_id: e for e in s.scalars(select(UsageEvent))}
        run_row = s.get(WorkflowRun, ext["run_id"])
        steps = list(s.scalars(select(WorkflowRunStep).where(WorkflowRunStep.run_id == ext["run_id"])))
    assert run_row is not None and run_row.status == "succeeded" and run_row.price_nanos == ext["price_nanos"]
    assert {st.request_id for st in steps} == {s["request_id"] for s in ext["steps"]} <= set(events)
    assert events[ext["run_id"]].model_name == "workflow:triage@1"
    statement = await wf.client.get("/api/statements", headers=wf.admin, params={"contributor": "designer"})
    assert statement.status_code == 200 and "workflow:triage@1" in statement.text
    invoice = (await wf.client.get("/api/invoices", headers=h)).json()
    (line,) = invoice["workflow_runs"]
    assert line["run_id"] == ext["run_id"] and line["amount_nanos"] == ext["price_nanos"]
    assert sorted(st["step"] for st in line["steps"]) == sorted(s["step"] for s in ext["steps"])
    csv = (await wf.client.get("/api/invoices", headers=h, params={"format": "csv"})).text
    assert f"workflow_run,triage@1,workflow,{ext['run_id']}" in csv and csv.count("workflow_step,") == 3


async def test_a_workflow_is_a_chat_model_and_streams_the_same_answer(wf: Api) -> None:
    h = wf.key("acme")
    req = {"model": "triage", "messages": [{"role": "user", "content": "hello"}], "seed": 11}
    full = await wf.client.post("/v1/chat/completions", headers=h, json=req)
    assert full.status_code == 200, full.text
    answer = full.json()["choices"][0]["message"]["content"]
    assert full.json()["constellation"]["workflow"] == "triage"
    streamed = await wf.client.post(
        "/v1/chat/completions",
        headers=h,
        json={**req, "stream": True, "stream_options": {"include_usage": True}},
    )
    events = [
        json.loads(x[6:])
        for x in streamed.text.splitlines()
        if x.startswith("data: ") and x != "data: [DONE]"
    ]
    text = "".join(c["delta"].get("content", "") for e in events for c in e["choices"])
    assert text == answer and len(events) > 3
    assert events[-1]["usage"]["total_tokens"] > 0 and events[-1]["constellation"]["price_nanos"] > 0


async def test_the_official_openai_client_streams_a_workflow(wf: Api) -> None:
    import httpx
    from openai import AsyncOpenAI

    key = wf.key("acme")["Authorization"].split()[1]
    transport = httpx.ASGITransport(app=wf.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test/v1") as http:
        client = AsyncOpenAI(api_key=key, base_url="http://test/v1", http_client=http)
        stream = await client.chat.completions.create(
            model="triage", messages=[{"role": "user", "content": "hi"}], stream=True, seed=2
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        full = await client.chat.completions.create(
            model="triage", messages=[{"role": "user", "content": "hi"}], seed=2
        )
    assert text == full.choices[0].message.content


async def test_outputs_are_deterministic_under_concurrent_load(wf: Api) -> None:
    h = wf.key("acme")
    alone = (await run(wf, h, {"message": "where is my refund"}, seed=9)).json()["output"]["text"]
    noise = [
        wf.client.post(
            "/v1/chat/completions",
            headers=h,
            json={
                "model": "pirate",
                "messages": [{"role": "user", "content": f"noise {i}"}],
                "max_tokens": 6,
            },
        )
        for i in range(4)
    ]
    runs = [run(wf, h, {"message": "where is my refund"}, seed=9) for _ in range(4)]
    results = await asyncio.gather(*runs, *noise)
    assert all(r.status_code == 200 for r in results)
    assert [r.json()["output"]["text"] for r in results[:4]] == [alone] * 4


async def test_an_idempotency_key_replays_the_whole_run(wf: Api) -> None:
    h = {**wf.key("acme"), "Idempotency-Key": "run-1"}
    first = await run(wf, h, {"message": "x"}, seed=1)
    again = await run(wf, h, {"message": "x"}, seed=1)
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json()
    with wf.platform.db.session() as s:
        fees = s.scalar(select(func.count()).where(UsageEvent.model_name == "workflow:triage@1"))
    assert fees == 1
    other = await run(wf, h, {"message": "y"}, seed=1)
    assert other.status_code == 409


async def test_a_failing_step_names_itself_and_only_completed_steps_are_charged(wf: Api) -> None:
    doc = """
inputs: {message: string}
steps:
  - {name: intent, classify: {model: intent, input: "{{ inputs.message }}"}}
  - {name: reply, chat: {model: pirate, messages: [{role: user, content: "{{ steps.intent.nope }}"}]}}
"""
    r = await wf.client.post(
        "/api/workflows", headers=wf.admin, json={"name": "broken", "document": doc, "author": "designer"}
    )
    assert r.status_code == 201, r.text
    r = await wf.client.post(
        "/v1/workflows/broken/runs", headers=wf.key("acme"), json={"inputs": {"message": "m"}}
    )
    assert r.status_code == 400, r.text
    body = r.json()
    assert "step 'reply'" in body["error"]["message"] and "charged" in body["error"]["message"]
    assert body["error"]["param"] == "steps.reply.chat.messages[0].content"
    ext = body["constellation"]
    assert ext["failed_step"] == "reply" and [s["step"] for s in ext["steps"]] == ["intent"]
    assert ext["price_nanos"] == ext["steps"][0]["price_nanos"] > 0
    with wf.platform.db.session() as s:
        rids = set(
            s.scalars(select(UsageEvent.request_id).where(UsageEvent.request_id.like(ext["run_id"] + "%")))
        )
    assert rids == {ext["steps"][0]["request_id"]}  # no event for the step that never ran, no fee
    assert legs_balance(wf) == 0


async def test_a_non_commercial_model_is_refused_before_any_step(wf: Api, lm_dirs: tuple[Path, Path]) -> None:
    r = await wf.register(lm_dirs[1], name="nc-chat", base="tiny-llama", license="cc-by-nc-4.0", author="lab")
    assert r.status_code == 201, r.text
    doc = """
inputs: {message: string}
steps:
  - {name: intent, classify: {model: intent, input: "{{ inputs.message }}"}}
  - name: route
    switch: {on: steps.intent.label, cases: {never: poem}, default: plain}
  - {name: poem, chat: {model: nc-chat, messages: [{role: user, content: "{{ inputs.message }}"}]}}
  - {name: plain, chat: {model: tiny-llama, messages: [{role: user, content: "{{ inputs.message }}"}]}}
output: route
"""
    r = await wf.client.post(
        "/api/workflows", headers=wf.admin, json={"name": "poet", "document": doc, "author": "designer"}
    )
    assert r.status_code == 201 and r.json()["effective_terms"]["commercial_use"] is False
    r = await wf.client.post(
        "/v1/workflows/poet/runs", headers=wf.key("acme"), json={"inputs": {"message": "m"}}
    )
    assert r.status_code == 403 and r.json()["error"]["code"] == "license_non_commercial"
    assert "step 'poem'" in r.json()["error"]["message"] and "nc-chat" in r.json()["error"]["message"]
    with wf.platform.db.session() as s:
        assert s.scalar(select(func.count()).select_from(WorkflowRun)) == 0  # nothing ran, nothing billed
    lab = wf.key("lab", declared_use="non-commercial")
    r = await wf.client.post("/v1/workflows/poet/runs", headers=lab, json={"inputs": {"message": "m"}})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    ("document", "status", "param"),
    [
        ("steps: [{name: a, classify: {model: nope, input: x}}]", 400, "steps.a.classify.model"),
        ("steps: [{name: a, classify: {model: pirate, input: x}}]", 400, "steps.a.classify.model"),
        (
            "steps: [{name: a, complete: {model: tiny-llama, prompt: '{{ steps.b.text }}'}},"
            " {name: b, complete: {model: tiny-llama, prompt: '{{ steps.a.text }}'}}]",
            400,
            "steps.",
        ),
        ("steps: [{name: a, workflow: {name: self}}]", 400, "steps.a.workflow.name"),
        ("steps: [{name: a, classify: {model: secret, input: x}}]", 403, "steps.a.classify.model"),
        (
            "steps: [{name: a, classify: {model: intent, input: '{{ steps.zz.label }}'}}]",
            400,
            "steps.a.classify",
        ),
        (
            "inputs: {m: string}\n"
            "steps: [{name: a, map: {over: inputs.m, classify: {model: intent, input: x}}}]\noutput: zz",
            400,
            "output",
        ),
    ],
)
async def test_bad_workflows_are_refused_naming_step_and_field(
    wf: Api, tiny_bert: Path, classifiers: dict[str, Path], document: str, status: int, param: str
) -> None:
    wf.key("owner")  # a tenant for the private model
    r = await wf.register(
        classifiers["intent"],
        name="secret",
        base="tiny-bert",
        author="lab",
        visibility="private",
        owner_tenant="owner",
    )
    assert r.status_code == 201, r.text
    r = await wf.client.post(
        "/api/workflows", headers=wf.admin, json={"name": "self", "document": document, "author": "designer"}
    )
    assert r.status_code == status, r.text
    assert r.json()["error"]["param"].startswith(param)
    assert (
        await wf.client.get("/api/workflows/self", headers=wf.admin)
    ).status_code == 404  # nothing half-registered


async def test_bad_run_inputs_are_400s(wf: Api) -> None:
    h = wf.key("acme")
    for inputs, param in (
        ({}, "inputs.message"),
        ({"message": 1}, "inputs.message"),
        ({"message": "x", "n": 1}, "inputs.n"),
    ):
        r = await run(wf, h, inputs)
        assert r.status_code == 400 and r.json()["error"]["param"] == param
    r = await wf.client.post("/v1/classify", headers=h, json={"model": "triage", "input": "x"})
    assert r.status_code == 400 and "/v1/chat/completions" in r.json()["error"]["message"]
    assert (
        await wf.client.post("/v1/workflows/nope/runs", headers=h, json={"inputs": {}})
    ).status_code == 404


TOOLS = """
inputs: {message: string, items: array}
steps:
  - name: fields
    extract:
      model: pirate
      input: "{{ inputs.message }}"
      schema:
        type: object
        properties: {kind: {enum: [bug, billing]}, score: {type: integer, minimum: 0, maximum: 9}}
        required: [kind, score]
        additionalProperties: false
      max_tokens: 48
  - name: each
    map: {over: inputs.items, classify: {model: urgency, input: "{{ item }}"}}
  - name: drafts
    map: {over: inputs.items, complete: {model: tiny-llama, prompt: "{{ item }}", max_tokens: 3}}
  - name: similar
    nearest: {model: minilm, query: "{{ inputs.message }}", texts: [refunds, outages, passwords], top_k: 2}
  - name: label
    cascade:
      - {classify: {model: intent, input: "{{ inputs.message }}"}, threshold: 1.0}
      - {classify: {model: urgency, input: "{{ inputs.message }}"}}
output: label
"""


async def test_extract_map_nearest_and_cascade_on_real_models(wf: Api) -> None:
    r = await wf.client.post(
        "/api/workflows", headers=wf.admin, json={"name": "tools", "document": TOOLS, "author": "designer"}
    )
    assert r.status_code == 201, r.text
    assert r.json()["output_kind"] == "classification"
    h = wf.key("acme")
    inputs = {"message": "the app crashes", "items": ["a", "b", "c"]}
    r = await wf.client.post("/v1/workflows/tools/runs", headers=h, json={"inputs": inputs, "seed": 4})
    assert r.status_code == 200, r.text
    steps = r.json()["steps"]
    assert steps["fields"]["finish_reason"] == "stop" and set(steps["fields"]["data"]) == {"kind", "score"}
    assert len(steps["each"]["items"]) == 3 and len(steps["drafts"]["items"]) == 3
    assert [m["text"] for m in steps["similar"]["matches"]][:2] and len(steps["similar"]["matches"]) == 2
    assert steps["label"]["tier"] == 1 and steps["label"]["model"] == "urgency"  # no classifier is 100% sure
    billed = [s["step"] for s in r.json()["constellation"]["steps"]]
    assert billed.count("each") == 1  # a map of a classifier is one request: one batch, one event
    assert {"drafts[0]", "drafts[1]", "drafts[2]", "similar.texts", "label[0]", "label[1]"} <= set(billed)
    # A classification workflow is a model on /v1/classify.
    r = await wf.client.post("/v1/classify", headers=h, json={"model": "urgent", "input": "x"})
    assert r.status_code == 404
    doc = "inputs: {text: string}\nsteps: [{name: u, classify: {model: urgency, input: '{{ inputs.text }}'}}]"
    r = await wf.client.post(
        "/api/workflows", headers=wf.admin, json={"name": "urgent", "document": doc, "author": "designer"}
    )
    assert r.status_code == 201, r.text
    r = await wf.client.post("/v1/classify", headers=h, json={"model": "urgent", "input": "server down"})
    assert r.status_code == 200, r.text
    assert (
        r.json()["data"][0]["label"] in ("low", "high") and r.json()["constellation"]["workflow"] == "urgent"
    )


async def test_run_limits_are_enforced(wf: Api) -> None:
    """Fan-out and run time, from the server's settings (CONSTELLATION_WORKFLOWS__*)."""
    doc = """
inputs: {items: array}
steps:
  - {name: each, map: {over: inputs.items, classify: {model: urgency, input: "{{ item }}"}}}
"""
    r = await wf.client.post(
        "/api/workflows", headers=wf.admin, json={"name": "fan", "document": doc, "author": "designer"}
    )
    assert r.status_code == 201, r.text
    h = wf.key("acme")
    limits = state_of(wf.app).settings.workflows
    limits.max_fan_out = 2
    r = await wf.client.post("/v1/workflows/fan/runs", headers=h, json={"inputs": {"items": ["a", "b", "c"]}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "steps.each.map.over"
    assert r.json()["constellation"]["steps"] == [] and "nothing was charged" in r.json()["error"]["message"]
    limits.max_fan_out, limits.run_timeout_s = 64, 1e-4
    r = await run(wf, h, {"message": "slow"})
    assert r.status_code == 504 and r.json()["error"]["code"] == "workflow_timeout"
    assert legs_balance(wf) == 0


async def test_a_sub_workflow_runs_its_steps_and_pays_its_own_author(wf: Api) -> None:
    h = wf.admin
    await wf.client.post(
        "/api/contributors", headers=h, json={"id": "inner-author", "name": "I", "kind": "person"}
    )
    inner = """
inputs: {text: string}
terms: {per_run_nanos: 300}
steps:
  - {name: u, classify: {model: urgency, input: "{{ inputs.text }}"}}
"""
    outer = """
inputs: {message: string}
steps:
  - {name: sub, workflow: {name: inner, inputs: {text: "{{ inputs.message }}"}}}
  - {name: reply, complete: {model: tiny-llama, prompt: "{{ steps.sub.label }}", max_tokens: 3}}
output: reply
"""
    for name, doc, author in (("inner", inner, "inner-author"), ("outer", outer, "designer")):
        r = await wf.client.post(
            "/api/workflows", headers=h, json={"name": name, "document": doc, "author": author}
        )
        assert r.status_code == 201, r.text
    r = await wf.client.post(
        "/v1/workflows/outer/runs", headers=wf.key("acme"), json={"inputs": {"message": "m"}}
    )
    assert r.status_code == 200, r.text
    ext = r.json()["constellation"]
    steps = {s["step"]: s for s in ext["steps"]}
    assert set(steps) == {"sub/u", "reply", "sub"} and steps["sub"]["model"] == "workflow:inner@1"
    assert any(g["account"] == "inner-author" and g["amount_nanos"] == 300 for g in steps["sub"]["split"])
    assert sum(g["amount_nanos"] for g in ext["split"]) == ext["price_nanos"]
    calls_outer = "inputs: {text: string}\nsteps: [{name: o, workflow: {name: outer, inputs: {message: x}}}]"
    body = {"name": "inner", "document": calls_outer, "author": "designer"}
    r = await wf.client.post("/api/workflows", headers=h, json=body)
    assert r.status_code == 400 and r.json()["error"]["code"] == "workflow_cycle"
    assert "inner -> outer -> inner" in r.json()["error"]["message"]
