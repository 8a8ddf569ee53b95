"""Fair queues across tenants: deficit round-robin itself, the encoder batcher's picks. One
tenant's backlog is queued first; another tenant's request must be taken in the next batch, not
after the backlog (the decoder's admissions: decoder/test_decoder_fairness.py)."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest

from constellation.config import EngineLimits
from constellation.engine.encoder.batcher import (
    FLOWS_PER_BATCH,
    MIN_STEP_TOKENS,
    EncoderRequest,
    Pending,
    Row,
    step_budget,
)
from constellation.engine.fairness import FairQueue
from constellation.engine.spec import AdapterSpec, BaseSpec

# -- FairQueue -------------------------------------------------------------------------------


def _queue(items: list[tuple[str, int]], quantum: int = 1) -> FairQueue[tuple[str, int]]:
    q: FairQueue[tuple[str, int]] = FairQueue(lambda x: x[0], lambda x: x[1], quantum)
    for x in items:
        q.push(x)
    return q


def _drain(q: FairQueue[tuple[str, int]]) -> list[tuple[str, int]]:
    out = []
    while q:
        assert q.peek() is q.peek()  # peeking twice changes nothing
        want = q.peek()
        assert q.pop() is want
        out.append(want)
    return out


def test_round_robin_with_unit_costs() -> None:
    q = _queue([("a", 1)] * 5 + [("b", 1)] * 2 + [("c", 1)])
    assert [k for k, _ in _drain(q)] == ["a", "b", "c", "a", "b", "a", "a", "a"]


def test_deficit_round_robin_shares_cost_not_items() -> None:
    """a sends items of cost 4, b of cost 1, quantum 4: per round a gets one item, b four."""
    q = _queue([("a", 4)] * 4 + [("b", 1)] * 8, quantum=4)
    order = "".join(k for k, _ in _drain(q))
    assert order == "abbbbabbbbaa"


def test_a_newcomer_is_served_after_one_quantum_of_a_backlog() -> None:
    q = _queue([("a", 1)] * 1000, quantum=8)
    for _ in range(3):
        q.pop()  # a is being served
    q.push(("b", 1))
    taken = [q.pop()[0] for _ in range(8)]
    assert "b" in taken  # within a's remaining quantum, not after its 997 items


def test_costs_above_the_quantum_accumulate_credit() -> None:
    q = _queue([("a", 10), ("b", 1), ("b", 1)], quantum=3)
    assert "".join(k for k, _ in _drain(q)) == "bba"  # a needs four visits' credit


def test_front_items_remove_and_len() -> None:
    q = _queue([("a", 1), ("a", 1), ("b", 1)])
    q.push_front(("z", 1))
    assert len(q) == 4 and q.peek() == ("z", 1)
    assert q.remove(lambda x: x[0] == "a") == [("a", 1), ("a", 1)]
    assert len(q) == 2 and list(q) == [("z", 1), ("b", 1)]
    assert _drain(q) == [("z", 1), ("b", 1)]
    with pytest.raises(IndexError):
        q.peek()
    q.push(("c", 1))
    q.clear()
    assert not q and len(q) == 0


def test_quantum_must_be_positive() -> None:
    with pytest.raises(ValueError, match="quantum"):
        FairQueue(lambda x: x, quantum=0)


# -- the encoder batcher's picks ---------------------------------------------------------------

BASE = BaseSpec("b", "embedding", resolve=lambda: Path("/nowhere"))
OTHER_BASE = BaseSpec("other", "embedding", resolve=lambda: Path("/nowhere"))


def _job(tenant: str, n: int, base: BaseSpec = BASE, adapter: AdapterSpec | None = None) -> EncoderRequest:
    loop = asyncio.new_event_loop()
    try:
        return EncoderRequest(base, adapter, "embed", [[0]] * n, loop, loop.create_future(), tenant=tenant)
    finally:
        loop.close()


def _push(pending: Pending, request: EncoderRequest, length: int, at: int = 0) -> None:
    pending.push([Row(request, i, length, at) for i in range(len(request.ids))])


def test_a_quiet_tenants_row_runs_in_the_next_batch_despite_a_backlog() -> None:
    """24 requests x 2048 items from tenant A queued first; tenant B's one item comes after."""
    limits = EngineLimits(max_batch_tokens=8192)
    pending = Pending(limits)
    for _ in range(24):
        _push(pending, _job("A", 2048), 12)
    quiet = _job("B", 1)
    _push(pending, quiet, 12, at=1)
    first = pending.pick(8192)
    assert any(r.request is quiet for r in first)
    # The batch is still full: A's rows fill the rest of it (batching efficiency is kept).
    assert len(first) * 12 > 8192 - 12 * 2 and Counter(r.request.tenant for r in first)["A"] > 0
    assert pending.rows == 24 * 2048 + 1 - len(first)


