"""JSONL files uploaded with `POST /api/finetunes`: written to a temporary folder of their own,
deleted once their job ends (or its request fails), and capped per tenant in bytes held at once
-- the registered data sets live on in the artifact store, not here."""

from __future__ import annotations

import re
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

from constellation.errors import InvalidInput, TooLarge

# A plain file name: no folders, no '..', nothing hidden; it becomes part of a data set's name.
_FILENAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*")
MAX_FILENAME = 100


def check_filenames(names: list[str]) -> None:
    """Refuse path-like, hidden or repeated names before anything is written."""
    for i, name in enumerate(names):
        if len(name) > MAX_FILENAME or not _FILENAME.fullmatch(name):
            raise InvalidInput(
                f"data[{i}].filename {name!r} is not a plain file name; send a name such as "
                f"'tickets.jsonl' (letters, digits, '-', '_' and dots between them, at most "
                f"{MAX_FILENAME} characters, no folders)",
                param=f"data.{i}.filename",
            )
    seen = {n.lower() for n in names}
    if len(seen) != len(names):
        raise InvalidInput("two uploaded files have the same filename; give each its own", param="data")


class UploadQuota:
    """Bytes each tenant's uploads hold on disk; a new upload that would pass `cap` is refused."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def reserve(self, tenant_id: str, nbytes: int) -> None:
        with self._lock:
            held = self._held.get(tenant_id, 0)
            if held + nbytes > self.cap:
                raise TooLarge(_too_large(nbytes, held, self.cap), param="data")
            self._held[tenant_id] = held + nbytes

    def release(self, tenant_id: str, nbytes: int) -> None:
        with self._lock:
            left = self._held.get(tenant_id, 0) - nbytes
            if left > 0:
                self._held[tenant_id] = left
            else:
                self._held.pop(tenant_id, None)

    def held(self, tenant_id: str) -> int:
        with self._lock:
            return self._held.get(tenant_id, 0)


def _encode(i: int, text: str) -> bytes:
    try:
        return text.encode()
    except UnicodeEncodeError as exc:
        raise InvalidInput(
            f"data[{i}].content is not valid text at character {exc.start} (a lone surrogate?); "
            "send the file as UTF-8",
            param=f"data.{i}.content",
        ) from None


def _too_large(nbytes: int, held: int, cap: int) -> str:
    mib = 2**20
    where = f" (your running and queued jobs hold {held / mib:.1f} MiB)" if held else ""
    return (
        f"uploaded data of {nbytes / mib:.1f} MiB would pass your tenant's {cap / mib:.0f} MiB of "
        f"uploads held at once{where}; wait for or cancel your jobs, split the data, or ask an "
        "admin to raise CONSTELLATION_FINETUNE_UPLOAD_BYTES"
    )


@dataclass(slots=True)
class Uploads:
    """One request's files in their own temporary folder, with the bytes they hold."""

    tenant_id: str
    folder: Path
    paths: list[Path]
    nbytes: int
    quota: UploadQuota
    _gone: bool = field(default=False)

    def discard(self) -> None:
        """Delete the files and give the bytes back (idempotent)."""
        if self._gone:
            return
        self._gone = True
        shutil.rmtree(self.folder, ignore_errors=True)
        self.quota.release(self.tenant_id, self.nbytes)


def save(root: Path, quota: UploadQuota, *, tenant_id: str, files: list[tuple[str, str]]) -> Uploads:
    """Write (filename, text) pairs under `root`/tmp, after checking names and the tenant's quota."""
    check_filenames([name for name, _ in files])
    blobs = [(name, _encode(i, text)) for i, (name, text) in enumerate(files)]
    nbytes = sum(len(b) for _, b in blobs)
    quota.reserve(tenant_id, nbytes)
    (root / "tmp").mkdir(parents=True, exist_ok=True)
    up = Uploads(tenant_id, Path(tempfile.mkdtemp(prefix="upload-", dir=root / "tmp")), [], nbytes, quota)
    try:
        for name, blob in blobs:
            path = up.folder / name
            path.write_bytes(blob)
            up.paths.append(path)
    except BaseException:
        up.discard()
        raise
    return up
