"""The ledger's guarantees enforced by the database itself (SQLite and PostgreSQL): legs are
immutable, unbalanced or reopened transactions are refused; funding, limits and verify."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from constellation.economy import ledger
from constellation.economy.pricing import Leg
from constellation.errors import InvalidInput
from constellation.platform import Platform

LEG = (
    "INSERT INTO ledger_legs (txn_id, n, account_id, role, amount_nanos) "
    "VALUES (:t, :n, 'x', 'correction', :a)"
)
TXN = "INSERT INTO ledger_transactions (id, kind, created_us, memo) VALUES (:t, 'correction', 0, '')"


def _exec(platform: Platform, sql: str, **params: object) -> None:
    with platform.db.engine.begin() as conn:
        conn.execute(text(sql), params)


@pytest.fixture
def funded(priced: Platform) -> tuple[Platform, int]:
    with priced.db.session() as s:
        ledger.fund(s, tenant_id="acme", amount_nanos=1_000)
        txn = s.execute(text("SELECT id FROM ledger_transactions")).scalar_one()
    return priced, txn


@pytest.mark.parametrize(
    "sql",
    ["UPDATE ledger_legs SET amount_nanos = amount_nanos + 1", "DELETE FROM ledger_legs",
     "UPDATE ledger_transactions SET memo = 'x'", "DELETE FROM ledger_transactions"],
)  # fmt: skip
def test_database_refuses_changing_posted_ledger_rows(funded: tuple[Platform, int], sql: str) -> None:
    platform, _ = funded
    with pytest.raises(DBAPIError, match="immutable"):
        _exec(platform, sql)
    with platform.db.session() as s:
        assert ledger.verify(s) == [] and ledger.balance(s, account_id="tenant:acme") == 1_000


def _raw_post(platform: Platform, txn: int, amounts: list[int]) -> None:
    with platform.db.engine.begin() as conn:
        for n, a in enumerate(amounts):
            conn.execute(text(LEG), {"t": txn, "n": n, "a": a})
        conn.execute(text(TXN), {"t": txn})


def test_database_refuses_unbalanced_transaction(priced: Platform) -> None:
    with pytest.raises(DBAPIError, match="sum to zero"):
        _raw_post(priced, 900, [5, -4])
    _raw_post(priced, 901, [5, -5])  # the same path, balanced, is accepted


@pytest.mark.parametrize("first", [0, 1])  # PostgreSQL checks at commit through leg 0, so requires it
def test_database_refuses_legs_that_never_get_a_transaction_row(priced: Platform, first: int) -> None:
    refused = r"FOREIGN KEY|no transaction row|no leg 0"
    with pytest.raises(DBAPIError, match=refused), priced.db.engine.begin() as conn:
        for n, a in enumerate([5, -5], first):
            conn.execute(text(LEG), {"t": 902, "n": n, "a": a})  # balanced, but never posted
    with priced.db.session() as s:
        assert ledger.verify(s) == []


def test_database_refuses_legs_added_to_a_posted_transaction(funded: tuple[Platform, int]) -> None:
    platform, txn = funded
    with pytest.raises(DBAPIError, match="already posted"):
        _exec(platform, LEG, t=txn, n=9, a=0)


def test_post_refuses_unbalanced_legs_before_the_database(priced: Platform) -> None:
    with priced.db.session() as s, pytest.raises(InvalidInput, match="sum to zero"):
        ledger.post(s, kind="correction", legs=[Leg("tenant:acme", "correction", None, 3)])


def test_fund_limits_and_verify_catches_a_tampered_balance(priced: Platform) -> None:
    with priced.db.session() as s:
        assert ledger.fund(s, tenant_id="acme", amount_nanos=500) == 500
        ledger.set_limit(s, tenant_id="acme", prepaid=True)
        with pytest.raises(InvalidInput):
            ledger.fund(s, tenant_id="acme", amount_nanos=0)
        assert ledger.verify(s) == []
    _exec(priced, "UPDATE ledger_accounts SET balance_nanos = 7 WHERE id = 'external:deposits'")
    with priced.db.session() as s:
        problems = ledger.verify(s)
    assert len(problems) == 1 and "external:deposits" in problems[0]
