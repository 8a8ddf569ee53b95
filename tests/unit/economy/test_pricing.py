"""Property tests of pricing and splitting: legs sum exactly to the price, no negative leg,
each leg within one nano-USD of its exact share, invariant to the order of terms."""

from __future__ import annotations

from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st

from constellation.economy.pricing import TERM_KINDS_ORDER, Rates, Term, price_legs, rescale

RATES = Rates("infra-cpu", 20_000, "platform", 1000)
kinds = st.sampled_from(TERM_KINDS_ORDER)
amounts = st.integers(min_value=0, max_value=10**7)
usage = st.fixed_dictionaries(
    {
        "input_tokens": st.integers(0, 100_000),
        "output_tokens": st.integers(0, 10_000),
        "compute_ns": st.integers(0, 10**11),
    }
)


@st.composite
def lineages(draw: st.DrawFn) -> list[Term]:
    terms = [Term(draw(st.sampled_from(["a", "b"])), "base", "base-m", draw(kinds), draw(amounts))]
    terms += [Term("c", "adapter", "ad", draw(kinds), draw(amounts)) for _ in range(draw(st.integers(0, 2)))]
    weights = draw(st.lists(st.integers(1, 1000), max_size=4))
    for i, w in enumerate(weights):
        terms.append(Term(f"p{i}", "data", f"d{i}", draw(kinds), draw(amounts), w, sum(weights)))
    return terms


def exact_shares(
    terms: list[Term], rates: Rates, u: dict[str, int]
) -> dict[tuple[str, str, str | None], Fraction]:
    """The naive reference: Fractions, term by term."""
    per = {
        "per_1k_input_tokens": Fraction(u["input_tokens"], 1000),
        "per_1k_output_tokens": Fraction(u["output_tokens"], 1000),
        "per_request": Fraction(1),
        "per_compute_second": Fraction(u["compute_ns"], 10**9),
    }
    out: dict[tuple[str, str, str | None], Fraction] = {
        (rates.infra_account, "infra", None): Fraction(rates.infra_nanos_per_second * u["compute_ns"], 10**9)
    }
    for t in terms:
        key = (t.contributor, t.role, t.artifact)
        out[key] = out.get(key, Fraction(0)) + t.amount_nanos * per[t.kind] * Fraction(
            t.weight, t.weight_total
        )
    fee = sum(out.values()) * Fraction(rates.platform_fee_bps, 10_000)
    out[(rates.platform_account, "platform", None)] = fee
    return out


@settings(max_examples=300, deadline=None)
@given(lineages(), usage)
def test_legs_sum_to_price_each_within_one_nano_of_exact(terms: list[Term], u: dict[str, int]) -> None:
    price, legs = price_legs(terms, RATES, **u)
    exact = exact_shares(terms, RATES, u)
    assert sum(g.amount_nanos for g in legs) == price
    assert abs(price - sum(exact.values())) <= Fraction(1, 2)
    got = {(g.account, g.role, g.artifact): g.amount_nanos for g in legs}
    for key, share in exact.items():
        assert abs(got.get(key, 0) - share) < 1, key
    assert all(g.amount_nanos > 0 for g in legs)


@settings(max_examples=200, deadline=None)
@given(lineages(), usage, st.randoms(use_true_random=False))
def test_price_invariant_to_term_order(terms: list[Term], u: dict[str, int], rnd) -> None:
    shuffled = list(terms)
    rnd.shuffle(shuffled)
    assert price_legs(terms, RATES, **u) == price_legs(shuffled, RATES, **u)


@settings(max_examples=200, deadline=None)
@given(lineages(), usage, st.floats(0, 1))
def test_rescale_caps_exactly_and_proportionally(terms: list[Term], u: dict[str, int], frac: float) -> None:
    price, legs = price_legs(terms, RATES, **u)
    cap = int(price * frac)
    capped = rescale(legs, cap)
    assert sum(g.amount_nanos for g in capped) == cap
    by_key = {(g.account, g.role, g.artifact): g.amount_nanos for g in capped}
    for g in legs:
        assert abs(by_key.get((g.account, g.role, g.artifact), 0) - Fraction(g.amount_nanos * cap, price)) < 1


def test_adapter_data_term_split_by_lineage_weight() -> None:
    terms = [
        Term("p1", "data", "d1", "per_request", 1000, 1, 4),
        Term("p2", "data", "d2", "per_request", 1000, 3, 4),
    ]
    no_fee = Rates("infra-cpu", 0, "platform", 0)
    price, legs = price_legs(terms, no_fee, input_tokens=0, output_tokens=0, compute_ns=0)
    assert price == 1000
    assert {g.artifact: g.amount_nanos for g in legs} == {"d1": 250, "d2": 750}
