"""Admin routes for the catalog: models and adapters (imported from directories on the
server), data sets, contributors and contribution terms. All need the `admin` scope."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, status
from pydantic import BaseModel, ConfigDict, Field

from constellation.api.deps import Admin, PlatformDep, SessionDep
from constellation.api.protocol import LineageOut, errors
from constellation.economy.money import MAX_RATE_NANOS
from constellation.registry import contributors as contrib_repo
from constellation.registry import datasets as ds_repo
from constellation.registry import models as model_repo
from constellation.registry import service
from constellation.registry import terms as terms_repo
from constellation.registry.effective import effective_terms
from constellation.registry.inputs import AdapterIn, BaseIn

router = APIRouter(prefix="/api", tags=["admin"], responses=errors(400, 401, 403, 404))


class DatasetIn(BaseModel):
    name: str
    path: str = Field(description="a JSONL file on the server")
    license: str
    provider: str
    outputs_of: list[str] = Field(
        default_factory=list,
        max_length=100,
        description="models (e.g. a provider's) whose outputs the data set holds: models trained "
        "on it inherit their licences",
    )


class ContributorIn(BaseModel):
    id: str
    name: str
    kind: Literal["person", "organisation", "infrastructure", "platform"]
    email: str | None = None


class TermIn(BaseModel):
    subject_type: Literal["model", "dataset"]
    subject: str
    contributor: str
    kind: Literal["per_1k_input_tokens", "per_1k_output_tokens", "per_request", "per_compute_second"]
    amount_nanos: int = Field(
        ge=0, le=MAX_RATE_NANOS, description="integer nano-USD (1e-9 USD); at most 10**12"
    )


class ModelOut(BaseModel):
    name: str
    kind: str = Field(description="base, adapter, finetune or provider")
    task: str
    base: str | None
    license: str | None
    author: str | None
    labels: list[str] | None
    visibility: Literal["public", "private"]
    owner_tenant: str | None
    artifact: str | None = Field(description="sha256 of the stored weights")
    card: dict[str, Any]
    lineage: LineageOut
    created_at: str


class TermRef(BaseModel):
    text: str
    artifact: str
    artifact_type: str
    license: str


class EffectiveTermsOut(BaseModel):
    """The licence terms combined over a model's lineage; each term names where it comes from."""

    model_config = ConfigDict(extra="allow")

    commercial_use: bool
    commercial_blockers: list[TermRef]
    notices: list[str]
    attributions: list[TermRef]
    restrictions: list[TermRef]
    acceptance_required: list[str]
    user_limit: int | None
    user_limit_source: TermRef | None
    share_alike: list[TermRef]


class ModelDetail(ModelOut):
    effective_terms: EffectiveTermsOut


class DatasetOut(BaseModel):
    name: str
    sha256: str
    example_count: int
    license: str
    provider: str
    artifact: str | None
    owner_tenant: str | None
    created_at: str


class DatasetCreated(DatasetOut):
    created: bool = Field(description="false when the same bytes were registered before")


class ContributorOut(BaseModel):
    id: str
    name: str
    kind: str
    email: str | None


class TermOut(BaseModel):
    subject_type: Literal["model", "dataset"]
    subject: str | None = Field(description="null when the subject was removed")
    contributor: str
    kind: str
    amount_nanos: int


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
