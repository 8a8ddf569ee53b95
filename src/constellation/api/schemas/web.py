"""The dashboard's own schema: who the key in use is (`GET /api/me`)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class MeOut(BaseModel):
    tenant: str
    key_id: str
    scopes: list[str]
    admin: bool
    contributors: list[str] = Field(description="contributors whose statements this key may read")
