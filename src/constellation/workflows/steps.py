"""The steps of a workflow document: one dataclass per concept (a model call, a cascade's tier,
a step) and the parsing of each step kind's body, every error naming the step and the field."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from constellation.errors import InvalidInput
from constellation.workflows import templates as tpl
from constellation.workflows.templates import Expr, Text

CALL_KINDS = ("classify", "embed", "chat", "complete", "extract")
STEP_KINDS = (*CALL_KINDS, "switch", "cascade", "map", "nearest", "workflow")
SAMPLING = ("max_tokens", "temperature", "top_p", "top_k", "stop", "seed")
STEP_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")  # an attribute in templates: `steps.<name>`
MAX_TOP_K = 100
MAX_NEAREST_TEXTS = 10_000
# What each call kind's body may hold, beyond `model` (and the sampling fields for generation).
CALL_FIELDS: dict[str, tuple[str, ...]] = {
    "classify": ("input", "truncate"),
    "embed": ("input", "truncate"),
    "chat": ("messages", *SAMPLING),
    "complete": ("prompt", *SAMPLING),
    "extract": ("input", "messages", "schema", *SAMPLING),
}
REQUIRED: dict[str, tuple[str, ...]] = {
    "classify": ("input",),
    "embed": ("input",),
    "chat": ("messages",),
    "complete": ("prompt",),
    "extract": ("schema",),
}


@dataclass(frozen=True, slots=True)
class ModelCall:
    """One call of a registry model, as the matching /v1 endpoint takes it; string fields are
    compiled templates (`Text`), rendered per run."""

    kind: str  # one of CALL_KINDS
    model: str
    args: dict[str, Any]  # input / messages / prompt, as template trees
    sampling: dict[str, Any] = field(default_factory=dict)
    schema: dict[str, Any] | None = None  # extract: the JSON schema the answer obeys
    truncate: bool = False

    @property
    def task(self) -> str:
        return {"classify": "classification", "embed": "embedding"}.get(self.kind, "causal-lm")


@dataclass(frozen=True, slots=True)
class Tier:
    """A cascade's rung: accepted when `accept` is true, or its top probability reaches
    `threshold`; the last rung is always accepted."""

    call: ModelCall
    threshold: float | None = None
    accept: Expr | None = None


@dataclass(frozen=True, slots=True)
class Step:
    name: str
    kind: str
    call: ModelCall | None = None  # a call kind, the body of a map, a nearest step's embedder
    on: Expr | None = None  # switch
    cases: dict[str, str] = field(default_factory=dict)
    default: str | None = None
    tiers: tuple[Tier, ...] = ()  # cascade
    over: Expr | None = None  # map: the list it fans out over
    query: Text | None = None  # nearest
    texts: tuple[str, ...] | None = None  # nearest: given in the document (embedded once, cached)
    texts_from: Expr | None = None  # nearest: taken from the run
    top_k: int = 3
    workflow: str | None = None  # a sub-workflow's `name` or `name@N`
    inputs: dict[str, Text] = field(default_factory=dict)

    @property
    def targets(self) -> list[str]:
        """A switch's possible continuations."""
        out = list(dict.fromkeys(self.cases.values()))
        return [*out, self.default] if self.default and self.default not in out else out

    def calls(self) -> list[ModelCall]:
        if self.kind == "cascade":
            return [t.call for t in self.tiers]
        return [self.call] if self.call is not None else []

    def refs(self) -> dict[str, set[str]]:
        """Field -> the steps its templates read."""
        out: dict[str, set[str]] = {}

        def add(where: str, refs: list[tpl.Refs]) -> None:
            found = {s for r in refs for s in r.steps}
            if found:
                out.setdefault(where, set()).update(found)

        for i, c in enumerate(self.calls()):
            where = f"cascade[{i}]" if self.kind == "cascade" else self.kind
            add(where, tpl.tree_refs(c.args))
        for i, t in enumerate(self.tiers):
            add(f"cascade[{i}].accept", tpl.tree_refs(t.accept))
        add("on", tpl.tree_refs(self.on))
        add("over", tpl.tree_refs(self.over))
        add("query", tpl.tree_refs(self.query))
        add("texts_from", tpl.tree_refs(self.texts_from))
        add("inputs", tpl.tree_refs(self.inputs))
        return out


