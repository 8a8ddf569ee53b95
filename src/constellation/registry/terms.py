"""Contribution terms: what a contributor earns each time a model or data set is used
(per 1k input tokens, per 1k output tokens, per request, per compute-second), in nano-USD."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from constellation.economy.money import MAX_RATE_NANOS, check_amount
from constellation.errors import InvalidInput
from constellation.registry.contributors import get_contributor
from constellation.registry.datasets import get_dataset
from constellation.registry.models import get_model
from constellation.registry.tables import TERM_KINDS, ContributionTerm, Dataset, Model


def _subject(s: Session, subject_type: str, name: str) -> Model | Dataset:
    if subject_type == "model":
        return get_model(s, name=name)
    if subject_type == "dataset":
        return get_dataset(s, name=name)
    raise InvalidInput("a term's subject is a 'model' or a 'dataset'", param="subject_type")


def set_term(
    s: Session, *, subject_type: str, subject_name: str, contributor_id: str, kind: str, amount_nanos: int
) -> ContributionTerm:
    """Create or replace the term (subject, contributor, kind)."""
    if kind not in TERM_KINDS:
        raise InvalidInput(f"unknown term kind '{kind}'; use one of {', '.join(TERM_KINDS)}", param="kind")
    check_amount(amount_nanos, param="amount_nanos", maximum=MAX_RATE_NANOS)
    subject = _subject(s, subject_type, subject_name)
    get_contributor(s, id=contributor_id)
    term = s.scalar(
        select(ContributionTerm).where(
            ContributionTerm.subject_type == subject_type,
            ContributionTerm.subject_id == subject.id,
            ContributionTerm.contributor_id == contributor_id,
            ContributionTerm.kind == kind,
        )
    )
    if term is None:
        term = ContributionTerm(
            subject_type=subject_type,
            subject_id=subject.id,
            contributor_id=contributor_id,
            kind=kind,
            amount_nanos=amount_nanos,
        )
        s.add(term)
    else:
        term.amount_nanos = amount_nanos
    s.flush()
    return term


def terms_for(s: Session, *, subject_type: str, subject_id: int) -> list[ContributionTerm]:
    return list(
        s.scalars(
            select(ContributionTerm)
            .where(ContributionTerm.subject_type == subject_type, ContributionTerm.subject_id == subject_id)
            .order_by(ContributionTerm.id)
        )
    )


def list_terms(s: Session) -> list[dict[str, Any]]:
    rows = s.scalars(
        select(ContributionTerm).order_by(ContributionTerm.subject_type, ContributionTerm.subject_id)
    )
    out = []
    for t in rows:
        subject: Model | Dataset | None = (
            s.get(Model, t.subject_id) if t.subject_type == "model" else s.get(Dataset, t.subject_id)
        )
        out.append(
            {
                "subject_type": t.subject_type,
                "subject": subject.name if subject else None,
                "contributor": t.contributor_id,
                "kind": t.kind,
                "amount_nanos": t.amount_nanos,
            }
        )
    return out
