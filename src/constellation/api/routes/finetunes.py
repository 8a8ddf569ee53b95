"""Fine-tuning jobs over HTTP: `POST /api/finetunes` starts one in the background, `GET` shows
status, progress and metrics, `POST /api/finetunes/{id}/cancel` stops it (nothing registered).

A tenant key fine-tunes private adapters for its own tenant from uploaded JSONL, credited to
contributors its tenant owns (`constellation tenants link`); an admin key may also train public
adapters, credit anyone and read data files already on the server. Everything is checked before
a job is queued; uploads live in a temporary folder until the job ends."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, status

from constellation.api.deps import InferenceCaller, PlatformDep, Principal, StateDep
from constellation.api.protocol.responses import errors
from constellation.api.schemas.finetunes import FinetuneIn, JobOut
from constellation.errors import Forbidden, InvalidInput
from constellation.finetune import uploads
from constellation.finetune.service import FinetuneSpec, validate
from constellation.finetune.trainer import LoraConfig
from constellation.platform import Platform
from constellation.registry import ownership

router = APIRouter(prefix="/api/finetunes", tags=["finetunes"], responses=errors(401, 403, 404))


def _credited(body: FinetuneIn, caller: Principal, platform: Platform) -> tuple[str, str]:
    """(author, data_provider): as named, else the caller's own contributor -- for an admin key
    its tenant id (created if new), for a tenant key the one contributor its tenant owns."""
    if caller.is_admin:
        return body.author or caller.tenant_id, body.data_provider or caller.tenant_id
    with platform.db.session() as s:
        author = body.author or ownership.default_contributor(s, tenant_id=caller.tenant_id, param="author")
        provider = body.data_provider or ownership.default_contributor(
            s, tenant_id=caller.tenant_id, param="data_provider"
        )
    return author, provider


def _spec(body: FinetuneIn, caller: Principal, platform: Platform) -> FinetuneSpec:
    if body.data_paths and not caller.is_admin:
        raise Forbidden(
            "data_paths reads files on the server and needs an admin key; upload the JSONL in 'data'",
            code="insufficient_scope",
        )
    if body.visibility == "public" and not caller.is_admin:
        raise Forbidden(
            "only an admin key can publish a public adapter; use visibility 'private'",
            code="insufficient_scope",
        )
    if not body.data and not body.data_paths:
        raise InvalidInput("send at least one JSONL file in 'data' ({filename, content})", param="data")
    uploads.check_filenames([f.filename for f in body.data])
    config = LoraConfig(
        rank=body.rank, alpha=body.alpha, epochs=body.epochs, lr=body.learning_rate, seed=body.seed
    )
    author, provider = _credited(body, caller, platform)
    return FinetuneSpec(
        base=body.base,
        task=body.task,
        data=[Path(p) for p in body.data_paths],
        name=body.name,
        author=author,
        data_provider=provider,
        license=body.license,
        data_license=body.data_license,
        outputs_of=body.outputs_of,
        config=config,
        visibility=body.visibility,
        owner_tenant=caller.tenant_id if body.visibility == "private" else None,
        acting_tenant=None if caller.is_admin else caller.tenant_id,
    )


def _scope(caller: Principal) -> str | None:
    return None if caller.is_admin else caller.tenant_id


@router.post(
    "", status_code=status.HTTP_202_ACCEPTED, response_model=JobOut, responses=errors(400, 402, 409, 413)
)
def start(
    body: FinetuneIn, caller: InferenceCaller, platform: PlatformDep, state: StateDep
) -> dict[str, Any]:
    """Start a LoRA fine-tuning job; poll `GET /api/finetunes/{id}` for progress and metrics.
    Bad data, names, licences or contributors are refused now, not reported by a failed job."""
    jobs = state.finetunes
    spec = _spec(body, caller, platform)
    files = [(f.filename, f.content) for f in body.data]
    saved = uploads.save(platform.settings.data_dir, jobs.uploads, tenant_id=caller.tenant_id, files=files)
    try:
        spec.data += saved.paths
        validate(platform, spec)
        job = jobs.submit(spec, tenant_id=caller.tenant_id, uploads=saved)
    except BaseException:
        saved.discard()
        raise
    return job.as_dict()


@router.get("", response_model=list[JobOut])
def list_jobs(caller: InferenceCaller, state: StateDep) -> list[dict[str, Any]]:
    """Your tenant's jobs (all jobs for an admin key)."""
    return [j.as_dict() for j in state.finetunes.list(tenant_id=_scope(caller))]


@router.get("/{job_id}", response_model=JobOut)
def get_job(job_id: str, caller: InferenceCaller, state: StateDep) -> dict[str, Any]:
    """Status (queued, running, succeeded, failed, cancelled), progress, metrics or the error."""
    return state.finetunes.get(job_id, tenant_id=_scope(caller)).as_dict()


@router.post("/{job_id}/cancel", response_model=JobOut, responses=errors(409))
def cancel_job(job_id: str, caller: InferenceCaller, state: StateDep) -> dict[str, Any]:
    """Cancel a queued or running job; nothing it would have registered is registered."""
    return state.finetunes.cancel(job_id, tenant_id=_scope(caller)).as_dict()
