"""A provider's secret, read at call time from the environment or from the operator's secrets
file (`CONSTELLATION_PROVIDER_SECRETS_FILE`, lines of `NAME=value`); never stored or logged."""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path

from constellation.errors import InvalidInput

# A variable name a provider may use: not one of the platform's own settings, which could
# otherwise be sent upstream as a bearer token (the database URL, say).
_VAR = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


def check_var(name: str) -> str:
    if not _VAR.fullmatch(name):
        raise InvalidInput(
            f"invalid variable name '{name}': use letters, digits and '_' (e.g. OPENAI_API_KEY)",
            param="api_key_env",
        )
    if name.upper().startswith("CONSTELLATION_"):
        raise InvalidInput(
            "a provider's key may not be read from a CONSTELLATION_* setting; name a variable of its own",
            param="api_key_env",
        )
    return name


class SecretSource:
    """Looks a variable up in the environment, then in the secrets file (re-read when it changes)."""

    def __init__(self, secrets_file: Path | None = None) -> None:
        self._file = secrets_file
        self._seen: tuple[int, int] | None = None  # (mtime_ns, size) of the file as last parsed
        self._values: dict[str, str] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> str | None:
        """The value, stripped of surrounding whitespace (a key pasted with its line break), or None."""
        value = (os.environ.get(name) or "").strip()
        if value:
            return value
        return self._from_file().get(name) or None

    def _from_file(self) -> dict[str, str]:
        if self._file is None:
            return {}
        try:
            st = self._file.stat()
        except OSError:
            return {}
        with self._lock:
            if self._seen != (st.st_mtime_ns, st.st_size):
                self._values = parse(self._file.read_text(encoding="utf-8"))
                self._seen = (st.st_mtime_ns, st.st_size)
            return self._values


def parse(text: str) -> dict[str, str]:
    """`NAME=value` lines; blank lines and `#` comments skipped, one pair of quotes stripped."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        name, _, value = line.removeprefix("export ").partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[name.strip()] = value
    return out
