"""Effective licence terms of a model, combined over its whole lineage (the model, its base, the
data sets it learned from), and the per-request check of a tenant's declarations against them.

Rules: commercial use only if every element allows it; attribution notices and flow-down use
restrictions are the union; the user-count limit is the smallest; share-alike obligations are
listed. Licences are immutable once added, so one query for the lineage's licence rows suffices.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from constellation.errors import InvalidInput, LicenseRefused
from constellation.registry.models import lineage, list_models
from constellation.registry.providers import output_sources
from constellation.registry.tables import Acceptance, Dataset, Licence, Model, Tenant
from constellation.registry.tenants import get_tenant

MAX_ALTERNATIVES = 10


@dataclass(frozen=True, slots=True)
class Term:
    """One term and the lineage element it comes from."""

    text: str
    artifact: str
    artifact_type: str  # "model" | "dataset"
    licence: str

    def source(self) -> str:
        return f"{self.artifact_type} '{self.artifact}' ({self.licence})"


@dataclass(frozen=True, slots=True)
class EffectiveTerms:
    """What a tenant must honour to use a model; every term names its source element."""

    commercial_use: bool
    commercial_blockers: list[Term]
    notices: list[str]
    attributions: list[Term]
    restrictions: list[Term]
    user_limit: int | None
    user_limit_source: Term | None
    share_alike: list[Term]

    @property
    def acceptance_required(self) -> list[str]:
        """Licence ids whose flow-down restrictions the tenant must accept, in lineage order."""
        return list(dict.fromkeys(t.licence for t in self.restrictions))

    def as_dict(self) -> dict[str, Any]:
        return {
            "commercial_use": self.commercial_use,
            "commercial_blockers": [_term_dict(t) for t in self.commercial_blockers],
            "notices": list(self.notices),
            "attributions": [_term_dict(t) for t in self.attributions],
            "restrictions": [_term_dict(t) for t in self.restrictions],
            "acceptance_required": self.acceptance_required,
            "user_limit": self.user_limit,
            "user_limit_source": _term_dict(self.user_limit_source) if self.user_limit_source else None,
            "share_alike": [_term_dict(t) for t in self.share_alike],
        }


def _term_dict(t: Term) -> dict[str, str]:
    """A term as JSON; the API spells the licence field `license`, as everywhere else."""
    return {"text": t.text, "artifact": t.artifact, "artifact_type": t.artifact_type, "license": t.licence}


@dataclass(frozen=True, slots=True)
class Element:
    """One lineage element: a named artifact under a licence."""

    name: str
    type: str  # "model" | "dataset" | "outputs of model" (a data set holding a model's outputs)
    licence: Licence


def elements_of(
    model: Model,
    base: Model | None,
    datasets: Iterable[Dataset],
    lic: Mapping[str, Licence],
    sources: Iterable[tuple[str, str]] = (),
) -> list[Element]:
    """Lineage elements nearest first: the model, its base, its data sets, then the models whose
    outputs those data sets hold (`sources`: (model name, licence id) pairs)."""
    out = [Element(model.name, "model", lic[model.licence_id])]
    if base is not None:
        out.append(Element(base.name, "model", lic[base.licence_id]))
    out += [Element(d.name, "dataset", lic[d.licence_id]) for d in datasets]
    out += [Element(name, "outputs of model", lic[licence]) for name, licence in sources]
    return out


def sources_of(s: Session, datasets: list[Dataset]) -> list[tuple[str, str]]:
    """(model, licence) of every model whose outputs these data sets hold, once each."""
    found = output_sources(s, dataset_ids=[d.id for d in datasets])
    pairs = [(src.model_name, src.licence_id) for d in datasets for src in found.get(d.id, [])]
    return list(dict.fromkeys(pairs))


def combine(elements: list[Element]) -> EffectiveTerms:
    """Fold the elements' licences into effective terms (pure; no database)."""

    def term(e: Element, text: str) -> Term:
        return Term(text=text, artifact=e.name, artifact_type=e.type, licence=e.licence.id)

    blockers = [
        term(e, f"{e.licence.name}: non-commercial use only")
        for e in elements
        if not e.licence.commercial_use
    ]
    attributions = [term(e, attribution_text(e.licence)) for e in elements if e.licence.attribution_required]
    notices = list(dict.fromkeys(f"{t.artifact} ({t.licence}): {t.text}" for t in attributions))
    seen: set[tuple[str, str]] = set()
    restrictions: list[Term] = []
    for e in elements:
        for r in e.licence.restrictions:
            # one entry per (licence, text): the same licence on base and adapter is one obligation
            if (e.licence.id, r) not in seen:
                seen.add((e.licence.id, r))
                restrictions.append(term(e, r))
    limited = [e for e in elements if e.licence.user_limit is not None]
    smallest = min(limited, key=lambda e: e.licence.user_limit or 0, default=None)
    share_alike = [
        term(e, f"derivatives must be released under {e.licence.id}")
        for e in elements
        if e.licence.share_alike
    ]
    return EffectiveTerms(
        commercial_use=not blockers,
        commercial_blockers=blockers,
        notices=notices,
        attributions=attributions,
        restrictions=restrictions,
        user_limit=smallest.licence.user_limit if smallest else None,
        user_limit_source=(
            term(smallest, f"at most {smallest.licence.user_limit:,} monthly active users")
            if smallest
            else None
        ),
        share_alike=share_alike,
    )


