"""Fine-tuning jobs over HTTP: `POST /api/finetunes` starts one in the background, `GET` shows
status, progress and metrics, `POST /api/finetunes/{id}/cancel` stops it (nothing registered).

A tenant key fine-tunes private adapters for its own tenant from uploaded JSONL; an admin key
may also train public adapters and read data files already on the server."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Request, status
from pydantic import BaseModel, Field

from constellation.api.deps import InferenceCaller, PlatformDep, Principal
from constellation.errors import Forbidden, InvalidInput, TooLarge
from constellation.finetune.jobs import JobManager
from constellation.finetune.service import FinetuneSpec, validate
from constellation.finetune.trainer import LoraConfig

router = APIRouter(prefix="/api/finetunes", tags=["finetunes"])
MAX_UPLOAD_BYTES = 64 * 1024 * 1024


class DataFile(BaseModel):
    filename: str = Field(description="e.g. tickets.jsonl; becomes part of the data set's name")
    content: str = Field(description="the JSONL text")


class FinetuneIn(BaseModel):
    base: str = Field(description="registered base model, e.g. minilm")
    task: Literal["classification", "causal-lm"]
    name: str = Field(description="name of the new adapter")
    license: str = Field(description="licence id of the adapter")
    data: list[DataFile] = Field(default_factory=list, description="uploaded JSONL files")
    data_paths: list[str] = Field(default_factory=list, description="admin only: JSONL files on the server")
    data_license: str | None = Field(default=None, description="licence of the data (default: license)")
    author: str | None = Field(default=None, description="contributor id (default: your tenant id)")
    data_provider: str | None = Field(default=None, description="contributor id (default: your tenant id)")
    visibility: Literal["public", "private"] = "private"
    rank: int = 8
    alpha: int = 16
    epochs: int = 8
    learning_rate: float = 1e-3
    seed: int = 0


def _jobs(request: Request) -> JobManager:
    jobs: JobManager = request.app.state.finetunes
    return jobs


def _save_uploads(root: Path, files: list[DataFile]) -> list[Path]:
    if sum(len(f.content) for f in files) > MAX_UPLOAD_BYTES:
        raise TooLarge(
            f"uploaded data exceeds {MAX_UPLOAD_BYTES // 2**20} MiB; split it or ask an admin to "
            "place it on the server and use data_paths"
        )
    folder = root / "uploads" / uuid.uuid4().hex[:12]
    folder.mkdir(parents=True)
    out = []
    for f in files:
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", Path(f.filename).name) or "data.jsonl"
        path = folder / safe
        path.write_text(f.content)
        out.append(path)
    return out


def _spec(body: FinetuneIn, caller: Principal, data_dir: Path) -> FinetuneSpec:
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
    paths = [Path(p) for p in body.data_paths] + _save_uploads(data_dir, body.data)
    config = LoraConfig(
        rank=body.rank, alpha=body.alpha, epochs=body.epochs, lr=body.learning_rate, seed=body.seed
    )
    return FinetuneSpec(
        base=body.base,
        task=body.task,
        data=paths,
        name=body.name,
        author=body.author or caller.tenant_id,
        data_provider=body.data_provider or caller.tenant_id,
        license=body.license,
        data_license=body.data_license,
        config=config,
        visibility=body.visibility,
        owner_tenant=caller.tenant_id if body.visibility == "private" else None,
    )


def _scope(caller: Principal) -> str | None:
    return None if caller.is_admin else caller.tenant_id


@router.post("", status_code=status.HTTP_202_ACCEPTED)
def start(
    body: FinetuneIn, caller: InferenceCaller, platform: PlatformDep, request: Request
) -> dict[str, Any]:
    """Start a LoRA fine-tuning job; poll `GET /api/finetunes/{id}` for progress and metrics."""
    spec = _spec(body, caller, platform.settings.data_dir)
    validate(platform, spec)  # bad data or names are a 400 now, not a failed job later
    return _jobs(request).submit(spec, tenant_id=caller.tenant_id).as_dict()


@router.get("")
def list_jobs(caller: InferenceCaller, request: Request) -> list[dict[str, Any]]:
    """Your tenant's jobs (all jobs for an admin key)."""
    return [j.as_dict() for j in _jobs(request).list(tenant_id=_scope(caller))]


@router.get("/{job_id}")
def get_job(job_id: str, caller: InferenceCaller, request: Request) -> dict[str, Any]:
    """Status (queued, running, succeeded, failed, cancelled), progress, metrics or the error."""
    return _jobs(request).get(job_id, tenant_id=_scope(caller)).as_dict()


@router.post("/{job_id}/cancel")
def cancel_job(job_id: str, caller: InferenceCaller, request: Request) -> dict[str, Any]:
    """Cancel a queued or running job; nothing it would have registered is registered."""
    return _jobs(request).cancel(job_id, tenant_id=_scope(caller)).as_dict()
