"""Effective licence terms and per-request checks on SQLite and PostgreSQL: a table of licence
combinations x tenant declarations -> allowed or the exact refusal code, plus term sources."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from sqlalchemy.orm import Session

from constellation.errors import LicenseRefused
from constellation.platform import Platform
from constellation.registry import acceptances, contributors, datasets, licences, models, tenants
from constellation.registry.effective import check_use, effective_terms
from constellation.registry.licences import LicenceTerms
from constellation.registry.tables import Artifact, Model

DIGEST = "0" * 64


@pytest.fixture
def s(platform: Platform) -> Iterator[Session]:
    with platform.db.session() as session:
        contributors.ensure_contributor(session, id="acme", name="ACME", kind="organisation")
        session.add(Artifact(digest=DIGEST, kind="model", size_bytes=0, files={}))
        catalog = {t.id: t for t in licences.CATALOG}
        # custom licences: a small user cap, and OpenRAIL-M's restrictions without commercial use
        licences.add_custom_licence(
            session, terms=LicenceTerms(id="tiny-cap", name="Tiny cap", commercial_use=True, user_limit=1000)
        )
        licences.add_custom_licence(
            session,
            terms=LicenceTerms(
                id="rail-nc",
                name="RAIL non-commercial",
                commercial_use=False,
                restrictions=catalog["openrail-m"].restrictions,
            ),
        )
        yield session


def build(s: Session, *, base: str, adapter: str | None = None, data: tuple[str, ...] = ()) -> Model:
    """A base under `base`; with `adapter`, an adapter under it trained on data sets under `data`."""
    m = models.add_model(
        s,
        name="base",
        kind="base",
        task="embedding",
        artifact_digest=DIGEST,
        licence_id=base,
        author_id="acme",
    )
    if adapter is None:
        return m
    a = models.add_model(
        s,
        name="tuned",
        kind="adapter",
        task="embedding",
        artifact_digest=DIGEST,
        licence_id=adapter,
        author_id="acme",
        base_name="base",
    )
    for i, lic in enumerate(data):
        d = datasets.add_dataset(
            s,
            name=f"data-{i}",
            artifact_digest=DIGEST,
            sha256=f"{i:064d}",
            example_count=10,
            licence_id=lic,
            provider_id="acme",
        )
        models.link_dataset(s, model=a, dataset=d, weight=10)
    return a


@dataclass(frozen=True)
class Case:
    base: str
    adapter: str | None
    data: tuple[str, ...]
    use: str
    mau: int
    accepted: tuple[str, ...]
    expect: str | None  # None = allowed, else the refusal code
    withdrawn: tuple[str, ...] = field(default=())


NC, C = "non-commercial", "commercial"
LLAMA_CAP = 700_000_000
MATRIX: dict[str, Case] = {
    "apache base, commercial": Case("apache-2.0", None, (), C, 0, (), None),
    "apache adapter on CC-BY data, commercial": Case(
        "apache-2.0", "apache-2.0", ("cc-by-4.0",), C, 0, (), None
    ),
    "NC adapter, commercial": Case(
        "apache-2.0", "cc-by-nc-4.0", ("cc-by-nc-4.0",), C, 0, (), "license_non_commercial"
    ),
    "NC adapter, non-commercial": Case("apache-2.0", "cc-by-nc-4.0", ("cc-by-nc-4.0",), NC, 0, (), None),
    "NC data under a commercial adapter licence, commercial": Case(
        "apache-2.0", "apache-2.0", ("cc-by-nc-4.0",), C, 0, (), "license_non_commercial"
    ),
    "NC base, commercial": Case("cc-by-nc-4.0", None, (), C, 0, (), "license_non_commercial"),
    "share-alike data, commercial": Case("apache-2.0", "cc-by-sa-4.0", ("cc-by-sa-4.0",), C, 10**9, (), None),
    "llama, not accepted": Case("llama3-community", None, (), C, 10, (), "license_restrictions_not_accepted"),
    "llama, accepted": Case("llama3-community", None, (), C, 10, ("llama3-community",), None),
    "llama, accepted, at the user cap": Case(
        "llama3-community", None, (), C, LLAMA_CAP, ("llama3-community",), None
    ),
    "llama, accepted, over the user cap": Case(
        "llama3-community", None, (), C, LLAMA_CAP + 1, ("llama3-community",), "license_user_limit"
    ),
    "llama, over the cap and not accepted: cap first": Case(
        "llama3-community", None, (), NC, LLAMA_CAP + 1, (), "license_user_limit"
    ),
    "smallest cap wins (data 1000 < llama)": Case(
        "llama3-community",
        "llama3-community",
        ("tiny-cap",),
        C,
        1001,
        ("llama3-community",),
        "license_user_limit",
    ),
    "smallest cap, within it": Case(
        "llama3-community", "llama3-community", ("tiny-cap",), C, 1000, ("llama3-community",), None
    ),
    "openrail adapter, accepted": Case(
        "openrail-m", "openrail-m", ("cc-by-4.0",), C, 0, ("openrail-m",), None
    ),
    "openrail accepted, then withdrawn": Case(
        "openrail-m", None, (), C, 0, ("openrail-m",), "license_restrictions_not_accepted", ("openrail-m",)
    ),
    "rail-nc adapter, commercial though accepted": Case(
        "openrail-m", "rail-nc", (), C, 0, ("openrail-m", "rail-nc"), "license_non_commercial"
    ),
    "rail-nc adapter, non-commercial, one of two accepted": Case(
        "openrail-m", "rail-nc", (), NC, 0, ("openrail-m",), "license_restrictions_not_accepted"
    ),
    "rail-nc adapter, non-commercial, both accepted": Case(
        "openrail-m", "rail-nc", (), NC, 0, ("openrail-m", "rail-nc"), None
    ),
    "gemma, non-commercial, not accepted": Case(
        "gemma", None, (), NC, 0, (), "license_restrictions_not_accepted"
    ),
}


@pytest.mark.parametrize("case", MATRIX.values(), ids=MATRIX.keys())
def test_matrix(s: Session, case: Case) -> None:
    model = build(s, base=case.base, adapter=case.adapter, data=case.data)
    tenants.add_tenant(s, id="t", name="T", declared_use=case.use, monthly_active_users=case.mau)
    for lid in case.accepted:
        acceptances.accept(s, tenant_id="t", licence_id=lid, key_id=None)
    for lid in case.withdrawn:
        acceptances.withdraw(s, tenant_id="t", licence_id=lid)
    if case.expect is None:
        terms = check_use(s, tenant_id="t", model=model)
        assert terms == effective_terms(s, model=model)
        return
    with pytest.raises(LicenseRefused) as e:
        check_use(s, tenant_id="t", model=model)
    assert e.value.code == case.expect and e.value.status == 403
    assert f"'{model.name}'" in e.value.message


def test_refusal_names_artifact_licence_and_term_and_lists_alternatives(s: Session) -> None:
    tuned = build(s, base="apache-2.0", adapter="cc-by-nc-4.0", data=("cc-by-nc-4.0",))
    tenants.add_tenant(s, id="t", name="T", declared_use=C)
    with pytest.raises(LicenseRefused) as e:
        check_use(s, tenant_id="t", model=tuned)
    msg = e.value.message
    assert "model 'tuned' (cc-by-nc-4.0)" in msg and "non-commercial use only" in msg
    assert "you may use: base." in msg


def test_no_alternatives_says_so(s: Session) -> None:
    base = build(s, base="cc-by-nc-4.0")
    tenants.add_tenant(s, id="t", name="T", declared_use=C)
    with pytest.raises(LicenseRefused, match="No other embedding model is currently permitted"):
        check_use(s, tenant_id="t", model=base)


def test_terms_union_and_sources(s: Session) -> None:
    tuned = build(s, base="llama3-community", adapter="rail-nc", data=("tiny-cap", "cc-by-sa-4.0"))
    t = effective_terms(s, model=tuned)
    assert not t.commercial_use
    assert [(b.artifact, b.licence) for b in t.commercial_blockers] == [("tuned", "rail-nc")]
    assert t.user_limit == 1000 and t.user_limit_source is not None
    assert (t.user_limit_source.artifact, t.user_limit_source.artifact_type) == ("data-0", "dataset")
    assert [(x.artifact, x.licence) for x in t.share_alike] == [("data-1", "cc-by-sa-4.0")]
    assert t.acceptance_required == ["rail-nc", "llama3-community"]
    llama = licences.get_licence(s, id="llama3-community")
    assert {r.text for r in t.restrictions} >= set(llama.restrictions)
    # attribution: every element whose licence requires it, each notice naming its element
    assert {a.artifact for a in t.attributions} == {"base", "data-1"}
    assert any(n.startswith("base (llama3-community): ") for n in t.notices)
    as_dict = t.as_dict()
    assert as_dict["user_limit_source"]["artifact"] == "data-0"
    assert as_dict["acceptance_required"] == ["rail-nc", "llama3-community"]


def test_same_licence_on_base_and_adapter_is_one_obligation(s: Session) -> None:
    tuned = build(s, base="openrail-m", adapter="openrail-m")
    t = effective_terms(s, model=tuned)
    rail = licences.get_licence(s, id="openrail-m")
    assert [r.text for r in t.restrictions] == list(rail.restrictions)
    assert {r.artifact for r in t.restrictions} == {"tuned"}
    assert len(t.notices) == 2  # the notices still name both elements


def test_unknown_tenant_is_not_found(s: Session) -> None:
    from constellation.errors import NotFound

    base = build(s, base="mit")
    with pytest.raises(NotFound):
        check_use(s, tenant_id="nobody", model=base)