def only(body: Any, allowed: tuple[str, ...], *, where: str) -> None:
    if not isinstance(body, dict):
        raise InvalidInput(f"{where}: expected a mapping", param=where)
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise InvalidInput(
            f"{where}: unknown field(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(allowed)}",
            param=f"{where}.{unknown[0]}",
        )


def parse_step(body: Any, i: int, inputs: set[str]) -> Step:
    if not isinstance(body, dict) or not isinstance(body.get("name"), str):
        raise InvalidInput(f"steps[{i}]: each step is a mapping with a 'name'", param=f"steps[{i}].name")
    name = body["name"]
    if not STEP_NAME.fullmatch(name):
        raise InvalidInput(
            f"steps[{i}]: the name {name!r} must be lowercase letters, digits and _ (at most "
            "32, starting with a letter): templates read it as steps.<name>",
            param=f"steps[{i}].name",
        )
    kinds = [k for k in STEP_KINDS if k in body]
    where = f"steps.{name}"
    if len(kinds) != 1:
        raise InvalidInput(
            f"{where}: a step has exactly one kind, one of {', '.join(STEP_KINDS)}; found {kinds or 'none'}",
            param=where,
        )
    kind = kinds[0]
    extra = ("threshold",) if kind == "cascade" else ()
    only(body, ("name", kind, *extra), where=where)
    ctx = _Ctx(where, inputs)
    v = body[kind]
    if kind in CALL_KINDS:
        return Step(name, kind, call=ctx.call(kind, v, f"{where}.{kind}"))
    return getattr(ctx, kind)(name, v)


