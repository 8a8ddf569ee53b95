"""Largest-remainder split of a step's busy time: exact sums, proportional shares."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from constellation.engine.attribution import split_ns


@given(st.integers(0, 10**12), st.lists(st.integers(0, 10_000), min_size=1, max_size=50))
def test_split_sums_exactly_and_is_proportional(total: int, weights: list[int]) -> None:
    shares = split_ns(total, weights)
    assert sum(shares) == total
    whole = sum(weights) or len(weights)
    for share, w in zip(shares, weights if sum(weights) else [1] * len(weights), strict=True):
        assert abs(share - total * w / whole) < 1


def test_split_examples() -> None:
    assert split_ns(10, [1, 1, 1]) == [4, 3, 3]
    assert split_ns(7, [0, 5]) == [0, 7]
    assert split_ns(5, []) == []
