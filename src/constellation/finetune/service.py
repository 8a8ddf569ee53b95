"""One fine-tuning run from JSONL to a live adapter, shared by `constellation finetune` and
`POST /api/finetunes`: validate everything first, train, then register the data sets, the
adapter and its lineage in one transaction -- a failure or Ctrl-C registers nothing."""

from __future__ import annotations

import shutil
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from constellation.errors import Conflict, InvalidInput
from constellation.finetune.data import Dataset, FinetuneTask, combined_examples, load_many
from constellation.finetune.trainer import LoraConfig, Progress, TrainResult, train_lora
from constellation.platform import Platform
from constellation.registry import contributors, models, ownership, service
from constellation.registry import datasets as ds_repo
from constellation.registry._common import check_slug
from constellation.registry.effective import check_derived_licence
from constellation.registry.licences import get_licence
from constellation.registry.providers import output_models
from constellation.registry.tables import Dataset as DatasetRow

BASE_TASK = {"classification": "embedding", "causal-lm": "causal-lm"}


@dataclass(slots=True)
class FinetuneSpec:
    """Everything one run needs; `data_license` defaults to `license`. `acting_tenant` None is an
    operator (admin key, CLI): any base, any contributor, unknown ones created. A tenant sees
    only its visible bases and names only the contributors it owns."""

    base: str
    task: FinetuneTask
    data: list[Path]
    name: str
    author: str
    data_provider: str
    license: str
    data_license: str | None = None
    data_names: list[str] | None = None
    # Models (e.g. a provider's) whose outputs the data holds: the adapter inherits their terms.
    outputs_of: list[str] = field(default_factory=list)
    config: LoraConfig = field(default_factory=LoraConfig)
    visibility: str = "public"
    owner_tenant: str | None = None
    acting_tenant: str | None = None


@dataclass(frozen=True, slots=True)
class FinetuneOutcome:
    model: str
    result: TrainResult
    datasets: list[dict[str, Any]]

    def as_dict(self) -> dict[str, Any]:
        r = self.result
        return {
            "model": self.model,
            "metrics": r.metrics,
            "labels": list(r.labels),
            "n_train": r.n_train,
            "n_valid": r.n_valid,
            "duration_s": round(r.duration_s, 2),
            "datasets": self.datasets,
        }


def _dataset_names(spec: FinetuneSpec, sets: list[Dataset]) -> list[str]:
    if spec.data_names:
        if len(spec.data_names) != len(sets):
            raise InvalidInput("give one data set name per --data file", param="data_names")
        return spec.data_names
    return [f"{spec.name}-{Path(d.path).stem}".lower().replace("_", "-") for d in sets]


def preflight(s: Session, spec: FinetuneSpec, sets: list[Dataset]) -> None:
    """Every check that can fail without training, so a bad request costs nothing."""
    check_slug(spec.name, what="name")
    base = _base(s, spec)
    _check_name_free(s, spec.name)
    get_licence(s, id=spec.license)
    data_licence = get_licence(s, id=spec.data_license or spec.license)
    _check_contributors(s, spec)
    existing = [_reusable(s, spec, d) for d in sets]
    names = _dataset_names(spec, sets)
    for e, n in zip(existing, names, strict=True):
        if e is None:
            _check_dataset_name_free(s, n)
    rows = [e or DatasetRow(name=n, licence_id=data_licence.id) for e, n in zip(existing, names, strict=True)]
    sources = output_models(s, names=spec.outputs_of, tenant_id=spec.acting_tenant)
    check_derived_licence(
        s, name=spec.name, licence_id=spec.license, base=base, datasets=rows, outputs_of=sources
    )
    s.rollback()  # preflight only looks; contributors are created again at registration


def _reusable(s: Session, spec: FinetuneSpec, d: Dataset) -> DatasetRow | None:
    """An upload matching a data set the caller may see reuses it; one matching another tenant's
    is registered afresh, so the job neither confirms nor names that tenant's data."""
    return ds_repo.find_reusable_dataset(s, sha256=d.sha256, owner_tenant_id=spec.acting_tenant)


def _base(s: Session, spec: FinetuneSpec) -> models.Model:
    """The base to train on, as the acting tenant sees it (another's private model is missing)."""
    if spec.acting_tenant is None:
        base = models.get_model(s, name=spec.base)
    else:
        base = models.get_visible_model(s, name=spec.base, tenant_id=spec.acting_tenant)
    want = BASE_TASK[spec.task]
    if models.public_kind(base) == "provider":
        raise InvalidInput(
            f"'{spec.base}' is served by an upstream provider, whose weights are not here to train; "
            "fine-tune an open base on its outputs instead",
            param="base",
        )
    if base.kind != "base" or base.task != want:
        raise InvalidInput(
            f"a {spec.task} adapter needs a {want} base model; '{spec.base}' is a {base.task} {base.kind}",
            param="base",
        )
    return base


