"""Models and their lineage: bases, adapters and full fine-tunes, each with an artifact, a
licence, an author, a task and (for derived models) a base and the data sets it learned from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from constellation.errors import Conflict, InvalidInput, NotFound
from constellation.registry._common import check_slug
from constellation.registry.contributors import get_contributor
from constellation.registry.licences import get_licence
from constellation.registry.tables import MODEL_KINDS, TASKS, Dataset, Model, ModelDataset, Tenant


def add_model(
    s: Session,
    *,
    name: str,
    kind: str,
    task: str,
    artifact_digest: str,
    licence_id: str,
    author_id: str,
    base_name: str | None = None,
    labels: list[str] | None = None,
    card: dict[str, Any] | None = None,
    visibility: str = "public",
    owner_tenant_id: str | None = None,
) -> Model:
    check_slug(name, what="model name")
    if kind not in MODEL_KINDS:
        raise InvalidInput(f"unknown model kind '{kind}'; use one of {', '.join(MODEL_KINDS)}", param="kind")
    if task not in TASKS:
        raise InvalidInput(f"unknown task '{task}'; use one of {', '.join(TASKS)}", param="task")
    if s.scalar(select(Model.id).where(Model.name == name)) is not None:
        raise Conflict(
            f"a model named '{name}' already exists; pick another name or remove it first", code="duplicate"
        )
    base = _check_base(s, kind=kind, task=task, base_name=base_name)
    if task == "classification" and not labels:
        raise InvalidInput(
            "a classification model needs its labels (e.g. --labels positive,negative)", param="labels"
        )
    if visibility not in ("public", "private"):
        raise InvalidInput("visibility must be 'public' or 'private'", param="visibility")
    if visibility == "private" and owner_tenant_id is None:
        raise InvalidInput("a private model needs an owner tenant", param="owner_tenant")
    if owner_tenant_id is not None and s.get(Tenant, owner_tenant_id) is None:
        raise NotFound(f"no tenant '{owner_tenant_id}'", code="tenant_not_found")
    get_licence(s, id=licence_id)
    get_contributor(s, id=author_id)
    m = Model(
        name=name,
        kind=kind,
        task=task,
        base_id=base.id if base else None,
        artifact_digest=artifact_digest,
        licence_id=licence_id,
        author_id=author_id,
        labels=labels,
        card=card or {},
        visibility=visibility,
        owner_tenant_id=owner_tenant_id,
    )
    s.add(m)
    s.flush()
    return m


def _check_base(s: Session, *, kind: str, task: str, base_name: str | None) -> Model | None:
    if kind == "base":
        if base_name:
            raise InvalidInput(
                "a base model has no base; register it as an adapter or finetune", param="base"
            )
        return None
    if not base_name:
        raise InvalidInput(f"a {kind} needs its base model (--base NAME)", param="base")
    base = get_model(s, name=base_name)
    if public_kind(base) == "provider":
        raise InvalidInput(
            f"'{base_name}' is served by an upstream provider: its weights are not here to adapt. "
            "Train on its outputs instead (register them as a data set with outputs_of)",
            param="base",
        )
    if base.kind != "base":
        raise InvalidInput(
            f"'{base_name}' is a {base.kind}, not a base model; adapters attach to base models", param="base"
        )
    decoder = task == "causal-lm"
    if decoder != (base.task == "causal-lm"):
        raise InvalidInput(f"a {task} {kind} cannot sit on '{base_name}', a {base.task} model", param="task")
    return base


def get_model(s: Session, *, name: str) -> Model:
    m = s.scalar(select(Model).where(Model.name == name))
    if m is None:
        raise NotFound(
            f"the model '{name}' does not exist; GET /v1/models lists the models you can use",
            param="model",
            code="model_not_found",
        )
    return m


def visible_to(m: Model, tenant_id: str | None) -> bool:
    return m.visibility == "public" or (tenant_id is not None and m.owner_tenant_id == tenant_id)


def get_visible_model(s: Session, *, name: str, tenant_id: str) -> Model:
    """Like get_model, but another tenant's private model is reported as not existing."""
    m = get_model(s, name=name)
    if not visible_to(m, tenant_id):
        raise NotFound(
            f"the model '{name}' does not exist; GET /v1/models lists the models you can use",
            param="model",
            code="model_not_found",
        )
    return m


def list_models(s: Session, *, tenant_id: str | None = None, all_tenants: bool = False) -> list[Model]:
    q = select(Model).order_by(Model.name)
    if not all_tenants:
        q = q.where(or_(Model.visibility == "public", Model.owner_tenant_id == tenant_id))
    return list(s.scalars(q))


def remove_model(s: Session, *, name: str) -> None:
    m = get_model(s, name=name)
    children = list(s.scalars(select(Model.name).where(Model.base_id == m.id)))
    if children:
        raise Conflict(f"'{name}' is the base of {', '.join(children)}; remove those first", code="in_use")
    s.delete(m)
    s.flush()


def link_dataset(s: Session, *, model: Model, dataset: Dataset, weight: int) -> None:
    if weight <= 0:
        raise InvalidInput("a lineage weight must be a positive integer", param="weight")
    s.add(ModelDataset(model_id=model.id, dataset_id=dataset.id, weight=weight))
    s.flush()
    s.refresh(model)


@dataclass(slots=True)
class Lineage:
    """Everything a model is made of, nearest first: the model, its base, its data sets."""

    model: Model
    base: Model | None
    datasets: list[tuple[Dataset, int]] = field(default_factory=list)

    @property
    def models(self) -> list[Model]:
        return [self.model] + ([self.base] if self.base else [])


def lineage(s: Session, *, model: Model) -> Lineage:
    base = s.get(Model, model.base_id) if model.base_id else None
    return Lineage(
        model=model, base=base, datasets=[(link.dataset, link.weight) for link in model.dataset_links]
    )


def lineage_dict(lin: Lineage) -> dict[str, Any]:
    return {
        "base": lin.base.name if lin.base else None,
        "base_license": lin.base.licence_id if lin.base else None,
        "datasets": [
            {"name": d.name, "weight": w, "license": d.licence_id, "provider": d.provider_id}
            for d, w in lin.datasets
        ],
    }


def public_kind(m: Model) -> str:
    """The kind shown to people: 'provider' for an upstream's model (stored as a base: it has no
    base and no weights here; registry/providers.py writes the card that says so)."""
    return "provider" if m.kind == "base" and (m.card or {}).get("provider") else m.kind


def model_dict(m: Model, lin: Lineage) -> dict[str, Any]:
    return {
        "name": m.name,
        "kind": public_kind(m),
        "task": m.task,
        "base": lin.base.name if lin.base else None,
        "license": m.licence_id,
        "author": m.author_id,
        "labels": m.labels,
        "visibility": m.visibility,
        "owner_tenant": m.owner_tenant_id,
        "artifact": m.artifact_digest,
        "card": m.card,
        "lineage": lineage_dict(lin),
        "created_at": m.created_at.isoformat(),
    }
