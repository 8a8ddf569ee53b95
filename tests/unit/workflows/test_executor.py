"""The executor against a fake `Models`: independent steps overlap, a switch runs only what it
selects, a cascade escalates, a map fans out within its limit, seeds derive from the run's seed
and the step's path, and a failure names its step and cancels the rest."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from constellation.config import WorkflowLimits
from constellation.errors import InvalidInput, LicenseRefused
from constellation.workflows.executor import Answer, Emit, Run, StepFailed, step_seed
from constellation.workflows.spec import Spec, load_document, parse

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Fake:
    """Classifiers answer from a table keyed by model; generation echoes; every call is logged."""

    labels: dict[str, tuple[str, float]] = field(default_factory=dict)
    calls: list[tuple[str, str, Any]] = field(default_factory=list)
    running: int = 0
    peak: int = 0
    fail: str | None = None
    subs: dict[str, Spec] = field(default_factory=dict)
    vectors: dict[str, np.ndarray] = field(default_factory=dict)

    async def _enter(self, path: str, model: str, what: Any) -> None:
        self.calls.append((path, model, what))
        self.running += 1
        self.peak = max(self.peak, self.running)
        await asyncio.sleep(0.01)
        self.running -= 1
        if model == self.fail:
            raise LicenseRefused(f"'{model}' refused", code="license_non_commercial")

    async def classify(self, path: str, model: str, texts: list[str], *, truncate: bool) -> Answer:
        await self._enter(path, model, texts)
        label, p = self.labels.get(model, ("other", 0.9))
        return Answer([{"label": label, "probs": {label: p}, "confidence": p} for _ in texts], 3 * len(texts))

    async def embed(self, path: str, model: str, texts: list[str], *, truncate: bool) -> Answer:
        await self._enter(path, model, texts)
        return Answer([{"embedding": [float(len(t)), 1.0]} for t in texts], len(texts))

    async def generate(
        self,
        path: str,
        model: str,
        *,
        prompt: str | None,
        messages: Any,
        sampling: dict[str, Any],
        schema: Any,
        emit: Emit | None,
    ) -> Answer:
        await self._enter(path, model, {"messages": messages, "prompt": prompt, **sampling})
        text = f"{model}:{(messages or [{}])[-1].get('content', prompt)}"
        if emit is not None:
            for word in text.split(":"):
                await emit(word)
        return Answer({"text": text, "finish_reason": "stop"}, 10)

    async def workflow(self, path: str, ref: str) -> tuple[Spec, str]:
        return self.subs[ref], f"{ref}@1"

    def cached_vectors(self, key: str) -> np.ndarray | None:
        return self.vectors.get(key)

    def cache_vectors(self, key: str, vectors: np.ndarray) -> None:
        self.vectors[key] = vectors


def spec_of(text: str) -> Spec:
    return parse(load_document(text))


TRIAGE = spec_of("""
inputs: {message: string}
steps:
  - name: intent
    classify: {model: intent, input: "{{ inputs.message }}"}
  - name: urgency
    classify: {model: urgency, input: "{{ inputs.message }}"}
  - name: route
    switch: {on: steps.intent.label, cases: {billing: billing}, default: general}
  - name: billing
    chat:
      model: support
      messages: [{role: user, content: "{{ steps.urgency.label }} {{ inputs.message }}"}]
  - name: general
    chat: {model: chat, messages: [{role: user, content: "{{ inputs.message }}"}]}
output: route
""")


def run(spec: Spec, models: Fake, inputs: dict[str, Any], **kw: Any) -> Run:
    return Run(spec, inputs, models, kw.pop("limits", WorkflowLimits()), **kw)  # type: ignore[arg-type]


async def test_independent_steps_overlap_and_the_switch_runs_only_its_choice() -> None:
    m = Fake(labels={"intent": ("billing", 0.8), "urgency": ("high", 0.7)})
    r = run(TRIAGE, m, {"message": "refund me"})
    out = await r.execute()
    assert out == {"text": "support:high refund me", "finish_reason": "stop"}
    assert m.peak >= 2  # intent and urgency ran at the same time
    assert [c[0] for c in m.calls if c[0] in ("billing", "general")] == ["billing"]
    assert r.selected == {"route": "billing"} and "general" not in r.outputs


async def test_the_output_streams_through_the_switch() -> None:
    m = Fake(labels={"intent": ("other", 0.8)})
    pieces: list[str] = []

    async def emit(text: str) -> None:
        pieces.append(text)

    await run(TRIAGE, m, {"message": "hello"}).execute(emit)
    assert pieces == ["chat", "hello"]


async def test_seeds_derive_from_the_run_seed_and_the_step_path() -> None:
    m1, m2 = Fake(), Fake()
    await run(TRIAGE, m1, {"message": "x"}, seed=7).execute()
    await run(TRIAGE, m2, {"message": "x"}, seed=7).execute()
    seeds = [c[2]["seed"] for c in m1.calls if isinstance(c[2], dict)]
    assert seeds == [step_seed(7, "general")] == [c[2]["seed"] for c in m2.calls if isinstance(c[2], dict)]
    assert step_seed(7, "general") != step_seed(8, "general") != step_seed(7, "billing")


async def test_no_matching_case_without_default_is_a_400_naming_the_step() -> None:
    spec = spec_of("""
