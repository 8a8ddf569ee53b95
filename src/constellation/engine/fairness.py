"""Deficit round-robin over fairness keys (the API passes the tenant id): one FIFO flow per key.

Why: served oldest-first, one tenant's backlog delays every other tenant's request by the whole
backlog. Served in turn, another key's next item waits for at most one quantum of each busy key.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class FairQueue(Generic[T]):
    """Items in per-key FIFO flows, taken by deficit round-robin (Shreedhar & Varghese, 1995).

    Each visit to a flow grants it `quantum` units of credit (its deficit); the flow gives up
    its head items while their `cost` fits the deficit, then the next flow's turn comes. A
    flow that empties loses its credit; a new flow joins at the end of the round. With cost
    and quantum 1 this is plain round-robin. `push_front` items (preempted work) go first.
    `peek()` then `pop()` take the same item: nothing else changes the queue between them.
    """

    def __init__(
        self, key: Callable[[T], Hashable], cost: Callable[[T], int] = lambda _: 1, quantum: int = 1
    ) -> None:
        if quantum < 1:
            raise ValueError(f"quantum must be at least 1, got {quantum}")
        self._key, self._cost = key, cost
        self.quantum = quantum  # may change between picks; credit already granted stays
        self._flows: dict[Hashable, deque[T]] = {}  # non-empty flows only
        self._round: deque[Hashable] = deque()  # keys of the flows, [0] is being served
        self._deficit: dict[Hashable, int] = {}
        self._granted = False  # the flow at `_round[0]` has had this visit's quantum
        self._front: deque[T] = deque()
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def __bool__(self) -> bool:
        return self._len > 0

    def __iter__(self) -> Iterator[T]:
        """Every item: front items, then each flow's, in round order (not in pick order)."""
        yield from self._front
        for k in self._round:
            yield from self._flows[k]

    def push(self, item: T) -> None:
        k = self._key(item)
        flow = self._flows.get(k)
        if flow is None:
            flow = self._flows[k] = deque()
            self._round.append(k)
            self._deficit[k] = 0
        flow.append(item)
        self._len += 1

    def push_front(self, item: T) -> None:
        """Ahead of every flow: for work that had its turn already (a preempted sequence)."""
        self._front.appendleft(item)
        self._len += 1

    def peek(self) -> T:
        """The next item in deficit round-robin order; IndexError when empty."""
        if self._front:
            return self._front[0]
        if not self._round:
            raise IndexError("peek from an empty FairQueue")
        while True:
            k = self._round[0]
            head = self._flows[k][0]
            if self._deficit[k] >= self._cost(head):
                return head
            if not self._granted:
                self._deficit[k] += self.quantum
                self._granted = True
                continue
            self._round.rotate(-1)  # this flow's turn is over; it keeps its remaining credit
            self._granted = False

    def pop(self) -> T:
        """Take the item `peek()` names."""
        item = self.peek()
        self._len -= 1
        if self._front:
            return self._front.popleft()
        k = self._round[0]
        self._flows[k].popleft()
        self._deficit[k] -= self._cost(item)
        if not self._flows[k]:
            self._drop_flow(k)
        return item

    def remove(self, pred: Callable[[T], bool]) -> list[T]:
        """Take every item for which `pred` holds, wherever it is queued."""
        gone = [x for x in self if pred(x)]
        if not gone:
            return gone
        self._front = deque(x for x in self._front if not pred(x))
        for k in list(self._round):
            self._flows[k] = deque(x for x in self._flows[k] if not pred(x))
            if not self._flows[k]:
                self._drop_flow(k)
        self._len -= len(gone)
        return gone

    def clear(self) -> None:
        self.remove(lambda _: True)

    def _drop_flow(self, k: Hashable) -> None:
        if self._round[0] == k:
            self._granted = False  # the next flow starts a fresh visit
        self._round.remove(k)
        del self._flows[k], self._deficit[k]
