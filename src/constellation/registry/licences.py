"""The licence catalog: machine-readable terms for the licences open models and data come
under, seeded at start; operators may add custom licences with the same fields."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, Field, field_validator
from sqlalchemy import select
from sqlalchemy.orm import Session

from constellation.errors import Conflict, InvalidInput, NotFound
from constellation.registry.tables import Licence


class LicenceTerms(BaseModel):
    """A licence as data; also the JSON shape accepted for custom licences."""

    id: str = Field(min_length=2, max_length=64)
    name: str = Field(min_length=1, max_length=200)
    url: str | None = None
    commercial_use: bool
    attribution_required: bool = False
    attribution_text: str | None = None
    restrictions: list[str] = Field(default_factory=list)
    user_limit: int | None = Field(default=None, gt=0)
    share_alike: bool = False

    @field_validator("id")
    @classmethod
    def _slug(cls, v: str) -> str:
        if not re.fullmatch(r"[a-z0-9][a-z0-9.\-]*", v):
            raise ValueError(
                "licence id must be lowercase letters, digits, '.' and '-' (e.g. 'acme-eula-1.0')"
            )
        return v


_OPENRAIL_USES = [
    "no use that violates applicable law or regulation",
    "no use to harm minors or to generate or disseminate verifiably false information to harm others",
    "no fully automated decision-making that adversely impacts an individual's legal rights",
    "no use for medical advice or interpretation of medical results",
]

CATALOG: tuple[LicenceTerms, ...] = (
    LicenceTerms(
        id="apache-2.0",
        name="Apache License 2.0",
        url="https://www.apache.org/licenses/LICENSE-2.0",
        commercial_use=True,
        attribution_required=True,
        attribution_text="Licensed under the Apache License, Version 2.0.",
    ),
    LicenceTerms(
        id="mit",
        name="MIT License",
        url="https://opensource.org/license/mit",
        commercial_use=True,
        attribution_required=True,
        attribution_text="Licensed under the MIT License.",
    ),
    LicenceTerms(
        id="bsd-3-clause",
        name="BSD 3-Clause License",
        url="https://opensource.org/license/bsd-3-clause",
        commercial_use=True,
        attribution_required=True,
        attribution_text="Licensed under the BSD 3-Clause License.",
    ),
    LicenceTerms(
        id="cc-by-4.0",
        name="Creative Commons Attribution 4.0",
        url="https://creativecommons.org/licenses/by/4.0/",
        commercial_use=True,
        attribution_required=True,
        attribution_text="Licensed under CC BY 4.0.",
    ),
    LicenceTerms(
        id="cc-by-sa-4.0",
        name="Creative Commons Attribution-ShareAlike 4.0",
        url="https://creativecommons.org/licenses/by-sa/4.0/",
        commercial_use=True,
        attribution_required=True,
        attribution_text="Licensed under CC BY-SA 4.0.",
        share_alike=True,
    ),
    LicenceTerms(
        id="cc-by-nc-4.0",
        name="Creative Commons Attribution-NonCommercial 4.0",
        url="https://creativecommons.org/licenses/by-nc/4.0/",
        commercial_use=False,
        attribution_required=True,
        attribution_text="Licensed under CC BY-NC 4.0 (non-commercial use only).",
    ),
    LicenceTerms(
        id="openrail-m",
        name="BigScience OpenRAIL-M",
        url="https://www.licenses.ai/blog/2022/8/26/bigscience-open-rail-m-license",
        commercial_use=True,
        attribution_required=True,
        attribution_text="Licensed under the OpenRAIL-M licence.",
        restrictions=_OPENRAIL_USES,
    ),
    LicenceTerms(
        id="llama3-community",
        name="Meta Llama 3 Community License",
        url="https://www.llama.com/llama3/license/",
        commercial_use=True,
        attribution_required=True,
        attribution_text="Built with Meta Llama 3.",
        restrictions=["comply with the Meta Llama 3 Acceptable Use Policy"],
        user_limit=700_000_000,
    ),
    LicenceTerms(
        id="gemma",
        name="Gemma Terms of Use",
        url="https://ai.google.dev/gemma/terms",
        commercial_use=True,
        attribution_required=True,
        attribution_text="Gemma is provided under and subject to the Gemma Terms of Use.",
        restrictions=["comply with the Gemma Prohibited Use Policy"],
    ),
)


def ensure_catalog(s: Session) -> None:
    """Insert catalog licences that are missing (idempotent; never overwrites)."""
    have = set(s.scalars(select(Licence.id)))
    for terms in CATALOG:
        if terms.id not in have:
            s.add(Licence(**terms.model_dump(), custom=False))
    s.flush()


def licence_ids(s: Session) -> list[str]:
    return sorted(s.scalars(select(Licence.id)))


def get_licence(s: Session, *, id: str) -> Licence:
    """The licence `id`, or InvalidInput listing the valid ids (a bad id is bad input, not a 404)."""
    lic = s.get(Licence, id)
    if lic is None:
        raise InvalidInput(
            f"unknown licence '{id}'; valid licence ids: {', '.join(licence_ids(s))}. "
            "Add a custom licence first with `constellation licences add` or POST /api/licences.",
            param="license",
            code="unknown_license",
        )
    return lic


def find_licence(s: Session, *, id: str) -> Licence:
    lic = s.get(Licence, id)
    if lic is None:
        raise NotFound(f"no licence '{id}'", code="license_not_found")
    return lic


def add_custom_licence(s: Session, *, terms: LicenceTerms) -> Licence:
    if s.get(Licence, terms.id) is not None:
        raise Conflict(f"licence '{terms.id}' already exists; pick another id", code="duplicate_license")
    lic = Licence(**terms.model_dump(), custom=True)
    s.add(lic)
    s.flush()
    return lic


def licence_dict(lic: Licence) -> dict[str, Any]:
    return {
        **LicenceTerms.model_validate(lic, from_attributes=True).model_dump(),
        "custom": lic.custom,
    }
