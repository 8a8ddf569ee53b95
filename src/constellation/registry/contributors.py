"""Contributors: people, organisations, infrastructure providers and the platform itself --
everyone a request's price may be split among."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from constellation.errors import Conflict, InvalidInput, NotFound
from constellation.registry._common import check_slug, flush_or_conflict
from constellation.registry.tables import CONTRIBUTOR_KINDS, Contributor


def add_contributor(s: Session, *, id: str, name: str, kind: str, email: str | None = None) -> Contributor:
    check_slug(id, what="contributor id")
    if kind not in CONTRIBUTOR_KINDS:
        raise InvalidInput(
            f"unknown contributor kind '{kind}'; use one of {', '.join(CONTRIBUTOR_KINDS)}", param="kind"
        )
    if s.get(Contributor, id) is not None:
        raise Conflict(f"contributor '{id}' already exists", code="duplicate")
    c = Contributor(id=id, name=name, kind=kind, email=email)
    s.add(c)
    flush_or_conflict(s, f"contributor '{id}' already exists")
    return c


def get_contributor(s: Session, *, id: str) -> Contributor:
    c = s.get(Contributor, id)
    if c is None:
        raise NotFound(
            f"no contributor '{id}'; add it first with `constellation contributors add {id} --name ...`",
            code="contributor_not_found",
        )
    return c


def list_contributors(s: Session) -> list[Contributor]:
    return list(s.scalars(select(Contributor).order_by(Contributor.id)))


def ensure_contributor(s: Session, *, id: str, name: str, kind: str) -> Contributor:
    """Get or create; used for the platform's own accounts and by the demo."""
    return s.get(Contributor, id) or add_contributor(s, id=id, name=name, kind=kind)