@dataclass(slots=True)
class _Ctx:
    where: str
    inputs: set[str]

    def _check_inputs(self, refs: list[tpl.Refs], where: str) -> None:
        unknown = sorted({n for r in refs for n in r.inputs} - self.inputs)
        if unknown:
            raise InvalidInput(
                f"{where}: reads inputs.{unknown[0]}, which the workflow does not declare; "
                f"declared: {', '.join(sorted(self.inputs)) or 'none'}",
                param=where,
            )

    def tree(self, value: Any, where: str, allowed: frozenset[str] = tpl.CONTEXT_NAMES) -> Any:
        out = tpl.tree(value, where=where, allowed=allowed)
        self._check_inputs(tpl.tree_refs(out), where)
        return out

    def expr(self, value: Any, where: str, allowed: frozenset[str] = tpl.CONTEXT_NAMES) -> Expr:
        if not isinstance(value, str):
            raise InvalidInput(f"{where}: an expression, e.g. 'steps.intent.label'", param=where)
        out = tpl.expr(value, where=where, allowed=allowed)
        self._check_inputs([out.refs], where)
        return out

    def call(self, kind: str, body: Any, where: str) -> ModelCall:
        only(body, ("model", *CALL_FIELDS[kind]), where=where)
        if not isinstance(body.get("model"), str):
            raise InvalidInput(f"{where}.model: name a model of the registry", param=f"{where}.model")
        missing = [f for f in REQUIRED[kind] if f not in body]
        if kind == "extract" and "input" not in body and "messages" not in body:
            missing.append("input")
        if missing:
            raise InvalidInput(
                f"{where}.{missing[0]}: required for a {kind} step", param=f"{where}.{missing[0]}"
            )
        args = {k: self.tree(body[k], f"{where}.{k}") for k in ("input", "messages", "prompt") if k in body}
        _check_shapes(kind, args, body, where)
        sampling = {k: body[k] for k in SAMPLING if k in body}
        _check_sampling(sampling, where)
        schema = body.get("schema")
        if kind == "extract" and not isinstance(schema, dict):
            raise InvalidInput(f"{where}.schema: a JSON schema (a mapping)", param=f"{where}.schema")
        if kind == "extract":
            _check_schema(schema, f"{where}.schema")
        truncate = body.get("truncate", False)
        if not isinstance(truncate, bool):
            raise InvalidInput(f"{where}.truncate: true or false", param=f"{where}.truncate")
        return ModelCall(kind, body["model"], args, sampling, schema, truncate)

    def switch(self, name: str, body: Any) -> Step:
        w = f"{self.where}.switch"
        only(body, ("on", "cases", "default"), where=w)
        if "on" not in body:
            raise InvalidInput(
                f"{w}.on: the expression to switch on, e.g. 'steps.intent.label'", param=f"{w}.on"
            )
        cases = body.get("cases") or {}
        if not isinstance(cases, dict) or not all(isinstance(t, str) for t in cases.values()):
            raise InvalidInput(f"{w}.cases: map each value to the step to continue with", param=f"{w}.cases")
        default = body.get("default")
        if default is not None and not isinstance(default, str):
            raise InvalidInput(f"{w}.default: a step name", param=f"{w}.default")
        if not cases and default is None:
            raise InvalidInput(f"{w}: give cases, a default, or both", param=f"{w}.cases")
        return Step(
            name,
            "switch",
            on=self.expr(body["on"], f"{w}.on"),
            cases={str(k): v for k, v in cases.items()},
            default=default,
        )

    def cascade(self, name: str, body: Any) -> Step:
        w = f"{self.where}.cascade"
        if not isinstance(body, list) or len(body) < 2:
            raise InvalidInput(f"{w}: a list of at least two tiers, cheapest first", param=w)
        tiers = []
        for i, tier in enumerate(body):
            tw = f"{w}[{i}]"
            kinds = [k for k in CALL_KINDS if isinstance(tier, dict) and k in tier]
            if len(kinds) != 1:
                raise InvalidInput(f"{tw}: each tier is one model call ({', '.join(CALL_KINDS)})", param=tw)
            only(tier, (kinds[0], "threshold", "accept"), where=tw)
            threshold = tier.get("threshold")
            if threshold is not None and (not isinstance(threshold, int | float) or not 0 <= threshold <= 1):
                raise InvalidInput(f"{tw}.threshold: a probability between 0 and 1", param=f"{tw}.threshold")
            if threshold is not None and kinds[0] != "classify":
                raise InvalidInput(
                    f"{tw}.threshold: only a classify tier has a confidence; use 'accept' "
                    "with an expression on its output instead",
                    param=f"{tw}.threshold",
                )
            accept = self.expr(tier["accept"], f"{tw}.accept") if "accept" in tier else None
            last = i == len(body) - 1
            if not last and threshold is None and accept is None:
                raise InvalidInput(
                    f"{tw}: say when to stop here: 'threshold' or 'accept'", param=f"{tw}.threshold"
                )
            tiers.append(Tier(self.call(kinds[0], tier[kinds[0]], f"{tw}.{kinds[0]}"), threshold, accept))
        kinds_seen = {t.call.task for t in tiers}
        if len(kinds_seen) > 1:
            raise InvalidInput(
                f"{w}: every tier must answer the same way (all classify, or all chat/complete)", param=w
            )
        return Step(name, "cascade", tiers=tuple(tiers))

    def map(self, name: str, body: Any) -> Step:
        w = f"{self.where}.map"
        kinds = [k for k in CALL_KINDS if isinstance(body, dict) and k in body]
        if len(kinds) != 1:
            raise InvalidInput(
                f"{w}: 'over' and one model call ({', '.join(CALL_KINDS)}) run per item", param=w
            )
        only(body, ("over", kinds[0]), where=w)
        if "over" not in body:
            raise InvalidInput(f"{w}.over: the list to run over, e.g. 'inputs.tickets'", param=f"{w}.over")
        return Step(
            name,
            "map",
            call=self.call(kinds[0], body[kinds[0]], f"{w}.{kinds[0]}"),
            over=self.expr(body["over"], f"{w}.over"),
        )

    def nearest(self, name: str, body: Any) -> Step:
        w = f"{self.where}.nearest"
        only(body, ("model", "query", "texts", "top_k"), where=w)
        for f in ("model", "query", "texts"):
            if f not in body:
                raise InvalidInput(f"{w}.{f}: required for a nearest step", param=f"{w}.{f}")
        texts, texts_from = body["texts"], None
        if isinstance(texts, str):
            texts_from, texts = self.expr(texts, f"{w}.texts"), None
        elif not (isinstance(texts, list) and texts and all(isinstance(t, str) and t.strip() for t in texts)):
            raise InvalidInput(
                f"{w}.texts: a non-empty list of texts, or an expression such as 'inputs.faq'",
                param=f"{w}.texts",
            )
        elif len(texts) > MAX_NEAREST_TEXTS:
            raise InvalidInput(f"{w}.texts: at most {MAX_NEAREST_TEXTS} texts", param=f"{w}.texts")
        top_k = body.get("top_k", 3)
        if not isinstance(top_k, int) or not 1 <= top_k <= MAX_TOP_K:
            raise InvalidInput(f"{w}.top_k: a whole number from 1 to {MAX_TOP_K}", param=f"{w}.top_k")
        query = self.tree(body["query"], f"{w}.query")
        if not isinstance(query, Text):
            raise InvalidInput(f"{w}.query: a text (a template)", param=f"{w}.query")
        embed = ModelCall("embed", str(body["model"]), {})
        return Step(
            name,
            "nearest",
            call=embed,
            query=query,
            texts=tuple(texts) if texts else None,
            texts_from=texts_from,
            top_k=top_k,
        )

    def workflow(self, name: str, body: Any) -> Step:
        w = f"{self.where}.workflow"
        only(body, ("name", "inputs"), where=w)
        if not isinstance(body.get("name"), str):
            raise InvalidInput(f"{w}.name: the workflow to call, 'name' or 'name@N'", param=f"{w}.name")
        raw = body.get("inputs") or {}
        if not isinstance(raw, dict):
            raise InvalidInput(f"{w}.inputs: map its inputs to templates", param=f"{w}.inputs")
        inputs = {
            k: self.tree(v if isinstance(v, str) else json.dumps(v), f"{w}.inputs.{k}")
            for k, v in raw.items()
        }
        return Step(name, "workflow", workflow=body["name"], inputs=inputs)


