"""Tenant declarations on SQLite and PostgreSQL: declared use and monthly active users, and
audited acceptances of flow-down restrictions (idempotent, withdrawable, history kept)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy.orm import Session

from constellation.errors import InvalidInput, NotFound
from constellation.platform import Platform
from constellation.registry import acceptances, licences, tenants
from constellation.registry.effective import accepted_licences


@pytest.fixture
def s(platform: Platform) -> Iterator[Session]:
    with platform.db.session() as session:
        tenants.add_tenant(session, id="acme", name="ACME")
        yield session


def test_accept_records_time_key_and_the_restrictions_accepted(s: Session) -> None:
    a = acceptances.accept(s, tenant_id="acme", licence_id="openrail-m", key_id="k1")
    rail = licences.get_licence(s, id="openrail-m")
    assert (a.key_id, a.via, a.restrictions) == ("k1", "api", rail.restrictions)
    assert a.accepted_at is not None and a.withdrawn_at is None
    assert accepted_licences(s, tenant_id="acme") == {"openrail-m"}


def test_accepting_twice_keeps_the_first_acceptance(s: Session) -> None:
    first = acceptances.accept(s, tenant_id="acme", licence_id="gemma", key_id="k1")
    again = acceptances.accept(s, tenant_id="acme", licence_id="gemma", key_id=None, via="cli")
    assert again.id == first.id and again.key_id == "k1"
    assert len(acceptances.list_acceptances(s, tenant_id="acme")) == 1


def test_withdraw_then_accept_again_keeps_history(s: Session) -> None:
    acceptances.accept(s, tenant_id="acme", licence_id="gemma", key_id="k1")
    w = acceptances.withdraw(s, tenant_id="acme", licence_id="gemma")
    assert w.withdrawn_at is not None
    assert accepted_licences(s, tenant_id="acme") == set()
    acceptances.accept(s, tenant_id="acme", licence_id="gemma", key_id=None, via="cli")
    history = acceptances.list_acceptances(s, tenant_id="acme", include_withdrawn=True)
    assert [(h.via, h.withdrawn_at is None) for h in history] == [("api", False), ("cli", True)]
    assert acceptances.acceptance_dict(history[1])["license"] == "gemma"


def test_bad_acceptances_are_refused_with_a_reason(s: Session) -> None:
    with pytest.raises(InvalidInput, match="no use restrictions to accept"):
        acceptances.accept(s, tenant_id="acme", licence_id="mit", key_id=None)
    with pytest.raises(InvalidInput, match="valid licence ids"):
        acceptances.accept(s, tenant_id="acme", licence_id="nope", key_id=None)
    with pytest.raises(NotFound, match="no tenant"):
        acceptances.accept(s, tenant_id="ghost", licence_id="gemma", key_id=None)
    with pytest.raises(NotFound, match="no acceptance"):
        acceptances.withdraw(s, tenant_id="acme", licence_id="gemma")


def test_set_declarations(s: Session) -> None:
    t = acceptances.set_declarations(s, tenant_id="acme", declared_use="non-commercial")
    assert (t.declared_use, t.monthly_active_users) == ("non-commercial", 0)
    t = acceptances.set_declarations(s, tenant_id="acme", monthly_active_users=5000)
    assert (t.declared_use, t.monthly_active_users) == ("non-commercial", 5000)
    with pytest.raises(InvalidInput, match="declared use must be one of"):
        acceptances.set_declarations(s, tenant_id="acme", declared_use="personal")
    with pytest.raises(InvalidInput, match="negative"):
        acceptances.set_declarations(s, tenant_id="acme", monthly_active_users=-1)
