"""Registration services shared by the CLI and the admin API: import weights or data into
the artifact store and record them, their licence, author and lineage, in one transaction."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from constellation.artifacts import Artifact as StoredArtifact
from constellation.artifacts import ArtifactStore, check_adapter_fits_base
from constellation.artifacts.gguf import converted, is_gguf
from constellation.artifacts.peft import names_match
from constellation.artifacts.store import sha256_file
from constellation.config import EngineLimits
from constellation.errors import InvalidInput
from constellation.registry import datasets as ds_repo
from constellation.registry import models as model_repo
from constellation.registry.effective import check_derived_licence
from constellation.registry.inputs import AdapterIn, BaseIn
from constellation.registry.licences import get_licence
from constellation.registry.providers import mark_outputs
from constellation.registry.tables import Artifact, Dataset, Model

log = logging.getLogger(__name__)


def _record_artifact(s: Session, art: StoredArtifact) -> None:
    if s.get(Artifact, art.digest) is None:
        s.add(Artifact(digest=art.digest, kind=art.kind, size_bytes=art.size_bytes, files=dict(art.files)))
        s.flush()


def _card_dict(art: StoredArtifact) -> dict[str, Any]:
    c = art.card
    if c is None:
        return {}
    return {
        "license": c.license,
        "base_model": c.base_model,
        "datasets": list(c.datasets),
        "tags": list(c.tags),
    }


def _licence_from(s: Session, licence: str | None, art: StoredArtifact) -> str:
    lid = licence or (art.card.license if art.card else None)
    if not lid:
        raise InvalidInput(
            "no licence given and the model card has none: pass --license (e.g. apache-2.0)", param="license"
        )
    return get_licence(s, id=lid.lower()).id


def register_base(
    s: Session,
    store: ArtifactStore,
    *,
    src: Path,
    name: str,
    task: str,
    author: str,
    licence: str | None = None,
    labels: list[str] | None = None,
    visibility: str = "public",
    owner_tenant: str | None = None,
    card: dict[str, Any] | None = None,
) -> Model:
    """Import a Hugging Face model directory, or a GGUF file (dequantised into one), as a base."""
    if is_gguf(src):
        with converted(src, store.scratch) as (hf_dir, source):
            return register_base(
                s, store, src=hf_dir, name=name, task=task, author=author, licence=licence,
                labels=labels, visibility=visibility, owner_tenant=owner_tenant,
                card={"source_name": source.file_name, "name_or_path": source.name, **source.as_card(),
                      **(card or {})},
            )  # fmt: skip
    art = store.import_model_dir(src)
    _record_artifact(s, art)
    return model_repo.add_model(
        s,
        name=name,
        kind="base",
        task=task,
        artifact_digest=art.digest,
        licence_id=_licence_from(s, licence, art),
        author_id=author,
        labels=labels,
        card={
            **_card_dict(art),
            "source_name": src.resolve().name,
            "name_or_path": _config_name(src),
            **(card or {}),
        },
        visibility=visibility,
        owner_tenant_id=owner_tenant,
    )


def add_base(s: Session, store: ArtifactStore, spec: BaseIn) -> Model:
    """`register_base` from the input schema the admin API and the CLI share."""
    return register_base(
        s, store, src=Path(spec.path), name=spec.name, task=spec.task, author=spec.author,
        licence=spec.license, labels=spec.labels, visibility=spec.visibility, owner_tenant=spec.owner_tenant,
    )  # fmt: skip


def _config_name(src: Path) -> str | None:
    try:
        value = json.loads((src / "config.json").read_text()).get("_name_or_path")
    except (OSError, ValueError):
        return None
    return str(value) if value else None


def _check_declared_base(src: Path, base_row: Model, base_files: dict[str, str]) -> None:
    """The adapter's `base_model_name_or_path` must name this base: by its registered name,
    its source directory or hub id, or a local directory holding the very same weights."""
    try:
        declared = str(
            json.loads((src / "adapter_config.json").read_text()).get("base_model_name_or_path") or ""
        )
    except (OSError, ValueError):
        return  # the artifact store reports unreadable configs with a precise message
    names = [base_row.name, base_row.card.get("source_name"), base_row.card.get("name_or_path")]
    if not declared or any(n and names_match(declared, str(n)) for n in names):
        return
    local = Path(declared)
    if local.is_dir():
        weights = sorted(local.glob("*.safetensors"))
        if weights and all(base_files.get(w.name) == sha256_file(w) for w in weights):
            return
    raise InvalidInput(
        f"the adapter was trained on {declared!r} (base_model_name_or_path in adapter_config.json) "
        f"but is being attached to '{base_row.name}'; attach it to the base it was trained on, or set "
        f"base_model_name_or_path to '{base_row.name}' if they are the same model",
        param="base",
    )


def _head_labels(src: Path) -> list[str] | None:
    head = src / "classifier_head.json"
    if not head.is_file():
        return None
    labels = json.loads(head.read_text()).get("labels")
    return [str(x) for x in labels] if isinstance(labels, list) else None


def register_adapter(
    s: Session,
    store: ArtifactStore,
    *,
    src: Path,
    name: str,
    base: str,
    author: str,
    licence: str | None = None,
    task: str | None = None,
    labels: list[str] | None = None,
    datasets: list[tuple[str, int | None]] | None = None,
    visibility: str = "public",
    owner_tenant: str | None = None,
    card: dict[str, Any] | None = None,
    max_rank: int | None = None,
) -> Model:
    """Import a PEFT adapter directory trained anywhere onto a registered base, refusing what the
    base's engine cannot serve (ranks above `max_rank`: default, the engine setting's default).

    `datasets` are (registered data set name, weight or None = its example count)."""
    base_row = model_repo.get_model(s, name=base)
    base_dir = store.open(base_row.artifact_digest)
    _check_declared_base(src, base_row, dict(store.get(base_row.artifact_digest).files))
    limit = max_rank if max_rank is not None else EngineLimits().max_lora_rank
    notes = check_adapter_fits_base(src, base_dir, max_rank=limit, task=base_row.task)
    for note in notes:
        log.warning("adapter %r: %s", name, note)
    art = store.import_adapter_dir(src)
    _record_artifact(s, art)
    head_labels = _head_labels(src)
    if labels and head_labels and labels != head_labels:
        raise InvalidInput(
            f"labels {labels} differ from the adapter head's labels {head_labels}", param="labels"
        )
    labels = labels or head_labels
    task = task or ("classification" if labels else base_row.task)
    linked = [(ds_repo.get_dataset(s, name=n), w) for n, w in datasets or []]
    licence_id = _licence_from(s, licence, art)
    # training-time rules: no more permissive than the base and data it was made from
    check_derived_licence(s, name=name, licence_id=licence_id, base=base_row, datasets=[d for d, _ in linked])
    m = model_repo.add_model(
        s,
        name=name,
        kind="adapter",
        task=task,
        artifact_digest=art.digest,
        licence_id=licence_id,
        author_id=author,
        base_name=base,
        labels=labels,
        card={**_card_dict(art), **({"notes": notes} if notes else {}), **(card or {})},
        visibility=visibility,
        owner_tenant_id=owner_tenant,
    )
    for d, weight in linked:
        model_repo.link_dataset(s, model=m, dataset=d, weight=weight or d.example_count)
    return m


def add_adapter(s: Session, store: ArtifactStore, spec: AdapterIn, *, max_rank: int | None = None) -> Model:
    """`register_adapter` from the input schema the admin API and the CLI share."""
    return register_adapter(
        s, store, src=Path(spec.path), name=spec.name, base=spec.base, author=spec.author,
        licence=spec.license, task=spec.task, labels=spec.labels,
        datasets=[(d, None) for d in spec.datasets], visibility=spec.visibility,
        owner_tenant=spec.owner_tenant, max_rank=max_rank,
    )  # fmt: skip


def register_dataset(
    s: Session,
    store: ArtifactStore,
    *,
    src: Path,
    name: str,
    licence: str,
    provider: str,
    example_count: int | None = None,
    owner_tenant: str | None = None,
    outputs_of: list[str] | None = None,
) -> tuple[Dataset, bool]:
    """Import a JSONL data set; returns (row, created). The same bytes registered again are reused
    where `owner_tenant` (None: an operator) may see them; otherwise it gets a data set of its own.
    `outputs_of` names models (e.g. a provider's) whose outputs it holds: what is trained on it
    inherits their licences."""
    art = store.import_dataset_file(src)
    sha = art.files[next(iter(art.files))]
    existing = ds_repo.find_reusable_dataset(s, sha256=sha, owner_tenant_id=owner_tenant)
    if existing is not None:
        mark_outputs(s, dataset=existing, model_names=outputs_of or [], tenant_id=owner_tenant)
        return existing, False
    _record_artifact(s, art)
    count = example_count if example_count is not None else (art.examples or 0)  # the store counted lines
    d = ds_repo.add_dataset(
        s,
        name=name,
        artifact_digest=art.digest,
        sha256=sha,
        example_count=count,
        licence_id=licence,
        provider_id=provider,
        owner_tenant_id=owner_tenant,
    )
    mark_outputs(s, dataset=d, model_names=outputs_of or [], tenant_id=owner_tenant)
    return d, True
