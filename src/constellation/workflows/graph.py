"""The step graph of a workflow: which steps each one waits for, which run only when a switch
selects them, and the checks at registration (unknown steps, cycles, what the output is)."""

from __future__ import annotations

from constellation.errors import InvalidInput
from constellation.workflows.spec import Spec
from constellation.workflows.steps import Step

OutputKind = str  # "text" | "classification" | "embedding" | "json"


def waits_for(step: Step) -> set[str]:
    """The steps whose outputs this one's templates read (it starts once they are done)."""
    return {s for refs in step.refs().values() for s in refs}


def gated(spec: Spec) -> dict[str, str]:
    """Steps that run only when a switch selects them -> that switch."""
    return {t: s.name for s in spec.steps.values() if s.kind == "switch" for t in s.targets}


def check(spec: Spec) -> None:
    """Every step reference known, no cycle, switch targets ungated by templates; InvalidInput
    naming the step and the field."""
    names = set(spec.steps)
    gates = gated(spec)
    for step in spec.steps.values():
        for where, refs in step.refs().items():
            for ref in sorted(refs):
                param = f"steps.{step.name}.{where}"
                if ref not in names:
                    raise InvalidInput(
                        f"{param}: reads steps.{ref}, but there is no step '{ref}'; "
                        f"steps: {', '.join(spec.steps)}",
                        param=param,
                    )
                if ref == step.name:
                    raise InvalidInput(f"{param}: a step cannot read its own output", param=param)
                if ref in gates and gates.get(step.name) != gates[ref]:
                    raise InvalidInput(
                        f"{param}: reads steps.{ref}, which runs only when switch '{gates[ref]}' selects "
                        f"it; read steps.{gates[ref]} (the selected step's output) instead",
                        param=param,
                    )
        for target in step.targets:
            param = f"steps.{step.name}.switch"
            if target not in names:
                raise InvalidInput(
                    f"{param}: continues with '{target}', but there is no such step", param=param
                )
            if target == step.name:
                raise InvalidInput(f"{param}: a switch cannot select itself", param=param)
    selected: dict[str, str] = {}
    for step in spec.steps.values():
        for target in step.targets:
            if target in selected:
                raise InvalidInput(
                    f"steps.{step.name}.switch: '{target}' is already selected by switch "
                    f"'{selected[target]}'; give each switch its own steps",
                    param=f"steps.{step.name}.switch",
                )
            selected[target] = step.name
    order(spec)


def edges(spec: Spec) -> dict[str, set[str]]:
    """step -> the steps it needs first (template reads, and a switch's possible targets)."""
    return {s.name: waits_for(s) | set(s.targets) for s in spec.steps.values()}


def order(spec: Spec) -> list[str]:
    """A topological order; InvalidInput naming the steps of a cycle."""
    deps = edges(spec)
    state: dict[str, int] = {}  # 1: on the path, 2: done
    out: list[str] = []

    def visit(n: str, path: list[str]) -> None:
        if state.get(n) == 2:
            return
        if state.get(n) == 1:
            cycle = [*path[path.index(n) :], n]
            raise InvalidInput(
                f"steps.{n}: the steps form a cycle ({' -> '.join(cycle)}); a workflow is "
                "a directed acyclic graph",
                param=f"steps.{n}",
            )
        state[n] = 1
        for d in sorted(deps[n]):
            visit(d, [*path, n])
        state[n] = 2
        out.append(n)

    for name in spec.steps:
        visit(name, [])
    return out


def output_kind(spec: Spec, name: str | None = None, sub: dict[str, OutputKind] | None = None) -> OutputKind:
    """What the workflow (or step `name`) answers: `text` (a chat model on /v1/chat/completions),
    `classification` (/v1/classify), `embedding` or `json`. `sub`: sub-workflows' kinds."""
    step = spec.steps[name or spec.output]
    if step.kind in ("chat", "complete"):
        return "text"
    if step.kind == "classify":
        return "classification"
    if step.kind == "embed":
        return "embedding"
    if step.kind == "cascade":
        return {"classification": "classification", "causal-lm": "text"}.get(step.tiers[0].call.task, "json")
    if step.kind == "switch":
        kinds = {output_kind(spec, t, sub) for t in step.targets}
        return kinds.pop() if len(kinds) == 1 else "json"
    if step.kind == "workflow" and sub is not None:
        return sub.get(step.name, "json")
    return "json"
