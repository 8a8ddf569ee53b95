"""Which sequences run in the next step, and how many of their tokens: continuous batching
over a paged KV cache, with preemption (recompute) when the cache runs out.

Running sequences go first, then waiting ones are admitted in turn across tenants while the
step's token budget, the KV blocks and the adapter slots allow.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Protocol

from constellation.config import EngineLimits
from constellation.engine.decoder.kvcache import KVCache
from constellation.engine.decoder.sequence import Seq, Work
from constellation.engine.fairness import FairQueue
from constellation.engine.lora.layer import NO_ADAPTER
from constellation.engine.spec import AdapterSpec
from constellation.errors import InvalidInput, Overloaded


class AdapterSlots(Protocol):
    """Pins adapters into the base's LoRA slots for as long as a sequence runs."""

    def acquire(self, specs: Sequence[AdapterSpec]) -> list[int]: ...
    def release(self, specs: Sequence[AdapterSpec]) -> None: ...


class Scheduler:
    """One base's waiting and running sequences; `schedule()` picks a step's `Work`."""

    def __init__(self, kv: KVCache, limits: EngineLimits, adapters: AdapterSlots | None = None) -> None:
        self.kv, self.limits, self.adapters = kv, limits, adapters
        # Round-robin across tenants: one tenant's backlog does not delay another's admission.
        self.waiting: FairQueue[Seq] = FairQueue(lambda s: s.prep.tenant)
        self.running: list[Seq] = []
        self.on_dequeue: Callable[[Seq], None] = lambda s: None
        self.on_finish: Callable[[Seq], None] = lambda s: None

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> list[Work]:
        """Pick this step's tokens: running sequences first, then admit waiting ones."""
        self._drop_cancelled()
        budget = self.limits.max_batch_tokens
        work: list[Work] = []
        for seq in list(self.running):
            if seq not in self.running or budget == 0:
                continue
            n = min(seq.n_tokens - seq.n_cached, budget)
            if not self._grow_or_preempt(seq, seq.n_cached + n, work):
                continue
            work.append(Work(seq, seq.n_cached, n))
            budget -= n
        while budget > 0 and self.waiting and len(self.running) < self.limits.max_decode_seqs:
            seq = self.waiting.peek()
            if not self._admit(seq):
                break
            n = min(seq.n_tokens, budget)
            work.append(Work(seq, 0, n))
            budget -= n
        # Each adapter's tokens together, in slot order: the LoRA layers then need no copies.
        work.sort(key=lambda w: w.seq.slot)
        return work

    def _grow_or_preempt(self, seq: Seq, n_tokens: int, work: list[Work]) -> bool:
        """Make room for `seq` by preempting the latest-admitted unscheduled sequence."""
        scheduled = {w.seq for w in work}
        while not self.kv.grow(seq.table, n_tokens):
            victim = next((s for s in reversed(self.running) if s not in scheduled), None)
            if victim is None:
                return False
            self._preempt(victim)
            if victim is seq:
                return False
        return True

    def _preempt(self, seq: Seq) -> None:
        """Recompute later: free its blocks and requeue it first; its generator keeps its state."""
        self.running.remove(seq)
        self.kv.release(seq.table)
        seq.n_cached = 0
        self._unpin(seq)
        self.waiting.push_front(seq)

    def _admit(self, seq: Seq) -> bool:
        if self.kv.blocks_for(seq.n_tokens + 1) > self.kv.free_blocks:
            return False
        if not self._pin(seq):
            return False
        self.kv.grow(seq.table, seq.n_tokens)
        self.waiting.pop()
        if seq.queue_ns is None:
            seq.queue_ns = time.monotonic_ns() - seq.submitted_ns
        self.running.append(seq)
        self.on_dequeue(seq)
        return True

    def _pin(self, seq: Seq) -> bool:
        adapter = seq.prep.adapter
        if adapter is None or seq.pinned:
            return True
        if self.adapters is None:
            raise InvalidInput(f"adapter {adapter.name!r} cannot be served: this base has no adapter slots")
        try:
            seq.slot = self.adapters.acquire([adapter])[0]
        except Overloaded:
            return False  # every slot is pinned by running sequences: wait for one to finish
        seq.pinned = True
        return True

    def _unpin(self, seq: Seq) -> None:
        if seq.pinned and seq.prep.adapter is not None and self.adapters is not None:
            self.adapters.release([seq.prep.adapter])
        seq.pinned, seq.slot = False, NO_ADAPTER

    def _drop_cancelled(self) -> None:
        for seq in [s for s in self.running if s.cancelled]:
            self.finish(seq)
        for seq in self.waiting.remove(lambda s: s.cancelled):
            self.finish(seq)
            self.on_dequeue(seq)

    def finish(self, seq: Seq) -> None:
        """Take `seq` out of the batch: its KV blocks and adapter slot go back."""
        if seq in self.running:
            self.running.remove(seq)
        self.kv.release(seq.table)
        self._unpin(seq)
        if not seq.finished:
            seq.finished = True
            self.on_finish(seq)

    def abort_all(self, err: BaseException) -> None:
        for seq in [*self.running, *self.waiting]:
            self.finish(seq)
            self.on_dequeue(seq)
            seq.emit(err)
        self.waiting.clear()
