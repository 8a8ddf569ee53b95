"""Background fine-tuning jobs for `POST /api/finetunes`: one worker thread (training takes the
machine's cores), status and progress readable at any time, cancellable while queued or running.
A job's uploaded files are deleted when it ends, however it ends.

Jobs live in this process's memory: a restart forgets them, and since registration happens only
at the very end of a run, an interrupted job leaves nothing registered."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from constellation.economy.meter import Meter, UsageRecord
from constellation.errors import ConstellationError, NotFound
from constellation.finetune.service import FinetuneSpec, run_finetune
from constellation.finetune.trainer import Progress, TrainingCancelled
from constellation.finetune.uploads import UploadQuota, Uploads
from constellation.platform import Platform

log = logging.getLogger("constellation.finetune")


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
    held: bool = False  # admission reserved the job's worst-case price under its id
    timed_out: bool = False
    billed_nanos: int | None = None

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
            "price_nanos": self.billed_nanos,
        }


class JobManager:
    """Jobs of this process. With a meter, each job is admitted against its tenant's spending
    limit for its worst case (`finetune_max_seconds` of compute, after which it is stopped) and
    billed, once it ends, for the compute it used: a usage event of operation `finetune`."""

    def __init__(self, platform: Platform, meter: Meter | None = None) -> None:
        self.platform = platform
        self.meter = meter
        self.max_s = platform.settings.finetune_max_seconds
        self.device_class = "gpu" if platform.settings.engine.device.startswith("cuda") else "cpu"
        self.uploads = UploadQuota(platform.settings.finetune_upload_bytes)
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="finetune")

    def submit(self, spec: FinetuneSpec, *, tenant_id: str, uploads: Uploads | None = None) -> Job:
        """Queue a run; the job owns `uploads` from now on and deletes them when it ends."""
        job = Job(id=f"ft_{uuid.uuid4().hex[:16]}", spec=spec, tenant_id=tenant_id, uploads=uploads)
        if self.meter is not None:  # a 402 now, before anything is queued
            worst = self.meter.quote_training(seconds=self.max_s, device_class=self.device_class)
            job.held = self.meter.admit(tenant_id=tenant_id, estimate_nanos=worst, hold_id=job.id)
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
        """Train, bill, then publish the outcome: a poller that sees the final status also
        sees the price."""
        started, t0 = datetime.now(UTC), time.perf_counter_ns()
        status, ran = "failed", False
        try:
            status, ran = self._train(job)
        finally:
            if job.uploads is not None:
                job.uploads.discard()
            self._bill(job, status, started, time.perf_counter_ns() - t0 if ran else 0)
            job.status, job.finished_at = status, time.time()

    def _bill(self, job: Job, status: str, started: datetime, compute_ns: int) -> None:
        """Record the job's compute once, whatever its outcome (a failure is not charged)."""
        if self.meter is None or job.billed_nanos is not None:
            return
        usage = UsageRecord(
            request_id=job.id,
            tenant_id=job.tenant_id,
            model_name=job.spec.name,
            idempotency_key=None,
            fingerprint=hashlib.sha256(job.id.encode()).hexdigest(),
            input_tokens=0,
            output_tokens=0,
            compute_ns=compute_ns,
            device_class=self.device_class,
            status=status if status in ("succeeded", "cancelled") else "failed",
            started_at=started,
            finished_at=datetime.now(UTC),
            response=None,
            hold=job.held,
            operation="finetune",
        )
        try:
            job.billed_nanos = self.meter.record_blocking(usage).price_nanos
        except Exception as exc:  # the job's own outcome stands; the ledger error is the news
            log.error("fine-tuning job %s could not be billed: %s", job.id, exc)

    def _train(self, job: Job) -> tuple[str, bool]:
        """Run the job; its final status, and whether it ran at all."""
        if job.cancel.is_set():
            return "cancelled", False
        job.status = "running"
        timer = threading.Timer(self.max_s, self._time_out, args=(job,))
        timer.daemon = True
        timer.start()

        def progress(p: Progress) -> None:
            job.progress = {
                "step": p.step,
                "total": p.total,
                "epoch": p.epoch,
                "loss": round(p.loss, 5),
                "eta_s": round(p.eta_s, 1),
            }

        try:
            job.result = run_finetune(self.platform, job.spec, progress=progress, cancel=job.cancel).as_dict()
            return "succeeded", True
        except TrainingCancelled:
            if job.timed_out:
                job.error = f"stopped after finetune_max_seconds ({self.max_s:g} s); billed for that compute"
            return "cancelled", True
        except ConstellationError as exc:
            job.error = exc.message
        except Exception as exc:  # a job thread must record, not swallow, what went wrong
            job.error = f"{type(exc).__name__}: {exc}"
        finally:
            timer.cancel()
        return "failed", True

    @staticmethod
    def _time_out(job: Job) -> None:
        job.timed_out = True
        job.cancel.set()

    def close(self) -> None:
        for job in self.list():
            job.cancel.set()
        self._pool.shutdown(wait=True, cancel_futures=True)
        for job in self.list():  # queued jobs the shutdown dropped never ran to clean up
            if job.uploads is not None:
                job.uploads.discard()
            if job.billed_nanos is None:  # never ran: nothing charged, its hold released
                job.status = "cancelled"
                self._bill(job, "cancelled", datetime.now(UTC), 0)
