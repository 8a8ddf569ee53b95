"""The health routes' schema: a status word."""

from __future__ import annotations

from pydantic import BaseModel


class StatusOut(BaseModel):
    status: str
