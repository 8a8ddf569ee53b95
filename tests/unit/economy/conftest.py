"""Economy fixtures: a small priced constellation (a base, an adapter trained on two data sets,
terms on each), a tenant, and a Meter on the platform's database (SQLite and PostgreSQL)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy.orm import Session

from constellation.economy.meter import Meter, UsageRecord
from constellation.platform import Platform
from constellation.registry import contributors, datasets, models, tenants, terms
from constellation.registry.tables import Artifact


def _artifact(s: Session, name: str) -> str:
    digest = hashlib.sha256(name.encode()).hexdigest()
    s.add(Artifact(digest=digest, kind="model", size_bytes=1, files={}))
    return digest


def build_constellation(s: Session) -> None:
    """base 'enc' (author sbert) <- adapter 'enc-sent' (author ada) trained on d1 (w=1), d2 (w=3)."""
    for cid, kind in (
        ("sbert", "organisation"),
        ("ada", "person"),
        ("dp1", "person"),
        ("dp2", "organisation"),
    ):
        contributors.add_contributor(s, id=cid, name=cid.upper(), kind=kind)
    tenants.add_tenant(s, id="acme", name="ACME")
    tenants.add_tenant(s, id="beta", name="Beta")
    models.add_model(
        s,
        name="enc",
        kind="base",
        task="embedding",
        artifact_digest=_artifact(s, "enc"),
        licence_id="apache-2.0",
        author_id="sbert",
    )
    adapter = models.add_model(
        s,
        name="enc-sent",
        kind="adapter",
        task="classification",
        artifact_digest=_artifact(s, "ad"),
        licence_id="mit",
        author_id="ada",
        base_name="enc",
        labels=["neg", "pos"],
    )
    for name, provider, w in (("d1", "dp1", 1), ("d2", "dp2", 3)):
        d = datasets.add_dataset(
            s,
            name=name,
            artifact_digest=_artifact(s, name),
            sha256=hashlib.sha256(name.encode()).hexdigest(),
            example_count=w * 10,
            licence_id="cc-by-4.0",
            provider_id=provider,
        )
        models.link_dataset(s, model=adapter, dataset=d, weight=w)
    terms.set_term(
        s,
        subject_type="model",
        subject_name="enc",
        contributor_id="sbert",
        kind="per_1k_input_tokens",
        amount_nanos=1_000,
    )
    terms.set_term(
        s,
        subject_type="model",
        subject_name="enc-sent",
        contributor_id="ada",
        kind="per_request",
        amount_nanos=500,
    )
    for name, provider in (("d1", "dp1"), ("d2", "dp2")):
        terms.set_term(
            s,
            subject_type="dataset",
            subject_name=name,
            contributor_id=provider,
            kind="per_request",
            amount_nanos=101,
        )


@pytest.fixture
def priced(platform: Platform) -> Platform:
    with platform.db.session() as s:
        build_constellation(s)
    return platform


@pytest.fixture
def meter(priced: Platform) -> Iterator[Meter]:
    m = Meter(priced.db, priced.settings.prices)
    yield m
    m.close()


def usage(
    request_id: str,
    *,
    tenant: str = "acme",
    model: str = "enc-sent",
    key: str | None = None,
    body: str = "{}",
    status: str = "succeeded",
    input_tokens: int = 100,
    output_tokens: int = 0,
    compute_ns: int = 2_000_000,
    when: datetime | None = None,
) -> UsageRecord:
    t = when or datetime.now(UTC)
    return UsageRecord(
        request_id=request_id,
        tenant_id=tenant,
        model_name=model,
        idempotency_key=key,
        fingerprint=hashlib.sha256(body.encode()).hexdigest(),
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        compute_ns=compute_ns,
        device_class="cpu",
        status=status,
        started_at=t,
        finished_at=t,
        response={"object": "list", "data": [request_id]},
    )