def _check_name_free(s: Session, name: str) -> None:
    """Names are global, so a clash says only that the name is taken: never whose model, or
    what kind, since it may be another tenant's private one."""
    if s.scalar(select(models.Model.id).where(models.Model.name == name)) is not None:
        raise Conflict(f"the name '{name}' is taken; pick another name", param="name", code="name_taken")


def _check_dataset_name_free(s: Session, name: str) -> None:
    check_slug(name, what="data set name")
    if s.scalar(select(DatasetRow.id).where(DatasetRow.name == name)) is not None:
        raise Conflict(
            f"the data set name '{name}' (adapter name + file name) is taken; rename the file or the adapter",
            param="name",
            code="name_taken",
        )


def _check_contributors(s: Session, spec: FinetuneSpec) -> None:
    """An operator may credit anyone (unknown ids are created); a tenant only what it owns."""
    for cid, param in ((spec.author, "author"), (spec.data_provider, "data_provider")):
        if spec.acting_tenant is None:
            contributors.ensure_contributor(s, id=cid, name=cid, kind="organisation")
        else:
            ownership.check_may_name(s, tenant_id=spec.acting_tenant, contributor_id=cid, param=param)


def register(
    platform: Platform, spec: FinetuneSpec, sets: list[Dataset], out_dir: Path, result: TrainResult
) -> FinetuneOutcome:
    """Record data sets (reusing any the caller may see with the same sha256), the adapter and its
    lineage; a tenant's new data sets are its own."""
    with platform.db.session() as s:
        _check_contributors(s, spec)  # links may have changed while it trained
        linked: list[tuple[str, int]] = []
        recorded = []
        for d, name in zip(sets, _dataset_names(spec, sets), strict=True):
            row, created = service.register_dataset(
                s,
                platform.store,
                src=d.path,
                name=name,
                licence=spec.data_license or spec.license,
                provider=spec.data_provider,
                example_count=d.n_examples,
                owner_tenant=spec.acting_tenant,
                outputs_of=spec.outputs_of,
            )
            linked.append((row.name, row.example_count))
            recorded.append(
                {
                    "name": row.name,
                    "sha256": row.sha256,
                    "examples": row.example_count,
                    "created": created,
                    "duplicates_dropped": d.duplicates_dropped,
                }
            )
        card = {
            "metrics": result.metrics,
            "training": {**result.config, "n_train": result.n_train, "n_valid": result.n_valid},
        }
        service.register_adapter(
            s,
            platform.store,
            src=out_dir,
            name=spec.name,
            base=spec.base,
            author=spec.author,
            licence=spec.license,
            task=spec.task,
            datasets=list(linked),
            card=card,
            visibility=spec.visibility,
            owner_tenant=spec.owner_tenant,
            max_rank=platform.settings.engine.max_lora_rank,
        )
    return FinetuneOutcome(model=spec.name, result=result, datasets=recorded)


def validate(platform: Platform, spec: FinetuneSpec) -> list[Dataset]:
    """Parse the data (errors carry line numbers) and run every registry check; writes nothing."""
    sets = load_many(spec.data, spec.task)
    with platform.db.session() as s:
        preflight(s, spec, sets)
    return sets


def run_finetune(
    platform: Platform,
    spec: FinetuneSpec,
    *,
    progress: Callable[[Progress], None] | None = None,
    cancel: threading.Event | None = None,
) -> FinetuneOutcome:
    """Validate, train, register. Raises InvalidInput / TrainingCancelled with nothing registered."""
    sets = validate(platform, spec)
    with platform.db.session() as s:
        base_dir = platform.store.open(models.get_model(s, name=spec.base).artifact_digest)
    work = platform.settings.data_dir / "tmp" / f"finetune-{uuid.uuid4().hex[:12]}"
    try:
        result = train_lora(
            base_dir=base_dir,
            task=spec.task,
            train=combined_examples(sets),
            valid=None,
            out_dir=work,
            config=spec.config,
            progress=progress,
            cancel=cancel,
        )
        return register(platform, spec, sets, work, result)
    finally:
        shutil.rmtree(work, ignore_errors=True)