def test_a_tenant_arriving_mid_backlog_runs_within_the_next_two_picks() -> None:
    limits = EngineLimits(max_batch_tokens=4096)
    pending = Pending(limits)
    for _ in range(8):
        _push(pending, _job("A", 2048), 16)
    pending.pick(limits.max_batch_tokens)  # A is being served, with credit left over
    quiet = _job("B", 3)
    _push(pending, quiet, 16)
    picked = [r.request for r in pending.pick(limits.max_batch_tokens)] + [
        r.request for r in pending.pick(limits.max_batch_tokens)
    ]
    assert picked.count(quiet) == 3


def test_busy_tenants_share_each_batch_in_equal_tokens() -> None:
    limits = EngineLimits(max_batch_tokens=4096)
    pending = Pending(limits)
    for tenant in "ABCD":
        for _ in range(4):
            _push(pending, _job(tenant, 512), 8)
    for _ in range(5):
        by_tenant = Counter(r.request.tenant for r in pending.pick(limits.max_batch_tokens))
        assert set(by_tenant) == set("ABCD")
        assert max(by_tenant.values()) - min(by_tenant.values()) <= 4096 // FLOWS_PER_BATCH // 8


def test_bases_are_taken_in_turn() -> None:
    pending = Pending(EngineLimits(max_batch_tokens=256))
    _push(pending, _job("A", 1000), 8)
    other = _job("B", 1, base=OTHER_BASE)
    _push(pending, other, 8)
    assert {r.request.base.name for r in pending.pick(256)} == {"b"}
    assert [r.request for r in pending.pick(256)] == [other]  # not after A's 1000 rows


def test_removed_jobs_leave_the_counts() -> None:
    pending = Pending(EngineLimits())
    a, b = _job("A", 5), _job("B", 2)
    _push(pending, a, 10)
    _push(pending, b, 10)
    pending.remove({a})
    assert (pending.rows, pending.tokens) == (2, 20)
    assert [r.request for r in pending.pick(8192)] == [b, b]
    assert (pending.rows, pending.tokens) == (0, 0)


def test_a_full_queue_refuses_the_tenant_that_filled_it() -> None:
    pending = Pending(EngineLimits())
    backlog = _job("A", 1000)
    _push(pending, backlog, 8)
    assert pending.admits("A", 24, cap=1024) and not pending.admits("A", 25, cap=1024)
    assert pending.admits("B", 512, cap=1024)  # its even share, though the queue is full
    assert not pending.admits("B", 513, cap=1024)
    pending.remove({backlog})
    assert pending.rows == 0 and pending.admits("A", 1024, cap=1024)


def test_steps_are_bounded_in_time_at_the_measured_cost_per_token() -> None:
    limits = EngineLimits(max_batch_tokens=8192, max_step_ms=40)
    assert step_budget(limits, None) == 8192  # nothing measured yet
    assert step_budget(limits, 40_000.0) == 1000  # 0.04 ms a token: 1000 tokens in 40 ms
    assert step_budget(limits, 1_000.0) == 8192  # a fast device: the batch bound applies
    assert step_budget(limits, 1e12) == MIN_STEP_TOKENS  # a floor, not a row per step
    assert step_budget(EngineLimits(max_step_ms=0), 1e9) == 8192  # off
    pending = Pending(limits)
    _push(pending, _job("A", 100), 10)
    _push(pending, _job("B", 100), 10)
    rows = pending.pick(400)
    assert len(rows) == 40 and Counter(r.request.tenant for r in rows) == {"A": 20, "B": 20}
