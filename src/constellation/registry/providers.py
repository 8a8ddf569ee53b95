"""Upstream providers and the models they expose. A provider is an OpenAI-compatible API and a
contributor (its account is owed the upstream's list price); an exposed model is a row in
`models` (kind 'base': no base, no weights) plus its upstream id, so that visibility, licences,
terms and lineage treat it like any other model. The key itself is never stored here."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.orm import Session

from constellation.economy.money import MAX_RATE_NANOS, check_amount
from constellation.errors import Conflict, Forbidden, InvalidInput, NotFound
from constellation.providers.secrets import check_var
from constellation.registry import models as model_repo
from constellation.registry import terms as terms_repo
from constellation.registry._common import check_slug
from constellation.registry.contributors import get_contributor
from constellation.registry.licences import get_licence
from constellation.registry.tables import (
    Artifact,
    Contributor,
    Dataset,
    DatasetSource,
    Model,
    Provider,
    ProviderModel,
    Tenant,
)
from constellation.registry.tenants import get_tenant

PROVIDER_TASKS = ("causal-lm", "embedding")
RESIDENCY_CODE = "data_must_stay_on_platform"
DEFAULT_LICENCE = "provider-terms"
MAX_CONCURRENCY = 4096
MAX_RETRIES = 10
MAX_TIMEOUT_S = 3600.0


def check_base_url(url: str) -> str:
    """An http(s) URL with a host and no credentials (it is stored and shown; the key is not)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput(
            f"invalid base URL '{url[:200]}': give the upstream's OpenAI-compatible root, "
            "e.g. https://api.openai.com/v1",
            param="base_url",
        )
    if parts.username or parts.password or parts.query or parts.fragment:
        raise InvalidInput(
            "the base URL may not carry credentials, a query or a fragment; put the key in the "
            "variable named by --api-key-env",
            param="base_url",
        )
    return url.rstrip("/")


def add_provider(
    s: Session,
    *,
    id: str,
    base_url: str,
    api_key_env: str | None,
    contributor_id: str | None = None,
    on_platform: bool = False,
    timeout_s: float = 60.0,
    max_concurrency: int = 64,
    max_retries: int = 2,
) -> Provider:
    """Register a provider; its contributor (default: one named like it) is created if missing."""
    check_slug(id, what="provider name")
    if s.get(Provider, id) is not None:
        raise Conflict(
            f"provider '{id}' already exists; remove it first or pick another name", code="duplicate"
        )
    _check_limits(timeout_s=timeout_s, max_concurrency=max_concurrency, max_retries=max_retries)
    account = contributor_id or id
    if contributor_id is not None:
        get_contributor(s, id=contributor_id)
    elif s.get(Contributor, account) is None:
        s.add(Contributor(id=account, name=f"Upstream provider {id}", kind="organisation"))
    p = Provider(
        id=id,
        base_url=check_base_url(base_url),
        api_key_env=check_var(api_key_env) if api_key_env else None,
        contributor_id=account,
        on_platform=on_platform,
        timeout_s=timeout_s,
        max_concurrency=max_concurrency,
        max_retries=max_retries,
    )
    s.add(p)
    s.flush()
    return p


def _check_limits(*, timeout_s: float, max_concurrency: int, max_retries: int) -> None:
    if not 0 < timeout_s <= MAX_TIMEOUT_S:
        raise InvalidInput(f"timeout must be above 0 and at most {MAX_TIMEOUT_S:g} s", param="timeout_s")
    if not 0 < max_concurrency <= MAX_CONCURRENCY:
        raise InvalidInput(f"max concurrency must be 1 to {MAX_CONCURRENCY}", param="max_concurrency")
    if not 0 <= max_retries <= MAX_RETRIES:
        raise InvalidInput(f"max retries must be 0 to {MAX_RETRIES}", param="max_retries")


def get_provider(s: Session, *, id: str) -> Provider:
    p = s.get(Provider, id)
    if p is None:
        raise NotFound(
            f"no provider '{id}'; add it with `constellation providers add {id} --base-url URL`",
            code="provider_not_found",
        )
    return p


def list_providers(s: Session) -> list[Provider]:
    return list(s.scalars(select(Provider).order_by(Provider.id)))


def exposed_models(s: Session, *, provider_id: str) -> list[tuple[Model, ProviderModel]]:
    q = (
        select(Model, ProviderModel)
        .join(ProviderModel, ProviderModel.model_id == Model.id)
        .where(ProviderModel.provider_id == provider_id)
        .order_by(Model.name)
    )
    return [(m, pm) for m, pm in s.execute(q).tuples()]


def remove_provider(s: Session, *, id: str) -> None:
    p = get_provider(s, id=id)
    names = [m.name for m, _ in exposed_models(s, provider_id=id)]
    if names:
        raise Conflict(
            f"provider '{id}' still exposes {', '.join(names)}; remove those models first "
            "(`constellation models rm NAME`)",
            code="in_use",
        )
    s.delete(p)
    s.flush()


