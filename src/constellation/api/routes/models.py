"""`GET /v1/models`: the models this tenant can see, OpenAI's shape plus a `constellation`
extension (task, kind -- `provider` for an upstream's model --, base, licence, lineage, and
whether its licences and the tenant's data residency permit this tenant's use)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from sqlalchemy.orm import Session

from constellation.api import workflow_models
from constellation.api.deps import InferenceCaller, SessionDep
from constellation.api.protocol.responses import ModelCard, ModelList, errors
from constellation.errors import NotFound
from constellation.registry import models as repo
from constellation.registry.effective import EffectiveTerms, Refusal, permissions
from constellation.registry.providers import RESIDENCY_CODE, provider_of, residency_refusal
from constellation.registry.tables import Model, Provider, Tenant
from constellation.registry.tenants import get_tenant

router = APIRouter(prefix="/v1", tags=["openai"], responses=errors(401, 403))
Verdict = tuple[EffectiveTerms, Refusal | None]


def openai_model(
    s: Session, m: Model, verdict: Verdict | None = None, provider: Provider | None = None
) -> dict[str, Any]:
    lin = repo.lineage(s, model=m)
    upstream = {
        "provider": provider.id if provider else None,
        "on_platform": provider.on_platform if provider else None,
    }
    return {
        "id": m.name,
        "object": "model",
        "created": int(m.created_at.timestamp()),
        "owned_by": m.author_id,
        "constellation": {
            "task": m.task,
            "kind": "provider" if provider else m.kind,
            "base": lin.base.name if lin.base else None,
            "license": m.licence_id,
            "labels": m.labels,
            "lineage": repo.lineage_dict(lin),
            **upstream,
            **(_licence_fields(*verdict) if verdict else {}),
        },
    }


def _licence_fields(terms: EffectiveTerms, refusal: Refusal | None) -> dict[str, Any]:
    """`permitted` says whether this tenant's declarations allow the model; when not, `refusal`
    carries the code and message a request would get (403)."""
    return {
        "permitted": refusal is None,
        "refusal": {"code": refusal.code, "message": refusal.message} if refusal else None,
        "notices": terms.notices,
    }


@router.get("/models", response_model=ModelList)
def list_models(caller: InferenceCaller, s: SessionDep) -> dict[str, Any]:
    """List the models the calling tenant can see (public ones and its own private ones); each
    says in `constellation.permitted` whether the licences of its lineage permit this tenant's
    declared use, and if not, why (`constellation.refusal`)."""
    found = repo.list_models(s, tenant_id=caller.tenant_id)
    tenant = get_tenant(s, id=caller.tenant_id)
    verdicts = with_residency(
        tenant, found, permissions(s, tenant=tenant, models=found), exposed := provider_of(s)
    )
    return {
        "object": "list",
        "data": [openai_model(s, m, verdicts[m.name], exposed.get(m.id)) for m in found]
        + workflow_models.models_entries(s, caller.tenant_id, verdicts),  # constellation.kind = "workflow"
    }


@router.get("/models/{name}", response_model=ModelCard, responses=errors(404))
def get_model(name: str, caller: InferenceCaller, s: SessionDep) -> dict[str, Any]:
    """One model (or workflow), if the calling tenant can see it."""
    try:
        m = repo.get_visible_model(s, name=name, tenant_id=caller.tenant_id)
    except NotFound as e:  # perhaps a workflow: listed as /v1/models lists it
        found = {w["id"]: w for w in list_models(caller, s)["data"]}
        if name not in found:
            raise e from None
        return found[name]
    tenant = get_tenant(s, id=caller.tenant_id)
    verdicts = with_residency(
        tenant, [m], permissions(s, tenant=tenant, models=[m]), exposed := provider_of(s)
    )
    return openai_model(s, m, verdicts[m.name], exposed.get(m.id))


def with_residency(
    tenant: Tenant, found: list[Model], verdicts: dict[str, Verdict], exposed: dict[int, Provider]
) -> dict[str, Verdict]:
    """The licence verdicts, with a provider model the tenant's data may not reach refused first."""
    out = dict(verdicts)
    for m in found:
        p = exposed.get(m.id)
        why = residency_refusal(tenant, m, p) if p else None
        if why is not None:
            out[m.name] = (verdicts[m.name][0], Refusal(RESIDENCY_CODE, why))
    return out