def attribution_text(lic: Licence) -> str:
    return lic.attribution_text or f"Licensed under {lic.name}."


def _licences(s: Session, ids: set[str]) -> dict[str, Licence]:
    return {lic.id: lic for lic in s.scalars(select(Licence).where(Licence.id.in_(ids)))}


def effective_terms(
    s: Session, *, model: Model, licences: Mapping[str, Licence] | None = None
) -> EffectiveTerms:
    """The model's effective terms over its whole lineage. `licences` (id -> row) lets a caller
    that evaluates many models load the catalog once; otherwise one query loads what is needed."""
    lin = lineage(s, model=model)
    datasets = [d for d, _ in lin.datasets]
    sources = sources_of(s, datasets) if datasets else []
    if licences is None:
        ids = {m.licence_id for m in lin.models} | {d.licence_id for d in datasets} | {x for _, x in sources}
        licences = _licences(s, ids)
    return combine(elements_of(model, lin.base, datasets, licences, sources))


def accepted_licences(s: Session, *, tenant_id: str) -> set[str]:
    """Licence ids whose restrictions the tenant has accepted and not withdrawn."""
    q = select(Acceptance.licence_id).where(
        Acceptance.tenant_id == tenant_id, Acceptance.withdrawn_at.is_(None)
    )
    return set(s.scalars(q))


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a tenant may not use a model: an error code and a message naming artifact, licence, term."""

    code: str
    message: str


def evaluate(
    terms: EffectiveTerms,
    *,
    model: str,
    tenant: str,
    declared_use: str,
    monthly_active_users: int,
    accepted: set[str],
) -> Refusal | None:
    """The first rule the tenant's declarations break, or None when the use is permitted (pure)."""
    if declared_use == "commercial" and terms.commercial_blockers:
        b, others = terms.commercial_blockers[0], terms.commercial_blockers[1:]
        also = f" (so does {', '.join(o.source() for o in others)})" if others else ""
        return Refusal(
            "license_non_commercial",
            f"'{model}' may not be used commercially: in its lineage, {b.source()} allows "
            f"non-commercial use only{also}, and your tenant declares commercial use. "
            "Use a model whose whole lineage allows "
            "commercial use, or (if your use really is non-commercial) ask an admin to set your "
            "declared use to non-commercial",
        )
    if terms.user_limit is not None and monthly_active_users > terms.user_limit:
        src = terms.user_limit_source
        assert src is not None
        return Refusal(
            "license_user_limit",
            f"'{model}' is limited to {terms.user_limit:,} monthly active users by {src.source()} "
            "in its lineage, "
            f"and your tenant declares {monthly_active_users:,}. Obtain a separate licence from the "
            "licensor, or use a model without that limit",
        )
    missing = [lid for lid in terms.acceptance_required if lid not in accepted]
    if missing:
        first = next(t for t in terms.restrictions if t.licence == missing[0])
        terms_text = "; ".join(t.text for t in terms.restrictions if t.licence == missing[0])
        return Refusal(
            "license_restrictions_not_accepted",
            f"'{model}' carries the use restrictions of {first.source()} in its lineage: {terms_text}. "
            f"Accept them first: POST /api/tenants/{tenant}/acceptances with "
            f'{{"license": "{missing[0]}"}} or `constellation tenants accept {tenant} --license {missing[0]}`'
            + (f" (also needed: {', '.join(missing[1:])})" if missing[1:] else ""),
        )
    return None


