"""Turns a request's `model` name into what the engine needs (base and adapter specs whose
`resolve()` verifies the artifact's sha256) plus the lineage facts billing and licences need.

Registry lookups are cached for a short TTL so the hot path does not query the database per
request (and an expiry under load costs one reload, see `RefreshingCache`); admin changes made
through this process invalidate the cache at once."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from constellation.api.cache import RefreshingCache
from constellation.artifacts.store import ArtifactOpener
from constellation.engine.spec import AdapterSpec, BaseSpec, Task
from constellation.errors import InvalidInput
from constellation.platform import Platform
from constellation.providers.call import Target
from constellation.providers.client import UpstreamConfig
from constellation.registry import models as repo
from constellation.registry.effective import check_use
from constellation.registry.providers import Exposure, check_residency, exposure
from constellation.registry.tables import Artifact, Model


@dataclass(frozen=True, slots=True)
class Resolved:
    """A servable model: its engine specs and its lineage, as of resolution time."""

    name: str
    task: Task
    base: BaseSpec
    adapter: AdapterSpec | None
    labels: tuple[str, ...] | None
    lineage: dict[str, Any] = field(default_factory=dict)
    notices: tuple[str, ...] = ()
    upstream: Target | None = None  # a provider model: served by its upstream, not the engine


class Resolver:
    def __init__(self, platform: Platform, *, ttl_s: float = 2.0) -> None:
        self.platform = platform
        self._cache: RefreshingCache[tuple[str, str], Resolved] = RefreshingCache(ttl_s)

    def clear(self) -> None:
        self._cache.clear()

    def cached(self, name: str, *, tenant_id: str) -> Resolved | None:
        """A cache hit (fresh, or stale while another request reloads it), or None: then call
        `resolve`. Lets the event loop skip a thread hop on the hot path."""
        return self._cache.get((name, tenant_id))

    def resolve(self, name: str, *, tenant_id: str) -> Resolved:
        """The model `name` as `tenant_id` may use it, read from the registry (and cached);
        NotFound if it may not see it, LicenseRefused if its licences do not permit the tenant's
        declared use."""

        def load() -> Resolved:
            with self.platform.db.session() as s:
                return self._load(s, name, tenant_id)

        return self._cache.load((name, tenant_id), load)

    def _load(self, s: Session, name: str, tenant_id: str) -> Resolved:
        m = repo.get_visible_model(s, name=name, tenant_id=tenant_id)
        exposed = exposure(s, model_id=m.id)
        if exposed is not None:  # before the licence: the tenant's own rule, whatever the terms
            check_residency(s, tenant_id=tenant_id, model=m, provider=exposed.provider)
        notices = self._check_licence(s, m, tenant_id)
        lin = repo.lineage(s, model=m)
        base_row = lin.base or m
        base = self._base_spec(s, base_row)
        adapter = None
        if m.kind == "adapter":
            adapter = AdapterSpec(
                name=m.name,
                base=base_row.name,
                resolve=self._opener(m.artifact_digest),
                labels=tuple(m.labels) if m.labels else None,
            )
        elif m.kind == "finetune":
            base = self._base_spec(s, m)
        task: Task = m.task  # type: ignore[assignment]
        lineage = repo.lineage_dict(lin)
        if exposed is not None:
            lineage = {**lineage, "provider": exposed.provider.id, "upstream_model": exposed.upstream_model}
        return Resolved(
            name=m.name,
            task=task,
            base=base,
            adapter=adapter,
            labels=tuple(m.labels) if m.labels else None,
            lineage=lineage,
            notices=notices,
            upstream=_target(m, exposed) if exposed else None,
        )

    def _base_spec(self, s: Session, row: Model) -> BaseSpec:
        task: Task = row.task  # type: ignore[assignment]
        art = s.get(Artifact, row.artifact_digest)  # same session: no second connection per lookup
        size = int(art.size_bytes) if art else 0
        return BaseSpec(name=row.name, task=task, resolve=self._opener(row.artifact_digest), size_bytes=size)

    def _opener(self, digest: str) -> ArtifactOpener:
        return ArtifactOpener(self.platform.store, digest)

    def _check_licence(self, s: Session, m: Model, tenant_id: str) -> tuple[str, ...]:
        return tuple(check_use(s, tenant_id=tenant_id, model=m).notices)


def _target(m: Model, exposed: Exposure) -> Target:
    p = exposed.provider
    cfg = UpstreamConfig(
        name=p.id,
        base_url=p.base_url,
        api_key_env=p.api_key_env,
        timeout_s=p.timeout_s,
        max_concurrency=p.max_concurrency,
        max_retries=p.max_retries,
        on_platform=p.on_platform,
    )
    return Target(model=m.name, upstream_model=exposed.upstream_model, config=cfg)


def require_task(resolved: Resolved, *tasks: str) -> None:
    """Refuse a model of the wrong task with the endpoint that serves it."""
    if resolved.task in tasks:
        return
    endpoint = {
        "embedding": "/v1/embeddings",
        "classification": "/v1/classify",
        "causal-lm": "/v1/chat/completions or /v1/completions",
    }[resolved.task]
    raise InvalidInput(
        f"'{resolved.name}' is a {resolved.task} model; send it to {endpoint} instead",
        param="model",
        code="wrong_task",
    )
