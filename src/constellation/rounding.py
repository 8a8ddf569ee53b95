"""Largest-remainder rounding: integer parts that sum exactly to a total, each within one of its
exact share. The one home of the rule for money splits (economy) and compute attribution (engine).
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["apportion", "split"]


def apportion(numers: Sequence[int], denom: int, total: int) -> list[int]:
    """Parts of `total` whose exact shares are `numers[i] / denom`: each part is the share's floor
    or one more, the extra units going to the largest remainders, ties to the earlier index (so a
    caller that passes a canonical order gets a canonical result).

    `total` must lie between the floors' sum and that sum plus `len(numers)`, which holds whenever
    it is the exact total rounded either way."""
    if denom <= 0:
        raise ValueError(f"denominator must be positive, got {denom}")
    if any(n < 0 for n in numers):
        raise ValueError("shares must be non-negative")
    parts = [n // denom for n in numers]
    extra = total - sum(parts)
    if extra < 0 or extra > len(numers):
        raise ValueError(f"cannot apportion {total} over shares whose floors sum to {sum(parts)}")
    if extra:
        # sorted() is stable: equal remainders keep their order, the earlier index first.
        for i in sorted(range(len(numers)), key=lambda i: -(numers[i] % denom))[:extra]:
            parts[i] += 1
    return parts


def split(total: int, weights: Sequence[int]) -> list[int]:
    """`total` split in proportion to `weights`, summing to `total` exactly; all-zero weights
    share it equally (a step's time is still charged to someone)."""
    if total < 0 or any(w < 0 for w in weights):
        raise ValueError("total and weights must be non-negative")
    if not weights:
        return []
    whole = sum(weights)
    if whole == 0:
        weights, whole = [1] * len(weights), len(weights)
    return apportion([total * w for w in weights], whole, total)
