"""The licence catalog: read it (an `inference` or admin key), add custom licences (admin)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, status
from sqlalchemy import select

from constellation.api.deps import Admin, InferenceCaller, SessionDep
from constellation.api.protocol.responses import errors
from constellation.api.schemas.licences import LicenceOut
from constellation.registry import licences as repo
from constellation.registry.tables import Licence

router = APIRouter(prefix="/api/licences", tags=["licences"], responses=errors(401, 403))


@router.get("", response_model=list[LicenceOut])
def list_licences(_: InferenceCaller, s: SessionDep) -> list[dict[str, Any]]:
    """Every licence with its machine-readable terms."""
    return [repo.licence_dict(lic) for lic in s.scalars(select(Licence).order_by(Licence.id))]


@router.get("/{id}", response_model=LicenceOut, responses=errors(404))
def get_licence(id: str, _: InferenceCaller, s: SessionDep) -> dict[str, Any]:
    """One licence."""
    return repo.licence_dict(repo.find_licence(s, id=id))


@router.post("", status_code=status.HTTP_201_CREATED, response_model=LicenceOut, responses=errors(400, 409))
def add_licence(body: repo.LicenceTerms, _: Admin, s: SessionDep) -> dict[str, Any]:
    """Add a custom licence with the same fields as the catalog's."""
    return repo.licence_dict(repo.add_custom_licence(s, terms=body))