inputs: {message: string}
steps:
  - {name: intent, classify: {model: intent, input: "{{ inputs.message }}"}}
  - {name: route, switch: {on: steps.intent.label, cases: {billing: b}}}
  - {name: b, chat: {model: c, messages: [{role: user, content: x}]}}
output: route
""")
    with pytest.raises(StepFailed) as e:
        await run(spec, Fake(), {"message": "x"}).execute()
    assert e.value.status == 400 and e.value.code == "workflow_no_matching_case"
    assert e.value.step == "route" and e.value.param == "steps.route.switch.cases"


async def test_a_cascade_escalates_below_its_threshold() -> None:
    spec = spec_of("""
inputs: {message: string}
steps:
  - name: answer
    cascade:
      - {classify: {model: small, input: "{{ inputs.message }}"}, threshold: 0.8}
      - {classify: {model: big, input: "{{ inputs.message }}"}}
""")
    m = Fake(labels={"small": ("a", 0.6), "big": ("b", 0.95)})
    out = await run(spec, m, {"message": "x"}).execute()
    assert out["label"] == "b" and out["tier"] == 1 and [c[0] for c in m.calls] == ["answer[0]", "answer[1]"]
    m = Fake(labels={"small": ("a", 0.9)})
    out = await run(spec, m, {"message": "x"}).execute()
    assert out["tier"] == 0 and len(m.calls) == 1


MAP = spec_of("""
inputs: {items: array}
steps:
  - name: each
    map: {over: inputs.items, classify: {model: m, input: "{{ item }}"}}
  - name: drafts
    map: {over: inputs.items, chat: {model: c, messages: [{role: user, content: "{{ item }}"}]}}
""")


async def test_a_map_batches_encoder_items_in_one_call_and_fans_out_generation() -> None:
    m = Fake()
    r = run(MAP, m, {"items": ["a", "b", "c"]})
    out = await r.execute()
    assert len(out["items"]) == 3 and len(r.outputs["each"]["items"]) == 3
    assert [c[0] for c in m.calls if c[0] == "each"] == ["each"]  # one request, three items
    assert sorted(c[0] for c in m.calls if c[0].startswith("drafts")) == [
        "drafts[0]",
        "drafts[1]",
        "drafts[2]",
    ]


async def test_fan_out_over_the_limit_is_refused_before_any_call() -> None:
    m = Fake()
    with pytest.raises(StepFailed) as e:
        await run(MAP, m, {"items": ["x"] * 5}, limits=WorkflowLimits(max_fan_out=4)).execute()
    assert e.value.status == 400 and e.value.param is not None and e.value.param.endswith("map.over")
    assert m.calls == []


async def test_the_token_budget_stops_the_run() -> None:
    with pytest.raises(StepFailed, match="tokens"):
        await run(MAP, Fake(), {"items": ["a", "b"]}, limits=WorkflowLimits(max_total_tokens=5)).execute()


async def test_a_failing_step_names_itself_and_cancels_the_rest() -> None:
    m = Fake(labels={"intent": ("billing", 0.9)}, fail="urgency")
    with pytest.raises(StepFailed) as e:
        await run(TRIAGE, m, {"message": "x"}).execute()
    assert e.value.step == "urgency" and e.value.status == 403 and "step 'urgency'" in e.value.message
    assert not any(c[0] == "billing" for c in m.calls)  # it waited for urgency, which failed


async def test_nearest_embeds_the_document_texts_once() -> None:
    spec = spec_of("""
inputs: {q: string}
steps:
  - {name: near, nearest: {model: e, query: "{{ inputs.q }}", texts: [aa, bbbb, c], top_k: 2}}
""")
    m = Fake()
    out = await run(spec, m, {"q": "ddd"}).execute()
    assert len(out["matches"]) == 2
    await run(spec, m, {"q": "ddd"}).execute()
    assert [c[0] for c in m.calls] == ["near.texts", "near", "near"]


async def test_a_sub_workflow_runs_under_its_step_path() -> None:
    inner = spec_of("""
inputs: {text: string}
steps:
  - {name: reply, chat: {model: c, messages: [{role: user, content: "{{ inputs.text }}"}]}}
""")
    outer = spec_of("""
inputs: {message: string}
steps:
  - {name: sub, workflow: {name: inner, inputs: {text: "re: {{ inputs.message }}"}}}
""")
    m = Fake(subs={"inner": inner})
    out = await run(outer, m, {"message": "hi"}, seed=1).execute()
    assert out["text"] == "c:re: hi" and m.calls[0][0] == "sub/reply"
    assert m.calls[0][2]["seed"] == step_seed(1, "sub/reply")


async def test_sub_workflows_stop_at_the_depth_limit() -> None:
    loop = spec_of("""
inputs: {message: string}
steps:
  - {name: again, workflow: {name: loop, inputs: {message: "{{ inputs.message }}"}}}
""")
    with pytest.raises(StepFailed) as e:
        await run(
            loop, Fake(subs={"loop": loop}), {"message": "x"}, limits=WorkflowLimits(max_depth=3)
        ).execute()
    assert isinstance(e.value.cause, InvalidInput) and "deeper" in e.value.message
