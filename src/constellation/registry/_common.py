"""Small helpers shared by the repository modules: slug validation and duplicate detection."""

from __future__ import annotations

import re

from sqlalchemy.exc import IntegrityError as SAIntegrityError
from sqlalchemy.orm import Session

from constellation.errors import Conflict, InvalidInput

_SLUG = re.compile(r"[a-z0-9][a-z0-9._\-]{0,127}")


def check_slug(value: str, *, what: str) -> str:
    if not _SLUG.fullmatch(value):
        raise InvalidInput(
            f"invalid {what} '{value}': use lowercase letters, digits, '.', '_' and '-' "
            "(at most 128 characters, starting with a letter or digit), e.g. 'sentiment-v1'",
            param=what,
        )
    return value


def flush_or_conflict(s: Session, message: str) -> None:
    """Flush pending rows; a unique-key violation becomes a 409 with `message`."""
    try:
        s.flush()
    except SAIntegrityError:
        s.rollback()
        raise Conflict(message, code="duplicate")
