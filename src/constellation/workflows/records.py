"""Run records (a run and the usage event of each executed step) written by one thread that
commits every record queued meanwhile in one transaction, as the ledger's writer does: a busy
server pays one commit per batch of runs, not one per run."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from dataclasses import dataclass

from constellation.economy.writer import take_batch
from constellation.registry.db import Database
from constellation.registry.workflow_tables import WorkflowRun, WorkflowRunStep

log = logging.getLogger("constellation.workflows")


@dataclass(slots=True)
class Record:
    run: WorkflowRun
    steps: list[WorkflowRunStep]
    done: asyncio.Future[None]


class RunRecorder:
    """`write` returns once the run's record is committed; `close` writes what is queued."""

    def __init__(self, db: Database, *, max_batch: int = 500) -> None:
        self._db = db
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[Record | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="workflow-runs", daemon=True)
        self._thread.start()

    async def write(self, run: WorkflowRun, steps: list[WorkflowRunStep]) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put(Record(run, steps, done))
        await done

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def _loop(self) -> None:
        while (first := self._queue.get()) is not None:
            batch, stop = take_batch(self._queue, first, self._max_batch)
            self._commit(batch)
            if stop:
                return

    def _commit(self, batch: list[Record]) -> None:
        try:
            with self._db.session() as s:
                s.add_all([r.run for r in batch])
                s.flush()  # runs before the steps that point at them
                s.add_all([st for r in batch for st in r.steps])
            error: BaseException | None = None
        except Exception as e:  # the bill is committed already; only the run's record is lost
            log.error("could not record %d workflow run(s): %s", len(batch), e)
            error = e
        for r in batch:
            loop = r.done.get_loop()
            with contextlib.suppress(RuntimeError):  # a closed loop: nothing waits any more
                loop.call_soon_threadsafe(_settle, r.done, error)


def _settle(done: asyncio.Future[None], error: BaseException | None) -> None:
    if done.done():
        return
    if error is not None:
        done.set_exception(error)
    else:
        done.set_result(None)
