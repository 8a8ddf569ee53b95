"""Admin routes for the catalog: models and adapters (imported from directories on the
server), data sets, contributors and contribution terms. All need the `admin` scope."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, status

from constellation.api.deps import Admin, PlatformDep, SessionDep
from constellation.api.protocol.responses import errors
from constellation.api.schemas.admin import (
    ContributorIn,
    ContributorOut,
    DatasetCreated,
    DatasetIn,
    DatasetOut,
    ModelDetail,
    ModelOut,
    TermIn,
    TermOut,
)
from constellation.registry import contributors as contrib_repo
from constellation.registry import datasets as ds_repo
from constellation.registry import models as model_repo
from constellation.registry import service
from constellation.registry import terms as terms_repo
from constellation.registry.effective import effective_terms
from constellation.registry.inputs import AdapterIn, BaseIn

router = APIRouter(prefix="/api", tags=["admin"], responses=errors(400, 401, 403, 404))


def _model_out(s: Any, m: Any) -> dict[str, Any]:
    return model_repo.model_dict(m, model_repo.lineage(s, model=m))


@router.get("/models", response_model=list[ModelOut])
def list_models(_: Admin, s: SessionDep) -> list[dict[str, Any]]:
    """Every registered model, all tenants' private ones included."""
    return [_model_out(s, m) for m in model_repo.list_models(s, all_tenants=True)]


@router.get("/models/{name}", response_model=ModelDetail)
def get_model(name: str, _: Admin, s: SessionDep) -> dict[str, Any]:
    """One model with its lineage and `effective_terms`: the licence terms combined over the
    lineage, each naming the element (model or data set) and licence it comes from."""
    m = model_repo.get_model(s, name=name)
    return {**_model_out(s, m), "effective_terms": effective_terms(s, model=m).as_dict()}


@router.post("/models", status_code=status.HTTP_201_CREATED, response_model=ModelOut, responses=errors(409))
def add_base(body: BaseIn, _: Admin, s: SessionDep, platform: PlatformDep) -> dict[str, Any]:
    """Register a base model from a local Hugging Face directory (safetensors weights only)."""
    return _model_out(s, service.add_base(s, platform.store, body))


@router.post("/adapters", status_code=status.HTTP_201_CREATED, response_model=ModelOut, responses=errors(409))
def add_adapter(body: AdapterIn, _: Admin, s: SessionDep, platform: PlatformDep) -> dict[str, Any]:
    """Import a PEFT adapter (adapter_config.json + adapter_model.safetensors) onto a registered base."""
    m = service.add_adapter(s, platform.store, body, max_rank=platform.settings.engine.max_lora_rank)
    return _model_out(s, m)


@router.delete("/models/{name}", status_code=status.HTTP_204_NO_CONTENT, responses=errors(409))
def remove_model(name: str, _: Admin, s: SessionDep) -> None:
    """Remove a model (refused while adapters depend on it)."""
    model_repo.remove_model(s, name=name)


@router.get("/datasets", response_model=list[DatasetOut])
def list_datasets(_: Admin, s: SessionDep) -> list[dict[str, Any]]:
    """Registered data sets."""
    return [ds_repo.dataset_dict(d) for d in ds_repo.list_datasets(s)]


@router.post(
    "/datasets", status_code=status.HTTP_201_CREATED, response_model=DatasetCreated, responses=errors(409)
)
def add_dataset(body: DatasetIn, _: Admin, s: SessionDep, platform: PlatformDep) -> dict[str, Any]:
    """Register a JSONL data set (public); bytes an operator registered before are reused
    (`created: false`), a tenant's upload of the same bytes is not."""
    d, created = service.register_dataset(
        s,
        platform.store,
        src=Path(body.path),
        name=body.name,
        licence=body.license,
        provider=body.provider,
        outputs_of=body.outputs_of,
    )
    return {**ds_repo.dataset_dict(d), "created": created}


@router.get("/contributors", response_model=list[ContributorOut])
def list_contributors(_: Admin, s: SessionDep) -> list[dict[str, Any]]:
    """Everyone who can be paid: people, organisations, infrastructure providers, the platform."""
    return [
        {"id": c.id, "name": c.name, "kind": c.kind, "email": c.email}
        for c in contrib_repo.list_contributors(s)
    ]


@router.post(
    "/contributors", status_code=status.HTTP_201_CREATED, response_model=ContributorOut, responses=errors(409)
)
def add_contributor(body: ContributorIn, _: Admin, s: SessionDep) -> dict[str, Any]:
    """Record a contributor."""
    c = contrib_repo.add_contributor(s, id=body.id, name=body.name, kind=body.kind, email=body.email)
    return {"id": c.id, "name": c.name, "kind": c.kind, "email": c.email}


@router.get("/terms", response_model=list[TermOut])
def list_terms(_: Admin, s: SessionDep) -> list[dict[str, Any]]:
    """Contribution terms of every model and data set."""
    return terms_repo.list_terms(s)


@router.put("/terms", response_model=TermOut)
def set_term(body: TermIn, _: Admin, s: SessionDep) -> dict[str, Any]:
    """Create or replace one contribution term."""
    t = terms_repo.set_term(
        s,
        subject_type=body.subject_type,
        subject_name=body.subject,
        contributor_id=body.contributor,
        kind=body.kind,
        amount_nanos=body.amount_nanos,
    )
    return {
        "subject_type": t.subject_type,
        "subject": body.subject,
        "contributor": t.contributor_id,
        "kind": t.kind,
        "amount_nanos": t.amount_nanos,
    }
