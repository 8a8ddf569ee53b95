"""Micro-batching across concurrent encoder requests: one worker thread, many callers.

Rows (one per input text) queue up per base, and within a base per tenant; each pick takes the
next base in turn and its rows in deficit round-robin order over tenants (engine/fairness.py),
within max batch tokens and the adapter slots, after at most max wait. A pick then runs as one
or more steps (forwards) of rows of similar length, so short rows are not padded to the longest
one's length when a second forward costs less than that padding.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from itertools import groupby

import torch

from constellation.config import EngineLimits
from constellation.engine.attribution import split_ns
from constellation.engine.encoder.interface import Op
from constellation.engine.encoder.memory import MemoryTrimmer
from constellation.engine.encoder.model import EncoderModel
from constellation.engine.fairness import FairQueue
from constellation.engine.lora.adapters import ClassifierHead
from constellation.engine.model_cache import ModelCache
from constellation.engine.spec import AdapterSpec, BaseSpec
from constellation.errors import Overloaded

# What one more forward costs, in padded tokens' worth of compute: its fixed cost divided by
# the cost of a token (docs/decisions.md has the figures behind it).
STEP_COST_TOKENS = 48
# A busy tenant yields its turn after this share of a batch's tokens, so up to this many
# tenants' rows share each batch and a newcomer's row runs in the next batch at the latest.
FLOWS_PER_BATCH = 4
# The fewest tokens a time-bounded step may take: below it a step's fixed cost (and the GIL it
# shares with tokenising threads) dominates, the measured cost per token rises with it, and
# the budget would shrink to a row per step. Also what a request arriving mid-step may wait
# for: the floor trades the busy tenant's throughput for the quiet one's latency (the
# fairness benchmark prints both; docs/decisions.md has the figures).
MIN_STEP_TOKENS = 128


@dataclass(eq=False, slots=True)
class EncoderRequest:
    """One request: its token ids, where its rows' results land, where to deliver the result."""

    base: BaseSpec
    adapter: AdapterSpec | None
    op: Op
    ids: list[list[int]]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[tuple[torch.Tensor, int]]
    pooled: list[torch.Tensor | None] = field(default_factory=list)
    left: int = 0
    compute_ns: int = 0
    head: ClassifierHead | None = None
    tenant: str = ""  # fairness key: rows are taken in turn across keys

    def __post_init__(self) -> None:
        self.pooled = [None] * len(self.ids)
        self.left = len(self.ids)


@dataclass(eq=False, slots=True)
class Row:
    request: EncoderRequest
    index: int
    length: int  # padded length it runs at
    queued_ns: int


def step_budget(limits: EngineLimits, ns_per_token: float | None) -> int:
    """Tokens a pick may take: `max_batch_tokens`, or fewer where a step at the measured cost per
    token would take longer than `max_step_ms`. With a step's fixed cost F and c per token the
    measured cost is F/n + c, so the budget settles where a step takes `max_step_ms`, but never
    below `MIN_STEP_TOKENS` (where F alone would take most of it)."""
    if not limits.max_step_ms or not ns_per_token:
        return limits.max_batch_tokens
    budget = max(MIN_STEP_TOKENS, int(limits.max_step_ms * 1e6 / ns_per_token))
    return min(limits.max_batch_tokens, budget)


