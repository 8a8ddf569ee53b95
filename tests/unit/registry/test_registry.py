"""Registry repository functions on SQLite and PostgreSQL: catalog, models and lineage,
data sets, terms, tenants and keys, and the bad inputs each must refuse."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from constellation.errors import Conflict, InvalidInput, NotFound, Unauthenticated
from constellation.platform import Platform
from constellation.registry import (
    contributors,
    datasets,
    licences,
    models,
    ownership,
    service,
    tenants,
    terms,
)
from constellation.registry.licences import CATALOG, LicenceTerms


@pytest.fixture
def s(platform: Platform):
    with platform.db.session() as session:
        yield session


def _base(s: Session, platform: Platform, minilm_path: Path, name: str = "minilm") -> models.Model:
    contributors.ensure_contributor(s, id="sbert", name="SBERT", kind="organisation")
    return service.register_base(
        s, platform.store, src=minilm_path, name=name, task="embedding", author="sbert", licence="apache-2.0"
    )


def test_catalog_seeded_with_required_licences(s: Session) -> None:
    ids = set(licences.licence_ids(s))
    assert {
        "apache-2.0",
        "mit",
        "bsd-3-clause",
        "cc-by-4.0",
        "cc-by-sa-4.0",
        "cc-by-nc-4.0",
        "openrail-m",
        "llama3-community",
        "gemma",
    } <= ids
    nc = licences.get_licence(s, id="cc-by-nc-4.0")
    assert nc.commercial_use is False
    assert licences.get_licence(s, id="cc-by-sa-4.0").share_alike is True
    assert licences.get_licence(s, id="llama3-community").user_limit == 700_000_000
    assert licences.get_licence(s, id="openrail-m").restrictions


def test_catalog_seeding_is_idempotent(platform: Platform) -> None:
    with platform.db.session() as s:
        licences.ensure_catalog(s)
        assert len(licences.licence_ids(s)) == len(CATALOG)


def test_unknown_licence_lists_valid_ids(s: Session) -> None:
    with pytest.raises(InvalidInput) as e:
        licences.get_licence(s, id="wtfpl")
    assert "apache-2.0" in e.value.message and "cc-by-nc-4.0" in e.value.message


def test_custom_licence_added_once(s: Session) -> None:
    t = LicenceTerms(
        id="acme-eula", name="ACME EULA", commercial_use=False, restrictions=["internal use only"]
    )
    assert licences.add_custom_licence(s, terms=t).custom is True
    with pytest.raises(Conflict):
        licences.add_custom_licence(s, terms=t)


def test_register_base_and_lineage_of_adapter_with_datasets(
    s: Session, platform: Platform, minilm_path: Path, tmp_path: Path
) -> None:
    base = _base(s, platform, minilm_path)
    assert base.kind == "base" and base.card.get("license") == "apache-2.0"
    contributors.add_contributor(s, id="acme", name="ACME", kind="organisation")
    files = []
    for i, n in enumerate((3, 5)):
        f = tmp_path / f"d{i}.jsonl"
        f.write_text("".join(json.dumps({"text": f"t{i}-{j}", "label": "a"}) + "\n" for j in range(n)))
        files.append(f)
    d0, created0 = service.register_dataset(
        s, platform.store, src=files[0], name="d0", licence="cc-by-4.0", provider="acme"
    )
    d1, _ = service.register_dataset(
        s, platform.store, src=files[1], name="d1", licence="cc-by-nc-4.0", provider="acme"
    )
    again, created_again = service.register_dataset(
        s, platform.store, src=files[0], name="d0-copy", licence="cc-by-4.0", provider="acme"
    )
    assert created0 and not created_again and again.id == d0.id
    assert (d0.example_count, d1.example_count) == (3, 5)
    # an adapter row registered directly (fit checks are the artifact store's, tested there)
    adapter = models.add_model(
        s,
        name="sent-v1",
        kind="adapter",
        task="embedding",
        artifact_digest=base.artifact_digest,
        licence_id="cc-by-nc-4.0",
        author_id="acme",
        base_name="minilm",
    )
    models.link_dataset(s, model=adapter, dataset=d0, weight=d0.example_count)
    models.link_dataset(s, model=adapter, dataset=d1, weight=d1.example_count)
    lin = models.lineage(s, model=adapter)
    assert lin.base is not None and lin.base.name == "minilm"
    assert sorted((d.name, w) for d, w in lin.datasets) == [("d0", 3), ("d1", 5)]


def test_duplicate_model_name_conflicts(s: Session, platform: Platform, minilm_path: Path) -> None:
    _base(s, platform, minilm_path)
    with pytest.raises(Conflict):
        _base(s, platform, minilm_path)


def test_derived_model_needs_a_base_of_matching_task(
    s: Session, platform: Platform, minilm_path: Path
) -> None:
    base = _base(s, platform, minilm_path)
    with pytest.raises(InvalidInput, match="needs its base"):
        models.add_model(
            s,
            name="x",
            kind="adapter",
            task="embedding",
            artifact_digest=base.artifact_digest,
            licence_id="mit",
            author_id="sbert",
        )
    with pytest.raises(InvalidInput, match="cannot sit on"):
        models.add_model(
            s,
            name="x",
            kind="adapter",
            task="causal-lm",
            artifact_digest=base.artifact_digest,
            licence_id="mit",
            author_id="sbert",
            base_name="minilm",
        )
    with pytest.raises(NotFound):
        models.add_model(
            s,
            name="x",
            kind="adapter",
            task="embedding",
            artifact_digest=base.artifact_digest,
            licence_id="mit",
            author_id="sbert",
            base_name="nope",
        )


def test_private_models_hidden_from_other_tenants(s: Session, platform: Platform, minilm_path: Path) -> None:
    base = _base(s, platform, minilm_path)
    tenants.add_tenant(s, id="a", name="A")
    tenants.add_tenant(s, id="b", name="B")
    models.add_model(
        s,
        name="a-secret",
        kind="adapter",
        task="embedding",
        artifact_digest=base.artifact_digest,
        licence_id="mit",
        author_id="sbert",
        base_name="minilm",
        visibility="private",
        owner_tenant_id="a",
    )
    assert "a-secret" in [m.name for m in models.list_models(s, tenant_id="a")]
    assert "a-secret" not in [m.name for m in models.list_models(s, tenant_id="b")]
    with pytest.raises(NotFound):
        models.get_visible_model(s, name="a-secret", tenant_id="b")


def test_remove_base_refused_while_adapters_depend(s: Session, platform: Platform, minilm_path: Path) -> None:
    base = _base(s, platform, minilm_path)
    models.add_model(
        s,
        name="child",
        kind="adapter",
        task="embedding",
        artifact_digest=base.artifact_digest,
        licence_id="mit",
        author_id="sbert",
        base_name="minilm",
    )
    with pytest.raises(Conflict, match="child"):
        models.remove_model(s, name="minilm")
    models.remove_model(s, name="child")
    models.remove_model(s, name="minilm")
    with pytest.raises(NotFound):
        models.get_model(s, name="minilm")


def test_terms_upsert_and_validate(s: Session, platform: Platform, minilm_path: Path) -> None:
    _base(s, platform, minilm_path)
    terms.set_term(
        s,
        subject_type="model",
        subject_name="minilm",
        contributor_id="sbert",
        kind="per_1k_input_tokens",
        amount_nanos=2000,
    )
    terms.set_term(
        s,
        subject_type="model",
        subject_name="minilm",
        contributor_id="sbert",
        kind="per_1k_input_tokens",
        amount_nanos=3000,
    )
    assert [t["amount_nanos"] for t in terms.list_terms(s)] == [3000]
    with pytest.raises(InvalidInput):
        terms.set_term(
            s,
            subject_type="model",
            subject_name="minilm",
            contributor_id="sbert",
            kind="per_minute",
            amount_nanos=1,
        )
    with pytest.raises(InvalidInput):
        terms.set_term(
            s,
            subject_type="model",
            subject_name="minilm",
            contributor_id="sbert",
            kind="per_request",
            amount_nanos=-1,
        )


def test_keys_hashed_scoped_and_revocable(s: Session) -> None:
    tenants.add_tenant(s, id="acme", name="ACME", declared_use="non-commercial")
    contributors.add_contributor(s, id="acme", name="ACME", kind="organisation")
    ownership.link(s, tenant_id="acme", contributor_id="acme")
    new = tenants.create_key(s, tenant_id="acme", scopes=["inference", "contributor:acme"])
    assert new.secret not in new.row.secret_hash and len(new.row.secret_hash) == 64
    assert tenants.authenticate(s, secret=new.secret).tenant_id == "acme"
    with pytest.raises(Unauthenticated):
        tenants.authenticate(s, secret=new.secret + "x")
    tenants.revoke_key(s, key_id=new.row.id)
    with pytest.raises(Unauthenticated, match="revoked"):
        tenants.authenticate(s, secret=new.secret)
    with pytest.raises(InvalidInput):
        tenants.create_key(s, tenant_id="acme", scopes=["root"])


def test_a_contributor_key_needs_its_tenant_linked_to_that_contributor(s: Session) -> None:
    """A `contributor:<id>` key reads that contributor's statement: another tenant's contributor,
    or an unknown one, is refused until an admin links the two."""
    tenants.add_tenant(s, id="acme", name="ACME")
    contributors.add_contributor(s, id="sbert", name="SBERT", kind="organisation")
    link = "link them first with `constellation tenants link acme --contributor sbert`"
    with pytest.raises(InvalidInput, match=link) as exc:
        tenants.create_key(s, tenant_id="acme", scopes=["inference", "contributor:sbert"])
    assert exc.value.param == "scopes"
    with pytest.raises(InvalidInput, match="contributor 'nobody'"):
        tenants.create_key(s, tenant_id="acme", scopes=["contributor:nobody"])
    ownership.link(s, tenant_id="acme", contributor_id="sbert")
    new = tenants.create_key(s, tenant_id="acme", scopes=["contributor:sbert"])
    assert new.row.scopes == ["contributor:sbert"]


def test_bad_slugs_and_kinds(s: Session) -> None:
    with pytest.raises(InvalidInput):
        contributors.add_contributor(s, id="Bad Id", name="x", kind="person")
    with pytest.raises(InvalidInput):
        contributors.add_contributor(s, id="ok", name="x", kind="robot")
    with pytest.raises(InvalidInput):
        tenants.add_tenant(s, id="t", name="t", declared_use="sometimes")
    with pytest.raises(NotFound):
        datasets.get_dataset(s, name="missing")
