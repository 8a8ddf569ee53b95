"""`GET /v1/models`: the models this tenant may use, OpenAI's shape plus a `constellation`
extension (task, kind, base, licence, lineage)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from sqlalchemy.orm import Session

from constellation.api.deps import InferenceCaller, SessionDep
from constellation.registry import models as repo
from constellation.registry.tables import Model

router = APIRouter(prefix="/v1", tags=["openai"])


def openai_model(s: Session, m: Model) -> dict[str, Any]:
    lin = repo.lineage(s, model=m)
    return {
        "id": m.name,
        "object": "model",
        "created": int(m.created_at.timestamp()),
        "owned_by": m.author_id,
        "constellation": {
            "task": m.task,
            "kind": m.kind,
            "base": lin.base.name if lin.base else None,
            "license": m.licence_id,
            "labels": m.labels,
            "lineage": repo.lineage_dict(lin),
        },
    }


@router.get("/models")
def list_models(caller: InferenceCaller, s: SessionDep) -> dict[str, Any]:
    """List the models the calling tenant can use (public ones and its own private ones)."""
    return {
        "object": "list",
        "data": [openai_model(s, m) for m in repo.list_models(s, tenant_id=caller.tenant_id)],
    }


@router.get("/models/{name}")
def get_model(name: str, caller: InferenceCaller, s: SessionDep) -> dict[str, Any]:
    """One model, if the calling tenant can see it."""
    return openai_model(s, repo.get_visible_model(s, name=name, tenant_id=caller.tenant_id))