def _evaluate_for(tenant: Tenant, model: Model, terms: EffectiveTerms, accepted: set[str]) -> Refusal | None:
    return evaluate(
        terms,
        model=model.name,
        tenant=tenant.id,
        declared_use=tenant.declared_use,
        monthly_active_users=tenant.monthly_active_users,
        accepted=accepted,
    )


def check_use(s: Session, *, tenant_id: str, model: Model) -> EffectiveTerms:
    """The model's effective terms if the tenant may use it; otherwise LicenseRefused (403) whose
    message names the artifact, its licence and the term, and lists permitted models of the task."""
    tenant = get_tenant(s, id=tenant_id)
    terms = effective_terms(s, model=model)
    accepted = accepted_licences(s, tenant_id=tenant_id) if terms.restrictions else set()
    refusal = _evaluate_for(tenant, model, terms, accepted)
    if refusal is None:
        return terms
    alternatives = permitted_models(s, tenant=tenant, task=model.task, exclude=model.name)
    hint = (
        f" Models of the same task ({model.task}) you may use: {', '.join(alternatives)}."
        if alternatives
        else f" No other {model.task} model is currently permitted for your tenant."
    )
    raise LicenseRefused(refusal.message + "." + hint, param="model", code=refusal.code)


def permissions(
    s: Session, *, tenant: Tenant, models: list[Model]
) -> dict[str, tuple[EffectiveTerms, Refusal | None]]:
    """Effective terms and refusal (None = permitted) of each model for the tenant, loading the
    licence catalog and the tenant's acceptances once."""
    catalog = {lic.id: lic for lic in s.scalars(select(Licence))}
    accepted = accepted_licences(s, tenant_id=tenant.id)
    out: dict[str, tuple[EffectiveTerms, Refusal | None]] = {}
    for m in models:
        terms = effective_terms(s, model=m, licences=catalog)
        out[m.name] = (terms, _evaluate_for(tenant, m, terms, accepted))
    return out


def permitted_models(s: Session, *, tenant: Tenant, task: str, exclude: str | None = None) -> list[str]:
    """Names (at most MAX_ALTERNATIVES) of the models of `task` this tenant can see and may use."""
    candidates = [m for m in list_models(s, tenant_id=tenant.id) if m.task == task and m.name != exclude]
    verdicts = permissions(s, tenant=tenant, models=candidates)
    return [name for name, (_, refusal) in verdicts.items() if refusal is None][:MAX_ALTERNATIVES]


def check_derived_licence(
    s: Session,
    *,
    name: str,
    licence_id: str,
    base: Model,
    datasets: list[Dataset],
    outputs_of: Sequence[Model] = (),
) -> None:
    """Training-time rules: a derived model may not be registered under a licence more permissive
    than its lineage allows. InvalidInput (400) names the element that forbids it. `outputs_of`:
    models whose outputs data sets not yet registered hold (their marks are not recorded yet)."""
    sources = list(dict.fromkeys([*sources_of(s, datasets), *((m.name, m.licence_id) for m in outputs_of)]))
    ids = {licence_id, base.licence_id} | {d.licence_id for d in datasets} | {x for _, x in sources}
    lic = _licences(s, ids)
    own = lic[licence_id]
    upstream = [Element(base.name, "model", lic[base.licence_id])]
    upstream += [Element(d.name, "dataset", lic[d.licence_id]) for d in datasets]
    upstream += [Element(name, "outputs of model", lic[x]) for name, x in sources]
    for e in upstream:
        problem = _more_permissive(own, e.licence)
        if problem:
            raise InvalidInput(
                f"cannot register '{name}' under {own.id}: its {e.type} '{e.name}' is under "
                f"{e.licence.id}, which {problem}. Register it under {e.licence.id} "
                "(or a licence at least as restrictive)",
                param="license",
                code="license_too_permissive",
            )


def _more_permissive(own: Licence, up: Licence) -> str | None:
    """Why licence `own` grants more than upstream `up` allows a derivative to, or None."""
    if up.share_alike and own.id != up.id:
        return "is share-alike: derivatives must carry the same licence"
    if own.commercial_use and not up.commercial_use:
        return "forbids commercial use, so a model trained on it cannot allow it"
    dropped = [r for r in up.restrictions if r not in own.restrictions]
    if dropped:
        return f"imposes use restrictions that flow down to derivatives ({'; '.join(dropped)})"
    if up.user_limit is not None and (own.user_limit is None or own.user_limit > up.user_limit):
        return f"limits use to {up.user_limit:,} monthly active users"
    return None
