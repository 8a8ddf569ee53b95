"""Running a workflow: every step not waiting on a switch starts at once and awaits the steps
it reads, so independent steps run concurrently; a switch starts only the step it selects.
Model calls go through `Models`, which the API implements with its request pipeline.

A failure fails the run with the step named (`StepFailed`); the steps still in flight are
cancelled, and what completed stays charged."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from constellation.config import WorkflowLimits
from constellation.errors import ConstellationError, InvalidInput
from constellation.workflows import graph
from constellation.workflows.spec import Spec, check_inputs
from constellation.workflows.steps import ModelCall, Step, Tier
from constellation.workflows.templates import render_tree

Emit = Callable[[str], Awaitable[None]]  # the run's output text, piece by piece (streaming)


@dataclass(slots=True)
class Answer:
    """What one model call returned, as templates see it."""

    value: Any
    tokens: int  # input + output, counted against the run's budget


class Models(Protocol):
    """How a run reaches models; `path` names the step (`intent`, `answer[1]`, `sub/reply`)."""

    async def classify(self, path: str, model: str, texts: list[str], *, truncate: bool) -> Answer: ...

    async def embed(self, path: str, model: str, texts: list[str], *, truncate: bool) -> Answer: ...

    async def generate(
        self,
        path: str,
        model: str,
        *,
        prompt: str | None,
        messages: list[dict[str, str]] | None,
        sampling: dict[str, Any],
        schema: dict[str, Any] | None,
        emit: Emit | None,
    ) -> Answer: ...

    async def workflow(self, path: str, ref: str) -> tuple[Spec, str]:
        """A sub-workflow's spec and its `name@N` (for the record)."""
        ...

    def cached_vectors(self, key: str) -> np.ndarray | None: ...

    def cache_vectors(self, key: str, vectors: np.ndarray) -> None: ...


class StepFailed(ConstellationError):
    """A step failed the run: the status, type and code are the cause's; the message names the step."""

    def __init__(self, step: str, cause: ConstellationError) -> None:
        super().__init__(f"step '{step}' failed: {cause.message}", param=cause.param, code=cause.code)
        self.step = step
        self.cause = cause
        self.status = cause.status
        self.type = cause.type
        self.retry_after_s = getattr(cause, "retry_after_s", None)


class RunLimit(InvalidInput):
    code = "workflow_limit"


@dataclass(slots=True)
class Budget:
    """Tokens left to the whole run, sub-workflows included."""

    tokens_left: int

    def spend(self, path: str, tokens: int, limit: int) -> None:
        self.tokens_left -= tokens
        if self.tokens_left < 0:
            raise RunLimit(
                f"the run has used more than its {limit:,} tokens "
                f"(CONSTELLATION_WORKFLOWS__MAX_TOTAL_TOKENS) "
                f"after step '{path}'; shorten the inputs or lower the steps' max_tokens",
                param=f"steps.{path}",
            )