def _check_schema(schema: Any, where: str) -> None:
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as e:
        at = "/".join(str(p) for p in e.path) or "(top level)"
        raise InvalidInput(
            f"{where}: not a valid JSON Schema at {at}: {e.message[:200]}", param=where, code="invalid_schema"
        ) from None


def _check_shapes(kind: str, args: dict[str, Any], body: dict[str, Any], where: str) -> None:
    if "input" in args:
        value = args["input"]
        ok = isinstance(value, Text) or (
            isinstance(value, list) and value and all(isinstance(v, Text) for v in value)
        )
        if kind == "extract":
            ok = isinstance(value, Text)
        if not ok:
            raise InvalidInput(f"{where}.input: a text or a non-empty list of texts", param=f"{where}.input")
    if "prompt" in args and not isinstance(args["prompt"], Text):
        raise InvalidInput(f"{where}.prompt: a text (a template)", param=f"{where}.prompt")
    if "messages" in args:
        msgs = body["messages"]
        ok = (
            isinstance(msgs, list)
            and msgs
            and all(
                isinstance(m, dict)
                and set(m) <= {"role", "content"}
                and isinstance(m.get("content"), str)
                and m.get("role") in ("system", "user", "assistant")
                for m in msgs
            )
        )
        if not ok:
            raise InvalidInput(
                f"{where}.messages: a list of {{role: system|user|assistant, content: text}}",
                param=f"{where}.messages",
            )


def _check_sampling(s: dict[str, Any], where: str) -> None:
    def bad(f: str, what: str) -> InvalidInput:
        return InvalidInput(f"{where}.{f}: {what}", param=f"{where}.{f}")

    mt = s.get("max_tokens")
    if mt is not None and (not isinstance(mt, int) or isinstance(mt, bool) or not 1 <= mt <= 1_000_000):
        raise bad("max_tokens", "a whole number from 1 to 1,000,000")
    t = s.get("temperature")
    if t is not None and (not isinstance(t, int | float) or not 0 <= t <= 2):
        raise bad("temperature", "a number from 0 (greedy) to 2")
    p = s.get("top_p")
    if p is not None and (not isinstance(p, int | float) or not 0 < p <= 1):
        raise bad("top_p", "a number in (0, 1]")
    k = s.get("top_k")
    if k is not None and (not isinstance(k, int) or not 0 <= k < 2**31):
        raise bad("top_k", "a whole number, 0 for off")
    stop = s.get("stop")
    if stop is not None and not (
        isinstance(stop, str) or (isinstance(stop, list) and all(isinstance(x, str) for x in stop))
    ):
        raise bad("stop", "a string or a list of strings")
    seed = s.get("seed")
    if seed is not None and (not isinstance(seed, int) or not -(2**63) <= seed < 2**64):
        raise bad("seed", "a 64-bit integer (steps are seeded from the run's seed when omitted)")
