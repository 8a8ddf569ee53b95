"""Data sets that adapters and fine-tunes were trained on: content hash, example count,
licence, provider and owner. A file registered twice (same sha256) is reused, not duplicated, where
its registrant may see the first: its own or an operator's (public); a tenant's is its alone."""

from __future__ import annotations

from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from constellation.errors import Conflict, InvalidInput, NotFound
from constellation.registry._common import check_slug
from constellation.registry.contributors import get_contributor
from constellation.registry.licences import get_licence
from constellation.registry.tables import Dataset


def add_dataset(
    s: Session,
    *,
    name: str,
    artifact_digest: str,
    sha256: str,
    example_count: int,
    licence_id: str,
    provider_id: str,
    owner_tenant_id: str | None = None,
) -> Dataset:
    check_slug(name, what="data set name")
    if example_count <= 0:
        raise InvalidInput("a data set needs at least one example", param="example_count")
    get_licence(s, id=licence_id)
    get_contributor(s, id=provider_id)
    if s.scalar(select(Dataset.id).where(Dataset.name == name)) is not None:
        raise Conflict(f"a data set named '{name}' already exists", code="duplicate")
    d = Dataset(
        name=name,
        artifact_digest=artifact_digest,
        sha256=sha256,
        example_count=example_count,
        licence_id=licence_id,
        provider_id=provider_id,
        owner_tenant_id=owner_tenant_id,
    )
    s.add(d)
    s.flush()
    return d


def find_reusable_dataset(s: Session, *, sha256: str, owner_tenant_id: str | None) -> Dataset | None:
    """The data set with these bytes that `owner_tenant_id` (None: an operator) may reuse: its own
    first, else an operator's; never another tenant's, whose existence and name stay private."""
    mine_or_public = or_(Dataset.owner_tenant_id == owner_tenant_id, Dataset.owner_tenant_id.is_(None))
    q = select(Dataset).where(Dataset.sha256 == sha256, mine_or_public)
    return s.scalar(q.order_by(Dataset.owner_tenant_id.is_(None), Dataset.id).limit(1))


def get_dataset(s: Session, *, name: str) -> Dataset:
    d = s.scalar(select(Dataset).where(Dataset.name == name))
    if d is None:
        raise NotFound(f"no data set '{name}'", param="dataset", code="dataset_not_found")
    return d


def list_datasets(s: Session) -> list[Dataset]:
    return list(s.scalars(select(Dataset).order_by(Dataset.name)))


def dataset_dict(d: Dataset) -> dict[str, Any]:
    return {
        "name": d.name,
        "sha256": d.sha256,
        "example_count": d.example_count,
        "license": d.licence_id,
        "provider": d.provider_id,
        "artifact": d.artifact_digest,
        "owner_tenant": d.owner_tenant_id,
        "created_at": d.created_at.isoformat(),
    }
