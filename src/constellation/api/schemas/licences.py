"""Licence schemas: a licence's terms as registered and as answered."""

from __future__ import annotations

from pydantic import Field

from constellation.registry import licences as repo


class LicenceOut(repo.LicenceTerms):
    custom: bool = Field(description="added through the API, not from the built-in catalog")