class Pending:
    """Queued rows: a fair queue per base (flows by tenant), the bases taken in turn."""

    def __init__(self, limits: EngineLimits) -> None:
        self._limits = limits
        self._bases: OrderedDict[str, FairQueue[Row]] = OrderedDict()
        self.rows = 0
        self.tokens = 0
        self._by_tenant: Counter[str] = Counter()  # queued rows per tenant
        self.first_ns = 0  # arrival of the first row since the queue was last empty
        self.last_ns = 0  # arrival of the latest row

    def push(self, rows: list[Row]) -> None:
        if not rows:
            return
        if not self.rows:
            self.first_ns = rows[0].queued_ns
        self.last_ns = rows[-1].queued_ns
        base = rows[0].request.base.name
        queue = self._bases.get(base)
        if queue is None:
            queue = self._bases[base] = FairQueue(lambda r: r.request.tenant, lambda r: r.length)
        for r in rows:
            queue.push(r)
        self.rows += len(rows)
        self.tokens += sum(r.length for r in rows)
        self._by_tenant[rows[0].request.tenant] += len(rows)

    def admits(self, tenant: str, n: int, cap: int) -> bool:
        """Whether `n` more rows of `tenant` may queue: within `cap` rows in all, or past it while
        the tenant holds less than its even share of `cap`, so one tenant filling the queue
        gets the 503s and the others are still queued (by at most their shares past `cap`)."""
        if self.rows + n <= cap:
            return True
        share = cap // (len(self._by_tenant) + (tenant not in self._by_tenant))
        return self._by_tenant[tenant] + n <= share

    def pick(self, budget: int) -> list[Row]:
        """The next base's rows in turn across tenants, within `budget` tokens and the slots."""
        name, queue = next(iter(self._bases.items()))
        queue.quantum = max(1, budget // FLOWS_PER_BATCH)
        rows: list[Row] = []
        adapters: set[str] = set()
        longest = 0
        while queue and self._fits(queue.peek(), len(rows), longest, adapters, budget):
            r = queue.pop()
            rows.append(r)
            longest = max(longest, r.length)
            if r.request.adapter is not None:
                adapters.add(r.request.adapter.name)
        self._bases.move_to_end(name)  # the next pick serves the next base
        if not queue:
            del self._bases[name]
        self._taken(rows)
        return rows

    def remove(self, requests: set[EncoderRequest]) -> None:
        for name, queue in list(self._bases.items()):
            self._taken(queue.remove(lambda r: r.request in requests))
            if not queue:
                del self._bases[name]

    def _fits(self, r: Row, n_rows: int, longest: int, adapters: set[str], budget: int) -> bool:
        """Whether `r` joins a pick of `n_rows` rows: a slot for its adapter, and the pick padded
        to its longest row within `budget` tokens (a first row always joins)."""
        name = r.request.adapter.name if r.request.adapter else None
        if name is not None and name not in adapters and len(adapters) >= self._limits.adapter_slots:
            return False
        return not n_rows or (n_rows + 1) * max(longest, r.length) <= budget

    def _taken(self, rows: list[Row]) -> None:
        self.rows -= len(rows)
        self.tokens -= sum(r.length for r in rows)
        for r in rows:
            self._by_tenant[r.request.tenant] -= 1
        self._by_tenant = +self._by_tenant  # forget tenants with nothing queued


class MicroBatcher:
    """`submit(request)` from any thread; the worker runs `schedule() -> run() -> deliver`."""

    def __init__(self, limits: EngineLimits, model_cache: ModelCache[EncoderModel]) -> None:
        self._limits = limits
        self._model_cache = model_cache
        self._cond = threading.Condition()
        self._pending = Pending(limits)
        self._trimmer = MemoryTrimmer(limits.trim_after_tokens)
        self._ns_per_token: float | None = None  # recent steps' busy time per (padded) token
        self._closed = False
        self.stats: dict[str, float] = dict.fromkeys(
            ("busy_ns", "steps", "rows", "tokens", "padded_tokens", "requests", "queue_wait_ns"), 0.0
        )
        self._worker = threading.Thread(target=self._loop, name="encoder-batcher", daemon=True)
        self._worker.start()

    def submit(self, request: EncoderRequest, lengths: list[int]) -> None:
        now = time.monotonic_ns()
        with self._cond:
            if self._closed:
                raise Overloaded("the encoder engine is shutting down; retry on another replica")
            if not self._pending.admits(request.tenant, len(request.ids), self._limits.max_queue * 64):
                raise Overloaded(f"{self._pending.rows} inputs are queued; retry shortly")
            self._pending.push([Row(request, i, n, now) for i, n in enumerate(lengths)])
            self._cond.notify()

    @property
    def trims(self) -> int:
        return self._trimmer.trims

    def queue_depth(self) -> int:
        with self._cond:
            return self._pending.rows

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._worker.join(timeout=10)

    def _loop(self) -> None:
        while True:
            rows = self._schedule()
            if rows is None:
                return
            try:
                self._run(rows)
            except BaseException as exc:  # fail the pick's requests, keep serving the rest
                self._fail({r.request for r in rows}, exc)
            self._trimmer.processed(sum(r.length for r in rows), idle=not self.queue_depth())

    def _schedule(self) -> list[Row] | None:
        """Wait for work, up to max wait for a fuller batch, then pick the step's rows."""
        with self._cond:
            while not self._pending.rows and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            deadline = self._pending.first_ns + int(self._limits.max_batch_wait_ms * 1e6)
            quiet_ns = int(self._limits.batch_quiet_ms * 1e6)
            budget = step_budget(self._limits, self._ns_per_token)
            while self._pending.tokens < budget:
                # Until full, or max wait after the first row, or once requests stop arriving.
                until = min(deadline, self._pending.last_ns + quiet_ns)
                wait = (until - time.monotonic_ns()) / 1e9
                if wait <= 0 or self._closed:
                    break
                self._cond.wait(wait)
            return self._pending.pick(budget)

    def _run(self, rows: list[Row]) -> None:
        """Run a pick: in one step when the model can pack tokens (little padding to save), else
        in steps of similar length (deterministic mode: one padded length per step, so a row's
        bits never vary)."""
        with self._model_cache.use(rows[0].request.base) as model:
            if model.packed:
                self._step(model, rows)
                return
            for step in split_by_length(rows, 0 if self._limits.deterministic else STEP_COST_TOKENS):
                self._step(model, step)

    def _step(self, model: EncoderModel, rows: list[Row]) -> None:
        specs = [r.request.adapter for r in rows]
        slots = model.adapters.acquire(specs)
        try:
            for r in rows:
                if r.request.adapter is not None and r.request.op == "classify":
                    r.request.head = model.adapters.head(r.request.adapter.name)
            ids, slot_ids = [r.request.ids[r.index] for r in rows], torch.tensor(slots)
            packed = model.packs(ids, slot_ids)
            now = time.monotonic_ns()
            self.stats["queue_wait_ns"] += sum(now - r.queued_ns for r in rows)  # per input row
            start = time.perf_counter_ns()
            pooled = model.forward(ids, slot_ids)
            done = self._collect(rows, pooled)
            results = {request: _finish(model, request) for request in done}
            busy = time.perf_counter_ns() - start
        finally:
            model.adapters.release(specs)
        self._attribute(rows, busy)
        self._account(rows, busy, len(results), packed)
        for request, value in results.items():
            _deliver(request, (value, request.compute_ns), None)

    def _collect(self, rows: list[Row], pooled: torch.Tensor) -> list[EncoderRequest]:
        done: list[EncoderRequest] = []
        for r, p in zip(rows, pooled, strict=True):
            r.request.pooled[r.index] = p
            r.request.left -= 1
            if r.request.left == 0:
                done.append(r.request)
        return done

    def _attribute(self, rows: list[Row], busy: int) -> None:
        tokens: dict[EncoderRequest, int] = {}
        for r in rows:
            tokens[r.request] = tokens.get(r.request, 0) + len(r.request.ids[r.index])
        for request, ns in zip(tokens, split_ns(busy, list(tokens.values())), strict=True):
            request.compute_ns += ns

    def _account(self, rows: list[Row], busy: int, finished: int, packed: bool) -> None:
        s = self.stats
        tokens = sum(len(r.request.ids[r.index]) for r in rows)
        s["busy_ns"] += busy
        s["steps"] += 1
        s["rows"] += len(rows)
        s["tokens"] += tokens
        padded = tokens if packed else len(rows) * max(r.length for r in rows)
        s["padded_tokens"] += padded
        cost = busy / max(1, padded)
        old = self._ns_per_token
        self._ns_per_token = cost if old is None else 0.8 * old + 0.2 * cost
        s["requests"] += finished

    def _fail(self, requests: set[EncoderRequest], exc: BaseException) -> None:
        with self._cond:
            self._pending.remove(requests)
        for request in requests:
            _deliver(request, None, exc)


def split_by_length(rows: list[Row], step_cost: int) -> list[list[Row]]:
    """`rows` as steps of similar length: sorted by length, cut where a further step costs less
    (`step_cost` tokens) than the padding it saves. Exact, by dynamic programming over the
    distinct lengths; `step_cost=0` gives one step per distinct length."""
    runs = [list(g) for _, g in groupby(sorted(rows, key=lambda r: r.length), key=lambda r: r.length)]
    counts = [0]
    for run in runs:
        counts.append(counts[-1] + len(run))
    best = [0] + [-1] * len(runs)  # best[j]: least cost of the first j runs (padded tokens + steps)
    cut = [0] * (len(runs) + 1)  # where the last step of best[j] starts
    for j in range(1, len(runs) + 1):
        length = runs[j - 1][0].length  # the step's longest row
        for i in range(j):
            cost = best[i] + (counts[j] - counts[i]) * length + step_cost
            if best[j] < 0 or cost < best[j]:
                best[j], cut[j] = cost, i
    steps: list[list[Row]] = []
    j = len(runs)
    while j > 0:
        steps.append([r for run in runs[cut[j] : j] for r in run])
        j = cut[j]
    return steps[::-1]


def _finish(model: EncoderModel, request: EncoderRequest) -> torch.Tensor:
    """A finished request's output: normalised embeddings [n, d] or label probabilities [n, k]."""
    pooled = torch.stack([p for p in request.pooled if p is not None])  # [n, d]
    if request.op == "classify":
        assert request.head is not None
        return model.classify(pooled, request.head)
    return model.embed(pooled)


def _deliver(
    request: EncoderRequest, value: tuple[torch.Tensor, int] | None, exc: BaseException | None
) -> None:
    """Settle the caller's future on its own event loop (unless it was cancelled)."""

    def _settle() -> None:
        if request.future.done():
            return
        if exc is not None:
            request.future.set_exception(exc)
        else:
            request.future.set_result(value)  # type: ignore[arg-type]

    with contextlib.suppress(RuntimeError):  # the caller's loop is closed: nobody is waiting
        request.loop.call_soon_threadsafe(_settle)
