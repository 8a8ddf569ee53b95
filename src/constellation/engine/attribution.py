"""Charging one engine step's busy time to the requests in it, by their share of its tokens.

The shares are rounded by largest remainder (constellation.rounding), so they sum exactly to the step's time.
"""

from __future__ import annotations

from collections.abc import Sequence

from constellation.rounding import split


def split_ns(total_ns: int, weights: Sequence[int]) -> list[int]:
    """`total_ns` split in proportion to `weights` (token counts); sums exactly to `total_ns`."""
    return split(total_ns, weights)
