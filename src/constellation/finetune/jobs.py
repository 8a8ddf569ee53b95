"""Background fine-tuning jobs for `POST /api/finetunes`: one worker thread (training takes the
machine's cores), status and progress readable at any time, cancellable while queued or running.
A job's uploaded files are deleted when it ends, however it ends.

Jobs live in this process's memory: a restart forgets them, and since registration happens only
at the very end of a run, an interrupted job leaves nothing registered."""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from constellation.errors import ConstellationError, NotFound
from constellation.finetune.service import FinetuneSpec, run_finetune
from constellation.finetune.trainer import Progress, TrainingCancelled
from constellation.finetune.uploads import UploadQuota, Uploads
from constellation.platform import Platform


@dataclass(slots=True)
class Job:
    id: str
    spec: FinetuneSpec
    tenant_id: str
    status: str = "queued"  # queued | running | succeeded | failed | cancelled
    progress: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] | None = None
    error: str | None = None
    created_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    uploads: Uploads | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "finetune",
            "status": self.status,
            "model": self.spec.name,
            "base": self.spec.base,
            "task": self.spec.task,
            "tenant": self.tenant_id,
            "progress": self.progress,
            "result": self.result,
            "error": self.error,
            "created_at": self.created_at,
            "finished_at": self.finished_at,
        }


class JobManager:
    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self.uploads = UploadQuota(platform.settings.finetune_upload_bytes)
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="finetune")

    def submit(self, spec: FinetuneSpec, *, tenant_id: str, uploads: Uploads | None = None) -> Job:
        """Queue a run; the job owns `uploads` from now on and deletes them when it ends."""
        job = Job(id=f"ft_{uuid.uuid4().hex[:16]}", spec=spec, tenant_id=tenant_id, uploads=uploads)
        with self._lock:
            self._jobs[job.id] = job
        self._pool.submit(self._run, job)
        return job

    def get(self, job_id: str, *, tenant_id: str | None = None) -> Job:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None or (tenant_id is not None and job.tenant_id != tenant_id):
            raise NotFound(f"no fine-tuning job '{job_id}'", code="finetune_not_found")
        return job

    def list(self, *, tenant_id: str | None = None) -> list[Job]:
        with self._lock:
            jobs = list(self._jobs.values())
        return [j for j in jobs if tenant_id is None or j.tenant_id == tenant_id]

    def cancel(self, job_id: str, *, tenant_id: str | None = None) -> Job:
        job = self.get(job_id, tenant_id=tenant_id)
        job.cancel.set()
        if job.status == "queued":
            job.status = "cancelled"
        return job

    def _run(self, job: Job) -> None:
        try:
            self._train(job)
        finally:
            if job.uploads is not None:
                job.uploads.discard()

    def _train(self, job: Job) -> None:
        if job.cancel.is_set():
            job.status, job.finished_at = "cancelled", time.time()
            return
        job.status = "running"

        def progress(p: Progress) -> None:
            job.progress = {
                "step": p.step,
                "total": p.total,
                "epoch": p.epoch,
                "loss": round(p.loss, 5),
                "eta_s": round(p.eta_s, 1),
            }

        try:
            outcome = run_finetune(self.platform, job.spec, progress=progress, cancel=job.cancel)
            job.result, job.status = outcome.as_dict(), "succeeded"
        except TrainingCancelled:
            job.status = "cancelled"
        except ConstellationError as exc:
            job.status, job.error = "failed", exc.message
        except Exception as exc:  # a job thread must record, not swallow, what went wrong
            job.status, job.error = "failed", f"{type(exc).__name__}: {exc}"
        finally:
            job.finished_at = time.time()

    def close(self) -> None:
        for job in self.list():
            job.cancel.set()
        self._pool.shutdown(wait=True, cancel_futures=True)
        for job in self.list():  # queued jobs the shutdown dropped never ran to clean up
            if job.uploads is not None:
                job.uploads.discard()
