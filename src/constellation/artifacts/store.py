"""Content-addressed store of weights and data sets: `root/<digest[:2]>/<digest>/` + manifest.json.

Imports are atomic (temp dir, fsync, rename) and every file's sha256 is re-checked on `open`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from constellation.artifacts.card import ModelCard, read_card
from constellation.artifacts.peft import check_adapter_fits_base
from constellation.artifacts.validate import (
    MANIFEST,
    count_jsonl,
    list_files,
    validate_adapter_dir,
    validate_model_dir,
)
from constellation.errors import IntegrityError, InvalidInput, NotFound

_CHUNK = 1 << 20
_DIGEST_RE = re.compile(r"[0-9a-f]{64}")
_STALE_TMP_S = 6 * 3600  # older temp dirs are leftovers of a crashed import
DATASET_FILE = "data.jsonl"  # stored under a fixed name so the digest depends on content only


@dataclass(frozen=True, slots=True)
class Artifact:
    """One stored artifact; `digest` is the sha256 of its canonical manifest."""

    digest: str
    path: Path
    files: dict[str, str]
    size_bytes: int
    kind: str
    card: ModelCard | None
    examples: int | None = None  # JSON lines in a data set


class ArtifactStore:
    """Imports, verifies and removes artifacts under one root directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._tmp = root / ".tmp"
        self._tmp.mkdir(parents=True, exist_ok=True)
        self._sweep_stale_tmp()

    @property
    def scratch(self) -> Path:
        """Work space on the store's file system for conversions before an import."""
        return self._tmp

    def import_model_dir(self, src: Path) -> Artifact:
        files = list_files(src)
        validate_model_dir(src, files)
        return self._import(files, kind="model")

    def import_adapter_dir(self, src: Path, *, base: Path | None = None) -> Artifact:
        files = list_files(src)
        validate_adapter_dir(src, files)
        if base is not None:
            check_adapter_fits_base(src, base)
        return self._import(files, kind="adapter")

    def import_dataset_file(self, src: Path) -> Artifact:
        if not src.is_file():
            raise InvalidInput(f"{src} is not a file; pass the path of a JSONL data set.")
        examples = count_jsonl(src)
        return self._import([(DATASET_FILE, src)], kind="dataset", examples=examples)

    def open(self, digest: str) -> Path:
        """Verify every file against the manifest and return the artifact's directory."""
        path = self._dir(digest)
        self._verify(path, digest)
        return path

    def get(self, digest: str) -> Artifact:
        """The verified artifact with its manifest and card."""
        path = self._dir(digest)
        return _artifact(digest, path, self._verify(path, digest))

    def has(self, digest: str) -> bool:
        return bool(_DIGEST_RE.fullmatch(digest)) and (self._dir(digest) / MANIFEST).is_file()

    def remove(self, digest: str) -> None:
        path = self._dir(digest)
        if not path.is_dir():
            raise NotFound(f"No artifact {digest} in the store at {self.root}.")
        _discard(path, self._tmp)

    def _dir(self, digest: str) -> Path:
        if not _DIGEST_RE.fullmatch(digest):
            raise InvalidInput(f"{digest!r} is not an artifact digest (64 lowercase hex characters).")
        return self.root / digest[:2] / digest

    def _import(self, entries: list[tuple[str, Path]], *, kind: str, examples: int | None = None) -> Artifact:
        tmp = Path(tempfile.mkdtemp(dir=self._tmp))
        try:
            files = {rel: _copy_hashed(src, tmp / rel) for rel, src in entries}
            manifest: dict[str, Any] = {"version": 1, "kind": kind, "files": files}
            if examples is not None:
                manifest["examples"] = examples
            digest = _digest(manifest)
            _write_synced(tmp / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True).encode())
            _fsync_dirs(tmp)
            final = self._dir(digest)
            self._publish(tmp, final, digest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # already gone after a successful rename
        return _artifact(digest, final, manifest)

    def _publish(self, tmp: Path, final: Path, digest: str) -> None:
        """Rename into place; identical content already stored (and intact) is kept as is."""
        if final.exists():
            try:
                self._verify(final, digest)
                return
            except (IntegrityError, NotFound):
                _discard(final, self._tmp)  # a damaged copy is replaced by the fresh one
        final.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / MANIFEST).is_file():
                raise
            return  # a concurrent import of the same content won the race
        _fsync_path(final.parent)

    def _verify(self, path: Path, digest: str) -> dict[str, Any]:
        manifest = _read_manifest(path, digest)
        files: dict[str, dict[str, Any]] = manifest["files"]
        for rel, meta in files.items():
            _check_file(path, rel, str(meta.get("sha256")), digest)
        extra = sorted({rel for rel, _ in _walk(path)} - set(files) - {MANIFEST})
        if extra:
            raise IntegrityError(
                f"Artifact {digest} has files its manifest does not list: {', '.join(extra)}. "
                f"Remove them, or remove and re-import the artifact."
            )
        return manifest

    def _sweep_stale_tmp(self) -> None:
        now = time.time()
        for p in self._tmp.iterdir():
            try:
                if now - p.stat().st_mtime > _STALE_TMP_S:
                    shutil.rmtree(p, ignore_errors=True)
            except OSError:
                continue  # another process removed it first


