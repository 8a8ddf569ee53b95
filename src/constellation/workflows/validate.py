"""Registration of a workflow: the document parsed, its graph checked, every model and
sub-workflow it can reach looked up in the registry (exists, right task, visible to the
workflow's audience), then stored as the name's next immutable version."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from constellation.config import WorkflowLimits
from constellation.errors import Conflict, Forbidden, InvalidInput, NotFound
from constellation.registry._common import check_slug, flush_or_conflict
from constellation.registry.contributors import get_contributor
from constellation.registry.effective import effective_terms
from constellation.registry.tables import Model, Tenant
from constellation.registry.workflow_tables import WorkflowVersion
from constellation.registry.workflows import get_workflow, next_version, parse_ref, versions
from constellation.workflows import graph
from constellation.workflows.spec import Spec, load_document, parse
from constellation.workflows.steps import ModelCall, Step

TASK_OF_KIND = {
    "classify": "classification",
    "embed": "embedding",
    "chat": "causal-lm",
    "complete": "causal-lm",
    "extract": "causal-lm",
}


@dataclass(slots=True)
class Checked:
    spec: Spec
    output_kind: str
    models: list[str] = field(default_factory=list)  # every model any branch can reach
    steps: int = 0  # counting sub-workflows' steps


@dataclass(frozen=True, slots=True)
class Audience:
    """Who may run the workflow: everyone (public) or its owner tenant."""

    visibility: str
    owner_tenant_id: str | None

    def sees(self, visibility: str, owner: str | None) -> bool:
        return visibility == "public" or (self.visibility == "private" and owner == self.owner_tenant_id)


def check(
    s: Session,
    spec: Spec,
    *,
    name: str,
    audience: Audience,
    limits: WorkflowLimits,
    chain: tuple[str, ...] = (),
) -> Checked:
    """Everything a run needs from the registry is there, or InvalidInput/Forbidden naming the
    step and the field."""
    graph.check(spec)
    chain = (*chain, name)
    out = Checked(spec, "json", steps=len(spec.steps))
    sub_kinds: dict[str, str] = {}
    for step in spec.steps.values():
        for i, call in enumerate(step.calls()):
            _check_model(s, step, call, _field(step, i), audience, out)
        if step.kind == "workflow":
            sub_kinds[step.name] = _check_sub(s, step, audience, limits, chain, out)
    if out.steps > limits.max_steps:
        raise InvalidInput(
            f"the workflow has {out.steps} steps (sub-workflows included); at most "
            f"{limits.max_steps} are allowed (CONSTELLATION_WORKFLOWS__MAX_STEPS)",
            param="steps",
            code="workflow_too_large",
        )
    out.output_kind = graph.output_kind(spec, sub=sub_kinds)
    out.models = list(dict.fromkeys(out.models))
    return out


def _field(step: Step, i: int) -> str:
    if step.kind == "cascade":
        return f"steps.{step.name}.cascade[{i}].{step.tiers[i].call.kind}.model"
    if step.kind in ("map",):
        return f"steps.{step.name}.map.{step.call.kind if step.call else ''}.model"
    return f"steps.{step.name}.{step.kind}.model"


def _check_model(
    s: Session, step: Step, call: ModelCall, where: str, audience: Audience, out: Checked
) -> None:
    m = s.scalar(select(Model).where(Model.name == call.model))
    if m is None:
        raise InvalidInput(
            f"{where}: there is no model '{call.model}'; `constellation models list` names them",
            param=where,
            code="model_not_found",
        )
    want = "embedding" if step.kind == "nearest" else TASK_OF_KIND[call.kind]
    if m.task != want:
        raise InvalidInput(
            f"{where}: '{m.name}' is a {m.task} model; a {call.kind} step needs a {want} model",
            param=where,
            code="wrong_task",
        )
    if call.kind == "classify" and m.kind == "base":
        raise InvalidInput(
            f"{where}: '{m.name}' has no classification head; use a classification adapter",
            param=where,
            code="wrong_task",
        )
    if not audience.sees(m.visibility, m.owner_tenant_id):
        raise Forbidden(
            f"{where}: '{m.name}' is private to tenant '{m.owner_tenant_id}', and this workflow "
            f"would be {_who(audience)}; register it as private to that tenant, or use a public "
            "model",
            param=where,
            code="model_not_visible",
        )
    out.models.append(m.name)


def _who(a: Audience) -> str:
    return "public" if a.visibility == "public" else f"private to tenant '{a.owner_tenant_id}'"


def _check_sub(
    s: Session, step: Step, audience: Audience, limits: WorkflowLimits, chain: tuple[str, ...], out: Checked
) -> str:
    where = f"steps.{step.name}.workflow.name"
    assert step.workflow is not None
    sub_name, _ = parse_ref(step.workflow)
    if sub_name in chain:
        raise InvalidInput(
            f"{where}: calling '{sub_name}' makes a cycle ({' -> '.join([*chain, sub_name])}); "
            "a workflow may not call itself, directly or through others",
            param=where,
            code="workflow_cycle",
        )
    if len(chain) >= limits.max_depth:
        raise InvalidInput(
            f"{where}: sub-workflows nest {len(chain) + 1} deep; at most {limits.max_depth} "
            "(CONSTELLATION_WORKFLOWS__MAX_DEPTH)",
            param=where,
            code="workflow_too_deep",
        )
    try:
        sub = get_workflow(s, ref=step.workflow)
    except NotFound:
        raise InvalidInput(
            f"{where}: there is no workflow '{step.workflow}'", param=where, code="workflow_not_found"
        ) from None
    if not audience.sees(sub.visibility, sub.owner_tenant_id):
        raise Forbidden(
            f"{where}: the workflow '{sub.name}' is private to tenant '{sub.owner_tenant_id}'",
            param=where,
            code="model_not_visible",
        )
    sub_spec = parse(sub.document)
    for k in step.inputs:
        if k not in sub_spec.inputs:
            raise InvalidInput(
                f"steps.{step.name}.workflow.inputs.{k}: '{sub.name}' takes no input '{k}'; it "
                f"takes {', '.join(sub_spec.inputs) or 'none'}",
                param=f"steps.{step.name}.workflow.inputs.{k}",
            )
    missing = [k for k, d in sub_spec.inputs.items() if d.required and k not in step.inputs]
    if missing:
        raise InvalidInput(
            f"steps.{step.name}.workflow.inputs.{missing[0]}: required by '{sub.name}'",
            param=f"steps.{step.name}.workflow.inputs.{missing[0]}",
        )
    inner = check(s, sub_spec, name=sub_name, audience=audience, limits=limits, chain=chain)
    out.models += inner.models
    out.steps += inner.steps
    return inner.output_kind


def register(
    s: Session,
    *,
    name: str,
    source: str,
    author_id: str,
    limits: WorkflowLimits,
    visibility: str = "public",
    owner_tenant_id: str | None = None,
    fee_per_run_nanos: int | None = None,
) -> WorkflowVersion:
    """Store `source` as the next version of `name`; nothing is stored if any check fails."""
    check_slug(name, what="workflow name")
    if s.scalar(select(Model.id).where(Model.name == name)) is not None:
        raise Conflict(
            f"'{name}' is already a model's name; a workflow is called like a model, so pick another name",
            param="name",
            code="duplicate",
        )
    if visibility not in ("public", "private"):
        raise InvalidInput("visibility must be 'public' or 'private'", param="visibility")
    if visibility == "private" and owner_tenant_id is None:
        raise InvalidInput("a private workflow needs an owner tenant", param="owner_tenant")
    if owner_tenant_id is not None and s.get(Tenant, owner_tenant_id) is None:
        raise NotFound(f"no tenant '{owner_tenant_id}'", code="tenant_not_found")
    get_contributor(s, id=author_id)
    doc = load_document(source)
    spec = parse(doc)
    checked = check(s, spec, name=name, audience=Audience(visibility, owner_tenant_id), limits=limits)
    fee = spec.fee_per_run_nanos if fee_per_run_nanos is None else fee_per_run_nanos
    if not 0 <= fee <= 10**12:
        raise InvalidInput("the per-run fee is 0 to 1e12 nano-USD", param="fee_per_run_nanos")
    wf = WorkflowVersion(
        name=name,
        version=next_version(s, name),
        source=source,
        document=doc,
        author_id=author_id,
        fee_per_run_nanos=fee,
        visibility=visibility,
        owner_tenant_id=owner_tenant_id,
        output_kind=checked.output_kind,
        models=checked.models,
    )
    s.add(wf)
    flush_or_conflict(s, f"another version of '{name}' was registered at the same moment; register it again")
    return wf


def describe(s: Session, wf: WorkflowVersion) -> dict[str, Any]:
    """A workflow version as `workflows show` and GET /api/workflows/{name} print it, with its
    effective licence terms: the union over every model any branch can reach."""
    spec = parse(wf.document)
    per_model = {}
    for name in wf.models:
        m = s.scalar(select(Model).where(Model.name == name))
        if m is not None:
            per_model[name] = effective_terms(s, model=m).as_dict()
    terms = {
        "commercial_use": all(t["commercial_use"] for t in per_model.values()),
        "notices": list(dict.fromkeys(n for t in per_model.values() for n in t["notices"])),
        "acceptance_required": list(
            dict.fromkeys(a for t in per_model.values() for a in t["acceptance_required"])
        ),
        "commercial_blockers": [b for t in per_model.values() for b in t["commercial_blockers"]],
        "models": per_model,
    }
    return {
        "name": wf.name,
        "version": wf.version,
        "versions": versions(s, name=wf.name),
        "description": spec.description,
        "author": wf.author_id,
        "fee_per_run_nanos": wf.fee_per_run_nanos,
        "visibility": wf.visibility,
        "owner_tenant": wf.owner_tenant_id,
        "output_kind": wf.output_kind,
        "inputs": {
            k: {"type": d.type, "required": d.required, "default": d.default, "description": d.description}
            for k, d in spec.inputs.items()
        },
        "output": spec.output,
        "graph": graph_dict(spec),
        "models": wf.models,
        "effective_terms": terms,
        "document": wf.source,
        "created_at": wf.created_at.isoformat(),
    }


def graph_dict(spec: Spec) -> dict[str, Any]:
    """Nodes and edges for drawing (the dashboard): `data` edges carry outputs, `select` edges
    are a switch's possible continuations."""
    nodes = []
    for st in spec.steps.values():
        models = [c.model for c in st.calls()]
        nodes.append({"id": st.name, "kind": st.kind, "models": models, "workflow": st.workflow})
    edges = [
        {"from": d, "to": st.name, "kind": "data"}
        for st in spec.steps.values()
        for d in sorted(graph.waits_for(st))
    ]
    edges += [{"from": st.name, "to": t, "kind": "select"} for st in spec.steps.values() for t in st.targets]
    return {"nodes": nodes, "edges": edges, "output": spec.output}
