"""A scheduler pick runs as steps of similar length: cut where padding costs more than a step."""

from __future__ import annotations

import asyncio
import random

from constellation.engine.encoder.batcher import EncoderRequest, Row, split_by_length
from constellation.engine.spec import BaseSpec


def _rows(lengths: list[int]) -> list[Row]:
    loop = asyncio.new_event_loop()
    try:
        base = BaseSpec("b", "embedding", resolve=lambda: None)
        request = EncoderRequest(base, None, "embed", [[0]] * len(lengths), loop, loop.create_future())
    finally:
        loop.close()
    return [Row(request, i, n, 0) for i, n in enumerate(lengths)]


def _lengths(steps: list[list[Row]]) -> list[list[int]]:
    return [[r.length for r in s] for s in steps]


def _cost(steps: list[list[Row]], step_cost: int) -> int:
    return sum(len(s) * max(r.length for r in s) + step_cost for s in steps)


def test_a_few_long_rows_get_their_own_step() -> None:
    steps = split_by_length(_rows([40, *[10] * 20, 40]), 48)
    assert _lengths(steps) == [[10] * 20, [40, 40]]  # 376 token-equivalents instead of 928


def test_close_lengths_share_one_step() -> None:
    assert _lengths(split_by_length(_rows([12, 10, 11]), 48)) == [[10, 11, 12]]


def test_no_step_cost_gives_one_step_per_length() -> None:
    assert _lengths(split_by_length(_rows([16, 32, 16, 48, 32]), 0)) == [[16, 16], [32, 32], [48]]


def test_every_row_runs_once_and_no_cut_does_better() -> None:
    rng = random.Random(0)
    for _ in range(30):
        rows = _rows([rng.randint(5, 60) for _ in range(rng.randint(1, 40))])
        steps = split_by_length(rows, 48)
        assert sorted(id(r) for s in steps for r in s) == sorted(id(r) for r in rows)
        ordered = sorted(rows, key=lambda r: r.length)
        # Every split of the sorted rows into at most two steps costs at least as much.
        for cut in range(1, len(ordered)):
            two = [ordered[:cut], ordered[cut:]]
            assert _cost(steps, 48) <= _cost(two, 48)
        assert _cost(steps, 48) <= _cost([ordered], 48)
