"""Largest-remainder rounding: parts sum exactly to the total, each within one of its exact
share, ties to the earlier index, the same answer for the same input."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from constellation.rounding import apportion, split


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 10**12), min_size=1, max_size=8), st.integers(1, 10**6), st.booleans())
def test_apportion_is_exact_and_within_one(numers: list[int], denom: int, round_up: bool) -> None:
    total = -(-sum(numers) // denom) if round_up else sum(numers) // denom
    parts = apportion(numers, denom, total)
    assert sum(parts) == total
    for n, p in zip(numers, parts, strict=True):
        assert p >= 0 and abs(p - Fraction(n, denom)) < 1
    assert apportion(numers, denom, total) == parts


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 10**15), st.lists(st.integers(0, 5000), min_size=1, max_size=40))
def test_split_is_exact_and_within_one(total: int, weights: list[int]) -> None:
    parts = split(total, weights)
    assert sum(parts) == total
    whole = sum(weights) or len(weights)
    for p, w in zip(parts, weights if sum(weights) else [1] * len(weights), strict=True):
        assert abs(p - Fraction(total * w, whole)) < 1


@given(st.integers(0, 1000), st.integers(1, 30))
def test_equal_weights_give_extras_to_the_earliest(total: int, n: int) -> None:
    parts = split(total, [1] * n)
    q, extra = divmod(total, n)
    assert parts == [q + 1] * extra + [q] * (n - extra)


def test_examples() -> None:
    assert split(10, [1, 1, 1]) == [4, 3, 3]
    assert split(7, [0, 5]) == [0, 7]
    assert split(5, [0, 0]) == [3, 2]
    assert split(5, []) == []
    assert apportion([150, 150], 100, 3) == [2, 1]  # the exact 1.5 + 1.5, rounded half up
    assert apportion([149, 151], 100, 3) == [1, 2]  # the larger remainder first


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: split(-1, [1]), "non-negative"),
        (lambda: split(5, [1, -1]), "non-negative"),
        (lambda: apportion([1, 2], 0, 1), "positive"),
        (lambda: apportion([100, 100], 100, 5), "cannot apportion 5"),
        (lambda: apportion([100, 100], 100, 1), "cannot apportion 1"),
    ],
)
def test_bad_input_is_refused(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()
