"""Providers in the registry, on SQLite and PostgreSQL: exposing a model (a base without weights,
its list price as terms owed to the provider, role `provider` in the price), residency, and
data sets holding a provider's outputs passing its terms down to what is trained on them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy.orm import Session

from constellation.economy.pricing import load_inputs
from constellation.errors import Conflict, Forbidden, InvalidInput
from constellation.platform import Platform
from constellation.registry import contributors, datasets, models, tenants
from constellation.registry import providers as repo
from constellation.registry.effective import check_derived_licence, effective_terms
from constellation.registry.tables import Artifact

DIGEST = "0" * 64


@pytest.fixture
def s(platform: Platform) -> Iterator[Session]:
    with platform.db.session() as session:
        contributors.ensure_contributor(session, id="lab", name="Lab", kind="organisation")
        session.add(Artifact(digest=DIGEST, kind="model", size_bytes=0, files={}))
        models.add_model(
            session, name="open-base", kind="base", task="causal-lm", artifact_digest=DIGEST,
            licence_id="apache-2.0", author_id="lab",
        )  # fmt: skip
        repo.add_provider(
            session, id="closedai", base_url="https://api.example.com/v1/", api_key_env="CLOSED_KEY"
        )
        repo.expose_model(
            session, provider_id="closedai", upstream_model="frontier-1", name="frontier", task="causal-lm",
            price_per_1k_input=150, price_per_1k_output=600,
        )  # fmt: skip
        yield session


def test_an_exposed_model_is_a_provider_model_priced_for_its_provider(s: Session) -> None:
    m = models.get_model(s, name="frontier")
    assert (
        models.public_kind(m) == "provider" and m.author_id == "closedai" and m.licence_id == "provider-terms"
    )
    exposed = repo.exposure(s, model_id=m.id)
    assert exposed is not None and exposed.upstream_model == "frontier-1"
    assert exposed.provider.base_url == "https://api.example.com/v1"
    inputs = load_inputs(s, model_name="frontier")
    assert {(t.role, t.kind, t.amount_nanos) for t in inputs.terms} == {
        ("provider", "per_1k_input_tokens", 150),
        ("provider", "per_1k_output_tokens", 600),
    }
    with pytest.raises(Conflict):
        repo.remove_provider(s, id="closedai")
    with pytest.raises(InvalidInput):  # no weights here to adapt
        models.add_model(
            s, name="lora", kind="adapter", task="causal-lm", artifact_digest=DIGEST, licence_id="mit",
            author_id="lab", base_name="frontier",
        )  # fmt: skip


def test_residency_refuses_off_platform_providers_only(s: Session) -> None:
    tenants.add_tenant(s, id="bank", name="Bank")
    tenants.set_data_residency(s, tenant_id="bank", stays_on_platform=True)
    m = models.get_model(s, name="frontier")
    provider = repo.get_provider(s, id="closedai")
    with pytest.raises(Forbidden) as err:
        repo.check_residency(s, tenant_id="bank", model=m, provider=provider)
    assert err.value.code == "data_must_stay_on_platform" and "closedai" in err.value.message
    provider.on_platform = True
    repo.check_residency(s, tenant_id="bank", model=m, provider=provider)


def test_a_model_trained_on_provider_outputs_inherits_its_terms(s: Session) -> None:
    d = datasets.add_dataset(
        s, name="distilled", artifact_digest=DIGEST, sha256="1" * 64, example_count=3,
        licence_id="cc-by-4.0", provider_id="lab",
    )  # fmt: skip
    repo.mark_outputs(s, dataset=d, model_names=["frontier"])
    base = models.get_model(s, name="open-base")
    with pytest.raises(InvalidInput) as err:
        check_derived_licence(s, name="student", licence_id="apache-2.0", base=base, datasets=[d])
    assert err.value.code == "license_too_permissive" and "outputs of model 'frontier'" in err.value.message
    check_derived_licence(s, name="student", licence_id="provider-terms", base=base, datasets=[d])
    student = models.add_model(
        s, name="student", kind="adapter", task="causal-lm", artifact_digest=DIGEST,
        licence_id="provider-terms", author_id="lab", base_name="open-base",
    )  # fmt: skip
    models.link_dataset(s, model=student, dataset=d, weight=1)
    terms = effective_terms(s, model=student)
    assert "provider-terms" in terms.acceptance_required
    assert any(t.artifact == "frontier" and t.artifact_type == "outputs of model" for t in terms.attributions)
