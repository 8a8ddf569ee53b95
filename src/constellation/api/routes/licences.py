"""The licence catalog: read it (an `inference` or admin key), add custom licences (admin)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, status
from sqlalchemy import select

from constellation.api.deps import Admin, InferenceCaller, SessionDep
from constellation.registry import licences as repo
from constellation.registry.tables import Licence

router = APIRouter(prefix="/api/licences", tags=["licences"])


@router.get("")
def list_licences(_: InferenceCaller, s: SessionDep) -> list[dict[str, Any]]:
    """Every licence with its machine-readable terms."""
    return [repo.licence_dict(lic) for lic in s.scalars(select(Licence).order_by(Licence.id))]


@router.get("/{id}")
def get_licence(id: str, _: InferenceCaller, s: SessionDep) -> dict[str, Any]:
    """One licence."""
    return repo.licence_dict(repo.find_licence(s, id=id))


@router.post("", status_code=status.HTTP_201_CREATED)
def add_licence(body: repo.LicenceTerms, _: Admin, s: SessionDep) -> dict[str, Any]:
    """Add a custom licence with the same fields as the catalog's."""
    return repo.licence_dict(repo.add_custom_licence(s, terms=body))