def step_seed(run_seed: int, path: str) -> int:
    """A step's seed: a 63-bit hash of the run's seed and the step's path, so a run's outputs do
    not depend on which steps finish first or on what else shares the batch."""
    digest = hashlib.sha256(f"{run_seed}/{path}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def case_key(value: Any) -> str:
    """How a switch compares: `true`/`false` for booleans, else the text of the value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@dataclass(slots=True)
class Run:
    spec: Spec
    inputs: dict[str, Any]
    models: Models
    limits: WorkflowLimits
    seed: int | None = None
    prefix: str = ""  # "sub/" inside a sub-workflow
    depth: int = 1
    budget: Budget | None = None
    outputs: dict[str, Any] = field(default_factory=dict)
    selected: dict[str, str] = field(default_factory=dict)  # switch -> the step it chose
    _tasks: dict[str, asyncio.Task[Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.budget is None:
            self.budget = Budget(self.limits.max_total_tokens)

    async def execute(self, emit: Emit | None = None) -> Any:
        """Run every ungated step; returns the output step's value."""
        gates = graph.gated(self.spec)
        for name in self.spec.steps:
            if name not in gates and name != self.spec.output:
                self._start(name, None)
        try:
            out = await self._demand(self.spec.output, emit)
            await asyncio.gather(*list(self._tasks.values()))
        except BaseException:
            await self.cancel()
            raise
        return out

    async def cancel(self) -> None:
        for t in self._tasks.values():
            t.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    def _start(self, name: str, emit: Emit | None) -> asyncio.Task[Any]:
        task = self._tasks.get(name)
        if task is None:
            task = self._tasks[name] = asyncio.ensure_future(self._guarded(self.spec.steps[name], emit))
        return task

    async def _demand(self, name: str, emit: Emit | None = None) -> Any:
        return await self._start(name, emit)

    async def _guarded(self, step: Step, emit: Emit | None) -> Any:
        path = self.prefix + step.name
        try:
            await asyncio.gather(*(self._demand(d) for d in sorted(graph.waits_for(step))))
            value = await self._run(step, path, emit)
        except StepFailed:
            raise
        except ConstellationError as e:
            raise StepFailed(path, e) from None
        self.outputs[step.name] = value
        return value

    def _ctx(self, **extra: Any) -> dict[str, Any]:
        return {"inputs": self.inputs, "steps": self.outputs, **extra}

    def _where(self, step: Step, what: str) -> str:
        return f"steps.{self.prefix}{step.name}.{what}"

    async def _run(self, step: Step, path: str, emit: Emit | None) -> Any:
        if step.call is not None and step.kind not in ("map", "nearest"):
            return await self._call(step.call, path, self._ctx(), self._where(step, step.kind), emit)
        return await getattr(self, f"_{step.kind}")(step, path, emit)

    async def _call(
        self, call: ModelCall, path: str, ctx: dict[str, Any], where: str, emit: Emit | None
    ) -> Any:
        args = render_tree(call.args, ctx, where=where)
        if call.kind in ("classify", "embed"):
            texts = [args["input"]] if isinstance(args["input"], str) else list(args["input"])
            if not all(t.strip() for t in texts):
                raise InvalidInput(f"{where}.input: rendered to an empty text", param=f"{where}.input")
            fn = self.models.classify if call.kind == "classify" else self.models.embed
            answer = await fn(path, call.model, texts, truncate=call.truncate)
            value = answer.value[0] if isinstance(args["input"], str) else {"items": answer.value}
        else:
            answer = await self.models.generate(
                path,
                call.model,
                prompt=args.get("prompt"),
                messages=_messages(call, args),
                sampling=self._sampling(call, path),
                schema=call.schema,
                emit=emit,
            )
            value = answer.value
        assert self.budget is not None
        self.budget.spend(path, answer.tokens, self.limits.max_total_tokens)
        return value

    def _sampling(self, call: ModelCall, path: str) -> dict[str, Any]:
        if self.seed is None or "seed" in call.sampling:
            return call.sampling
        return {**call.sampling, "seed": step_seed(self.seed, path)}

    async def _switch(self, step: Step, path: str, emit: Emit | None) -> Any:
        assert step.on is not None
        key = case_key(step.on.evaluate(self._ctx(), where=self._where(step, "switch.on")))
        target = next((t for k, t in step.cases.items() if case_key(_yaml_key(k)) == key), step.default)
        if target is None:
            where = self._where(step, "switch.cases")
            raise InvalidInput(
                f"{where}: no case matches {key!r} (cases: {', '.join(step.cases)}) and the switch has no "
                "default; add a default or a case for it",
                param=where,
                code="workflow_no_matching_case",
            )
        self.selected[step.name] = target
        return await self._demand(target, emit)

    async def _cascade(self, step: Step, path: str, emit: Emit | None) -> Any:
        for i, tier in enumerate(step.tiers):
            last = i == len(step.tiers) - 1
            where = self._where(step, f"cascade[{i}]")
            value = await self._call(tier.call, f"{path}[{i}]", self._ctx(), where, emit if last else None)
            if last or self._accepts(tier, value, where):
                if not last and emit is not None and isinstance(value, dict) and "text" in value:
                    await emit(value["text"])  # an accepted early tier: its answer in one piece
                out = {**value, "tier": i, "model": tier.call.model} if isinstance(value, dict) else value
                self.selected[step.name] = f"{step.name}[{i}]"
                return out
        raise AssertionError("the last tier is always accepted")

    def _accepts(self, tier: Tier, value: Any, where: str) -> bool:
        if tier.accept is not None:
            return bool(tier.accept.evaluate(self._ctx(output=value), where=f"{where}.accept"))
        assert tier.threshold is not None
        items = value.get("items", [value])
        return min(float(v["confidence"]) for v in items) >= tier.threshold

    async def _map(self, step: Step, path: str, emit: Emit | None) -> Any:
        assert step.over is not None and step.call is not None
        where = self._where(step, "map")
        items = step.over.evaluate(self._ctx(), where=f"{where}.over")
        if not isinstance(items, list | tuple):
            raise InvalidInput(
                f"{where}.over: evaluated to {type(items).__name__}, not a list", param=f"{where}.over"
            )
        if len(items) > self.limits.max_fan_out:
            raise RunLimit(
                f"{where}.over: {len(items)} items, over the fan-out limit of {self.limits.max_fan_out} "
                "(CONSTELLATION_WORKFLOWS__MAX_FAN_OUT)",
                param=f"{where}.over",
            )
        if not items:
            return {"items": []}
        call = step.call
        if call.kind in ("classify", "embed"):  # one request: the engine batches the items together
            texts = [
                render_tree(call.args["input"], self._ctx(item=x), where=f"{where}.input") for x in items
            ]
            if not all(isinstance(t, str) and t.strip() for t in texts):
                raise InvalidInput(
                    f"{where}.input: each item must render to one non-empty text", param=f"{where}.input"
                )
            fn = self.models.classify if call.kind == "classify" else self.models.embed
            answer = await fn(path, call.model, texts, truncate=call.truncate)
            assert self.budget is not None
            self.budget.spend(path, answer.tokens, self.limits.max_total_tokens)
            return {"items": answer.value}
        wheres = f"{where}.{call.kind}"
        outs = await asyncio.gather(
            *(self._call(call, f"{path}[{i}]", self._ctx(item=x), wheres, None) for i, x in enumerate(items))
        )
        return {"items": list(outs)}

    async def _nearest(self, step: Step, path: str, emit: Emit | None) -> Any:
        assert step.call is not None and step.query is not None
        where = self._where(step, "nearest")
        query = step.query.render(self._ctx(), where=f"{where}.query")
        if step.texts_from is not None:
            texts = step.texts_from.evaluate(self._ctx(), where=f"{where}.texts")
            if not (
                isinstance(texts, list) and texts and all(isinstance(t, str) and t.strip() for t in texts)
            ):
                raise InvalidInput(
                    f"{where}.texts: must evaluate to a non-empty list of texts", param=f"{where}.texts"
                )
            if len(texts) > self.limits.max_fan_out:
                raise RunLimit(
                    f"{where}.texts: {len(texts)} texts, over the fan-out limit of {self.limits.max_fan_out}",
                    param=f"{where}.texts",
                )
            vectors = await self._embed(path + ".texts", step.call.model, list(texts))
        else:
            assert step.texts is not None
            texts = list(step.texts)
            key = hashlib.sha256(json.dumps([step.call.model, texts]).encode()).hexdigest()
            cached = self.models.cached_vectors(key)
            if cached is None:  # the first run embeds them (and pays for it); later runs reuse them
                cached = await self._embed(path + ".texts", step.call.model, texts)
                self.models.cache_vectors(key, cached)
            vectors = cached
        q = (await self._embed(path, step.call.model, [query]))[0]
        scores = vectors @ q / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(q) + 1e-12)  # [n]
        top = np.argsort(-scores, kind="stable")[: step.top_k]
        return {"matches": [{"index": int(i), "text": texts[i], "score": float(scores[i])} for i in top]}

    async def _embed(self, path: str, model: str, texts: list[str]) -> np.ndarray:
        answer = await self.models.embed(path, model, texts, truncate=True)
        assert self.budget is not None
        self.budget.spend(path, answer.tokens, self.limits.max_total_tokens)
        return np.stack([np.asarray(v["embedding"], dtype=np.float32) for v in answer.value])  # [n, d]

    async def _workflow(self, step: Step, path: str, emit: Emit | None) -> Any:
        assert step.workflow is not None
        where = self._where(step, "workflow")
        if self.depth >= self.limits.max_depth:
            raise RunLimit(f"{where}: sub-workflows nest deeper than {self.limits.max_depth}", param=where)
        spec, _ = await self.models.workflow(path, step.workflow)
        raw = {k: v.render(self._ctx(), where=f"{where}.inputs.{k}") for k, v in step.inputs.items()}
        inputs = check_inputs(spec, {k: _typed(spec, k, v) for k, v in raw.items()})
        sub = Run(
            spec,
            inputs,
            self.models,
            self.limits,
            self.seed,
            prefix=f"{path}/",
            depth=self.depth + 1,
            budget=self.budget,
        )
        try:
            return await sub.execute(emit)
        finally:
            for k, v in sub.selected.items():
                self.selected[f"{step.name}/{k}"] = v


def _yaml_key(k: str) -> Any:
    """Case keys are stored as text; YAML's `true:` became 'True' on the way."""
    return {"True": True, "False": False}.get(k, k)


def _typed(spec: Spec, name: str, rendered: str) -> Any:
    """A rendered template is text; a sub-workflow input of another type is parsed as JSON."""
    decl = spec.inputs.get(name)
    if decl is None or decl.type == "string":
        return rendered
    try:
        return json.loads(rendered)
    except ValueError:
        return rendered  # check_inputs names the input and the type it wanted


def _messages(call: ModelCall, args: dict[str, Any]) -> list[dict[str, str]] | None:
    if "messages" in args:
        return [{"role": m["role"], "content": m["content"]} for m in args["messages"]]
    if call.kind == "extract":
        return [{"role": "user", "content": args["input"]}]
    return None
