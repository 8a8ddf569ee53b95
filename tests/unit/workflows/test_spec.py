"""Workflow documents: parsing, templates (sandboxed, references found), the step graph, and
every structural error naming the step and the field."""

from __future__ import annotations

from typing import Any

import pytest

from constellation.errors import InvalidInput
from constellation.workflows import graph, templates
from constellation.workflows.spec import check_inputs, load_document, parse

TRIAGE = """
description: triage a ticket, then answer it
inputs:
  message: string
terms: {per_run_nanos: 5000}
steps:
  - name: intent
    classify: {model: intent-v1, input: "{{ inputs.message }}"}
  - name: urgency
    classify: {model: urgency-v1, input: "{{ inputs.message }}"}
  - name: route
    switch:
      on: steps.intent.label
      cases: {billing: billing_reply}
      default: general_reply
  - name: billing_reply
    chat:
      model: support-v1
      messages: [{role: user, content: "Billing ({{ steps.urgency.label }}): {{ inputs.message }}"}]
      max_tokens: 16
  - name: general_reply
    chat: {model: chat-v1, messages: [{role: user, content: "{{ inputs.message }}"}]}
output: route
"""


def doc(**steps: Any) -> dict[str, Any]:
    return {"inputs": {"message": "string"}, "steps": [{"name": k, **v} for k, v in steps.items()]}


def test_triage_parses_with_its_graph() -> None:
    spec = parse(load_document(TRIAGE))
    graph.check(spec)
    assert list(spec.steps) == ["intent", "urgency", "route", "billing_reply", "general_reply"]
    assert spec.fee_per_run_nanos == 5000 and spec.output == "route"
    assert graph.waits_for(spec.steps["billing_reply"]) == {"urgency"}
    assert graph.gated(spec) == {"billing_reply": "route", "general_reply": "route"}
    assert graph.output_kind(spec) == "text"
    order = graph.order(spec)
    assert order.index("intent") < order.index("route") and order.index("billing_reply") < order.index(
        "route"
    )


def test_json_documents_parse_too() -> None:
    spec = parse(
        load_document(
            '{"inputs": {"q": "string"}, "steps": [{"name": "e", "embed": '
            '{"model": "m", "input": "{{ inputs.q }}"}}]}'
        )
    )
    assert graph.output_kind(spec) == "embedding"