def expose_model(
    s: Session,
    *,
    provider_id: str,
    upstream_model: str,
    name: str,
    task: str,
    price_per_1k_input: int = 0,
    price_per_1k_output: int = 0,
    licence_id: str | None = None,
    visibility: str = "public",
    owner_tenant_id: str | None = None,
) -> Model:
    """Publish one upstream model under a local name, with its list price (nano-USD per 1k
    tokens, owed to the provider's account) and the licence its terms come under."""
    p = get_provider(s, id=provider_id)
    if task not in PROVIDER_TASKS:
        raise InvalidInput(
            f"a provider model's task is one of {', '.join(PROVIDER_TASKS)}, not '{task}'", param="task"
        )
    if not upstream_model.strip() or len(upstream_model) > 200:
        raise InvalidInput("the upstream model id must be 1 to 200 characters", param="upstream_model")
    for value, param in (
        (price_per_1k_input, "price_per_1k_input"),
        (price_per_1k_output, "price_per_1k_output"),
    ):
        check_amount(value, param=param, maximum=MAX_RATE_NANOS)
    digest = hashlib.sha256(f"provider:{p.id}:{upstream_model}".encode()).hexdigest()
    if s.get(Artifact, digest) is None:  # no weights: the row names the upstream model instead
        s.add(Artifact(digest=digest, kind="provider", size_bytes=0, files={"upstream": upstream_model}))
    m = model_repo.add_model(
        s,
        name=name,
        kind="base",
        task=task,
        artifact_digest=digest,
        licence_id=get_licence(s, id=licence_id or DEFAULT_LICENCE).id,
        author_id=p.contributor_id,
        card={"provider": p.id, "upstream_model": upstream_model},
        visibility=visibility,
        owner_tenant_id=owner_tenant_id,
    )
    s.add(ProviderModel(model_id=m.id, provider_id=p.id, upstream_model=upstream_model))
    for kind, amount in (
        ("per_1k_input_tokens", price_per_1k_input),
        ("per_1k_output_tokens", price_per_1k_output),
    ):
        if amount:
            terms_repo.set_term(
                s,
                subject_type="model",
                subject_name=name,
                contributor_id=p.contributor_id,
                kind=kind,
                amount_nanos=amount,
            )
    s.flush()
    return m


@dataclass(frozen=True, slots=True)
class Exposure:
    """A provider model as the serving path needs it."""

    provider: Provider
    upstream_model: str


def exposure(s: Session, *, model_id: int) -> Exposure | None:
    """The provider behind a model, or None for a model served here."""
    row = s.execute(
        select(Provider, ProviderModel.upstream_model)
        .join(ProviderModel, ProviderModel.provider_id == Provider.id)
        .where(ProviderModel.model_id == model_id)
    ).first()
    return Exposure(row[0], row[1]) if row else None


def residency_refusal(tenant: Tenant, model: Model, provider: Provider) -> str | None:
    """Why the tenant's data may not go to this provider, or None."""
    if not tenant.data_stays_on_platform or provider.on_platform:
        return None
    return (
        f"'{model.name}' is served by the upstream provider '{provider.id}', outside this platform, and "
        f"tenant '{tenant.id}' declares that its data must stay on the platform; nothing was sent. Use a "
        "model served here, or ask an admin to lift the declaration "
        f"(`constellation tenants set {tenant.id} --data-may-leave`)"
    )


def check_residency(s: Session, *, tenant_id: str, model: Model, provider: Provider) -> None:
    refusal = residency_refusal(get_tenant(s, id=tenant_id), model, provider)
    if refusal is not None:
        raise Forbidden(refusal, param="model", code=RESIDENCY_CODE)


def provider_of(s: Session) -> dict[int, Provider]:
    """Every exposed model's id and its provider."""
    q = select(ProviderModel.model_id, Provider).join(Provider, Provider.id == ProviderModel.provider_id)
    return {mid: p for mid, p in s.execute(q).tuples()}


def provider_dict(p: Provider, models: list[tuple[Model, ProviderModel]] | None = None) -> dict[str, Any]:
    """A provider as shown to operators: the variable's name, never its value."""
    return {
        "name": p.id,
        "base_url": p.base_url,
        "api_key_env": p.api_key_env,
        "contributor": p.contributor_id,
        "on_platform": p.on_platform,
        "timeout_s": p.timeout_s,
        "max_concurrency": p.max_concurrency,
        "max_retries": p.max_retries,
        "models": [
            {"name": m.name, "upstream_model": pm.upstream_model, "task": m.task} for m, pm in models or []
        ],
        "created_at": p.created_at.isoformat(),
    }


# -- outputs of a model in a data set -------------------------------------------------------


def output_models(s: Session, *, names: list[str], tenant_id: str | None = None) -> list[Model]:
    """The models named as the source of a data set's outputs, as `tenant_id` (None: an
    operator) may see them: another tenant's private model is reported as not existing."""
    if tenant_id is None:
        return [model_repo.get_model(s, name=n) for n in dict.fromkeys(names)]
    return [model_repo.get_visible_model(s, name=n, tenant_id=tenant_id) for n in dict.fromkeys(names)]


def mark_outputs(
    s: Session, *, dataset: Dataset, model_names: list[str], tenant_id: str | None = None
) -> None:
    """Record that `dataset` holds outputs of these models: whatever is trained on it inherits
    their licences (registry/effective.py), recorded as of now."""
    for m in output_models(s, names=model_names, tenant_id=tenant_id):
        if s.get(DatasetSource, (dataset.id, m.name)) is None:
            s.add(DatasetSource(dataset_id=dataset.id, model_name=m.name, licence_id=m.licence_id))
    s.flush()


def output_sources(s: Session, *, dataset_ids: list[int]) -> dict[int, list[DatasetSource]]:
    """The models whose outputs each data set holds."""
    out: dict[int, list[DatasetSource]] = {}
    if not dataset_ids:
        return out
    q = (
        select(DatasetSource)
        .where(DatasetSource.dataset_id.in_(dataset_ids))
        .order_by(DatasetSource.model_name)
    )
    for src in s.scalars(q):
        out.setdefault(src.dataset_id, []).append(src)
    return out
