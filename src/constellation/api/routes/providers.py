"""Admin routes for upstream providers: register one (its key stays in the server's environment
or secrets file: only the variable's name is sent, stored and shown), list them with their
circuit state, expose an upstream model under a local name, remove."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, status

from constellation.api.deps import Admin, SessionDep, StateDep
from constellation.api.protocol.responses import errors
from constellation.api.schemas.providers import ExposeIn, ProviderIn, ProviderOut
from constellation.registry import providers as repo
from constellation.registry.tables import Provider

router = APIRouter(prefix="/api", tags=["providers"], responses=errors(400, 401, 403, 404))


def _out(state: StateDep, p: Provider, s: SessionDep) -> dict[str, Any]:
    upstreams = state.engines.upstreams
    stats = upstreams.stats().get(p.id, {})
    key_present = p.api_key_env is None or upstreams.secrets.get(p.api_key_env) is not None
    return {
        **repo.provider_dict(p, repo.exposed_models(s, provider_id=p.id)),
        "key_present": key_present,
        "circuit": stats.get("circuit", "closed"),
    }


@router.get("/providers", response_model=list[ProviderOut])
def list_providers(state: StateDep, _: Admin, s: SessionDep) -> list[dict[str, Any]]:
    """Every upstream provider, the models it exposes and its circuit state."""
    return [_out(state, p, s) for p in repo.list_providers(s)]


@router.get("/providers/{name}", response_model=ProviderOut)
def get_provider(name: str, state: StateDep, _: Admin, s: SessionDep) -> dict[str, Any]:
    """One upstream provider."""
    return _out(state, repo.get_provider(s, id=name), s)


@router.post(
    "/providers", status_code=status.HTTP_201_CREATED, response_model=ProviderOut, responses=errors(409)
)
def add_provider(body: ProviderIn, state: StateDep, _: Admin, s: SessionDep) -> dict[str, Any]:
    """Register an OpenAI-compatible upstream. Its key is read at call time from the variable
    `api_key_env` names, in the server's environment or its secrets file."""
    p = repo.add_provider(
        s,
        id=body.name,
        base_url=body.base_url,
        api_key_env=body.api_key_env,
        contributor_id=body.contributor,
        on_platform=body.on_platform,
        timeout_s=body.timeout_s,
        max_concurrency=body.max_concurrency,
        max_retries=body.max_retries,
    )
    return _out(state, p, s)


@router.post(
    "/providers/{name}/models",
    status_code=status.HTTP_201_CREATED,
    response_model=ProviderOut,
    responses=errors(409),
)
def expose_model(name: str, body: ExposeIn, state: StateDep, _: Admin, s: SessionDep) -> dict[str, Any]:
    """Publish one upstream model under a local name, with its list price (owed to the
    provider) and its licence; it then appears in GET /v1/models with kind 'provider'."""
    repo.expose_model(
        s,
        provider_id=name,
        upstream_model=body.model,
        name=body.name,
        task=body.task,
        price_per_1k_input=body.price_per_1k_input,
        price_per_1k_output=body.price_per_1k_output,
        licence_id=body.license,
        visibility=body.visibility,
        owner_tenant_id=body.owner_tenant,
    )
    return _out(state, repo.get_provider(s, id=name), s)


@router.delete("/providers/{name}", status_code=status.HTTP_204_NO_CONTENT, responses=errors(409))
def remove_provider(name: str, _: Admin, s: SessionDep) -> None:
    """Remove a provider that exposes no model any more (remove its models first)."""
    repo.remove_provider(s, id=name)
