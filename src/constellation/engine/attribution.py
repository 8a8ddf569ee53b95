"""Charging one engine step's busy time to the requests in it, by their share of its tokens.

Largest-remainder rounding keeps integers and makes the shares sum exactly to the step's time.
"""

from __future__ import annotations

from collections.abc import Sequence


def split_ns(total_ns: int, weights: Sequence[int]) -> list[int]:
    """`total_ns` split in proportion to `weights` (token counts); sums exactly to `total_ns`."""
    if total_ns < 0 or any(w < 0 for w in weights):
        raise ValueError("time and weights must be non-negative")
    whole = sum(weights)
    if not weights:
        return []
    if whole == 0:
        weights, whole = [1] * len(weights), len(weights)
    shares = [total_ns * w // whole for w in weights]
    remainders = [total_ns * w % whole for w in weights]
    # The leftover nanoseconds go to the largest remainders (ties: earliest request).
    order = sorted(range(len(weights)), key=lambda i: (-remainders[i], i))
    for i in order[: total_ns - sum(shares)]:
        shares[i] += 1
    return shares
