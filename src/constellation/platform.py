"""The platform's long-lived parts, opened once per process by `serve` or a CLI command:
settings, database (migrated) and artifact store."""

from __future__ import annotations

from constellation.artifacts import ArtifactStore
from constellation.config import Settings
from constellation.registry.contributors import ensure_contributor
from constellation.registry.db import Database
from constellation.registry.licences import ensure_catalog

PLATFORM_ACCOUNT = "platform"


class Platform:
    """Settings + database + artifact store. `open()` migrates and seeds the licence catalog."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.db = Database(settings.database_url)
        self.store = ArtifactStore(settings.artifacts_dir)

    def open(self) -> Platform:
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.db.open()
        with self.db.session() as s:
            ensure_catalog(s)
            ensure_contributor(s, id=PLATFORM_ACCOUNT, name="Constellation platform", kind="platform")
        return self

    def close(self) -> None:
        self.db.close()