@pytest.mark.parametrize(
    ("document", "param", "needle"),
    [
        (
            doc(a={"classify": {"model": "m", "input": "{{ steps.nope.label }}"}}),
            "steps.a.classify",
            "no step 'nope'",
        ),
        (doc(a={"classify": {"model": "m", "input": "{{ steps.a.label }}"}}), "steps.a.classify", "its own"),
        (
            doc(
                a={"classify": {"model": "m", "input": "{{ steps.b.label }}"}},
                b={"classify": {"model": "m", "input": "{{ steps.a.label }}"}},
            ),
            "steps.",
            "cycle",
        ),
        (
            doc(a={"classify": {"model": "m", "input": "{{ inputs.other }}"}}),
            "steps.a.classify.input",
            "does not declare",
        ),
        (doc(a={"classify": {"model": "m", "input": "{{ os.system }}"}}), "steps.a.classify.input", "'os'"),
        (
            doc(a={"classify": {"model": "m", "input": "{{ unclosed"}}),
            "steps.a.classify.input",
            "does not compile",
        ),
        (doc(a={"classify": {"model": "m"}}), "steps.a.classify.input", "required"),
        (
            doc(a={"classify": {"model": "m", "input": "x", "temperature": 1}}),
            "steps.a.classify.temperature",
            "unknown",
        ),
        (
            doc(a={"chat": {"model": "m", "messages": [{"role": "x", "content": "y"}]}}),
            "steps.a.chat.messages",
            "role",
        ),
        (
            doc(a={"chat": {"model": "m", "messages": [{"role": "user", "content": "y"}], "max_tokens": 0}}),
            "steps.a.chat.max_tokens",
            "1 to",
        ),
        (
            doc(a={"switch": {"on": "inputs.message", "cases": {"x": "zzz"}}}),
            "steps.a.switch",
            "no such step",
        ),
        (doc(a={"switch": {"on": "inputs.message"}}), "steps.a.switch.cases", "cases, a default"),
        (doc(a={"cascade": [{"classify": {"model": "m", "input": "x"}}]}), "steps.a.cascade", "at least two"),
        (
            doc(
                a={
                    "cascade": [
                        {"classify": {"model": "m", "input": "x"}},
                        {"classify": {"model": "n", "input": "x"}},
                    ]
                }
            ),
            "steps.a.cascade[0].threshold",
            "when to stop",
        ),
        (doc(a={"map": {"over": "inputs.message"}}), "steps.a.map", "one model call"),
        (doc(a={"nearest": {"model": "m", "query": "q", "texts": []}}), "steps.a.nearest.texts", "non-empty"),
        (
            doc(a={"extract": {"model": "m", "input": "x", "schema": {"type": "nope"}}}),
            "steps.a.extract.schema",
            "JSON Schema",
        ),
        (
            doc(a={"classify": {"model": "m", "input": "x"}, "embed": {"model": "m", "input": "x"}}),
            "steps.a",
            "one kind",
        ),
        (doc(**{"Bad-Name": {"classify": {"model": "m", "input": "x"}}}), "steps[0].name", "lowercase"),
        ({"steps": []}, "steps", "non-empty"),
        (
            {"steps": [{"name": "a", "classify": {"model": "m", "input": "x"}}], "output": "b"},
            "output",
            "no step",
        ),
        (
            {"steps": [{"name": "a", "classify": {"model": "m", "input": "x"}}], "bogus": 1},
            "document.bogus",
            "unknown",
        ),
    ],
)
def test_bad_documents_name_the_step_and_field(document: dict[str, Any], param: str, needle: str) -> None:
    with pytest.raises(InvalidInput) as e:
        graph.check(parse(document))
    assert e.value.param is not None and e.value.param.startswith(param), (e.value.param, e.value.message)
    assert needle in e.value.message


def test_a_step_may_not_read_a_switch_target_directly() -> None:
    d = doc(
        s={"switch": {"on": "inputs.message", "default": "t"}},
        t={"classify": {"model": "m", "input": "x"}},
        u={"classify": {"model": "m", "input": "{{ steps.t.label }}"}},
    )
    with pytest.raises(InvalidInput, match=r"read steps\.s"):
        graph.check(parse(d))


def test_the_sandbox_refuses_unsafe_attribute_access_at_run_time() -> None:
    t = templates.text("{{ inputs.message.__class__.__mro__ }}", where="steps.a.input")
    with pytest.raises(templates.TemplateFailed) as e:
        t.render({"inputs": {"message": "x"}, "steps": {}}, where="steps.a.input")
    assert e.value.param == "steps.a.input"


def test_a_missing_field_at_run_time_names_the_step() -> None:
    t = templates.text("{{ steps.intent.nope }}", where="steps.b.input")
    with pytest.raises(templates.TemplateFailed, match=r"steps\.b\.input"):
        t.render({"inputs": {}, "steps": {"intent": {"label": "x"}}}, where="steps.b.input")


def test_expressions_give_python_values() -> None:
    e = templates.expr("steps.a.probs.high > 0.5", where="w")
    assert e.evaluate({"steps": {"a": {"probs": {"high": 0.7}}}, "inputs": {}}, where="w") is True
    assert e.refs.steps == {"a"}


def test_inputs_are_checked_against_the_declaration() -> None:
    spec = parse(
        {
            "inputs": {"message": "string", "n": {"type": "integer", "default": 2}},
            "steps": [{"name": "a", "classify": {"model": "m", "input": "x"}}],
        }
    )
    assert check_inputs(spec, {"message": "hi"}) == {"message": "hi", "n": 2}
    for bad, param in (
        ({}, "inputs.message"),
        ({"message": 3}, "inputs.message"),
        ({"message": "x", "other": 1}, "inputs.other"),
        ({"message": "x", "n": True}, "inputs.n"),
    ):
        with pytest.raises(InvalidInput) as e:
            check_inputs(spec, bad)
        assert e.value.param == param