@dataclass(frozen=True)
class ArtifactOpener:
    """`open(digest)` on `store` as a callable: what an engine spec's `resolve` is. A plain object,
    not a closure, so that a spec can be sent to an engine in another process: it pickles as the
    store's root and the digest, and opens the store there again."""

    store: ArtifactStore
    digest: str

    def __call__(self) -> Path:
        return self.store.open(self.digest)

    def __reduce__(self) -> tuple[Any, tuple[Path, str]]:
        return (_opener_at, (self.store.root, self.digest))


@functools.cache
def _store_at(root: Path) -> ArtifactStore:
    return ArtifactStore(root)


def _opener_at(root: Path, digest: str) -> ArtifactOpener:
    return ArtifactOpener(_store_at(root), digest)


def _artifact(digest: str, path: Path, manifest: dict[str, Any]) -> Artifact:
    files = manifest["files"]
    kind = manifest["kind"]
    return Artifact(
        digest=digest,
        path=path,
        files={rel: meta["sha256"] for rel, meta in files.items()},
        size_bytes=sum(int(meta["size"]) for meta in files.values()),
        kind=kind,
        card=None if kind == "dataset" else read_card(path),
        examples=manifest.get("examples"),
    )


def _digest(manifest: dict[str, Any]) -> str:
    canonical = json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _read_manifest(path: Path, digest: str) -> dict[str, Any]:
    try:
        manifest = json.loads((path / MANIFEST).read_bytes())
    except FileNotFoundError:
        raise NotFound(f"No artifact {digest} in the store; import it first.")
    except (OSError, ValueError) as e:
        raise IntegrityError(f"The manifest of artifact {digest} is unreadable ({e}); re-import it.")
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise IntegrityError(f"The manifest of artifact {digest} is malformed; re-import it.")
    actual = _digest(manifest)
    if actual != digest:
        raise IntegrityError(
            f"The manifest of artifact {digest} was changed on disk: expected sha256 {digest}, "
            f"actual {actual}. Remove the artifact and re-import it from its source."
        )
    return manifest


def _check_file(path: Path, rel: str, expected: str, digest: str) -> None:
    try:
        actual = sha256_file(path / rel)
    except FileNotFoundError:
        raise IntegrityError(
            f"{rel} of artifact {digest} is missing (expected sha256 {expected}, actual: no file). "
            f"Remove the artifact and re-import it from its source."
        )
    if actual != expected:
        raise IntegrityError(
            f"{rel} of artifact {digest} changed on disk: expected sha256 {expected}, actual {actual}. "
            f"Remove the artifact and re-import it from its source."
        )


def sha256_file(path: Path) -> str:
    """Streaming sha256, so a multi-GB file never sits in memory."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _copy_hashed(src: Path, dst: Path) -> dict[str, Any]:
    """Copy and hash in one pass, so the recorded sha256 is that of the bytes written."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    h, size = hashlib.sha256(), 0
    try:
        fin = src.open("rb")
    except OSError as e:
        raise InvalidInput(f"Cannot read {src}: {e.strerror}. Check the path and its permissions.")
    with fin, dst.open("wb") as fout:
        while chunk := fin.read(_CHUNK):
            h.update(chunk)
            fout.write(chunk)
            size += len(chunk)
        fout.flush()
        os.fsync(fout.fileno())
    os.chmod(dst, 0o444)  # stored bytes are immutable; edits show up as integrity errors anyway
    return {"sha256": h.hexdigest(), "size": size}


def _write_synced(path: Path, data: bytes) -> None:
    with path.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dirs(root: Path) -> None:
    """fsync every directory so the renamed tree's entries survive a crash."""
    for dirpath, _, _ in os.walk(root):
        _fsync_path(Path(dirpath))


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _walk(path: Path) -> list[tuple[str, Path]]:
    return [(p.relative_to(path).as_posix(), p) for p in path.rglob("*") if p.is_file() or p.is_symlink()]


def _discard(path: Path, tmp_root: Path) -> None:
    """Rename out of sight first so readers never see a half-deleted artifact."""
    trash = Path(tempfile.mkdtemp(dir=tmp_root)) / "x"
    os.rename(path, trash)
    shutil.rmtree(trash.parent, ignore_errors=True)
