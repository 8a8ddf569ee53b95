"""The encoder engine in child processes of its own, behind the same async interface.

Why: in one process the engine's worker and the server's event loop share one GIL. A forward
pass takes and releases the GIL a few hundred times (once per tensor op), and while the event
loop parses and answers requests each of those waits for it; on two cores the engine then
idles, waiting, for a large part of every step. In its own process the engine has its own GIL,
and the server's process keeps only HTTP, auth, metering and the pipe.

Workers (`EngineLimits.encoder_workers`): each child is a whole `EncoderEngine` with its own
batcher and adapter cache, running its forwards on `torch threads / workers` threads. On a few
cores, single-threaded workers beat one worker whose forwards span every core: a forward split
across threads waits at a barrier after every op for its slowest thread, and the slowest is the
one the server's own process just took the core from. Each command goes to the worker with the
fewest inputs outstanding.

A worker that dies (killed, out of memory) fails the commands it had with `EngineUnavailable` (503,
retry) and is respawned after a backoff (`respawn_backoff_s`, doubled while respawned workers
die before answering); meanwhile the others serve, and `unready()` says a worker is down.

Protocol (one `multiprocessing` pipe each way per worker, pickled; each side writes once per
turn of its event loop, not once per request: under load that is one write for dozens of
requests):
  parent -> child  a list of `(command_id, op, args)`; op is "embed" or "classify", args are
                   `(base, adapter, texts, truncate, tenant)`; `None` closes.
  child -> parent  a list of `(command_id, ok, payload)`, then the child's engine stats.
Errors cross as `(class name, message, param, code)` and are raised again in the parent as the
same `ConstellationError` class, so the HTTP mapping does not change.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import multiprocessing as mp
import sys
import threading
from collections import Counter
from multiprocessing.connection import Connection
from typing import Any

from constellation import errors
from constellation.config import EngineLimits
from constellation.engine.bounds import check_items
from constellation.engine.encoder.interface import ClassifyResult, EncodeResult
from constellation.engine.spec import AdapterSpec, BaseSpec
from constellation.errors import ConstellationError, EngineUnavailable, Overloaded

Command = tuple[int, str, tuple[Any, ...]]
Reply = tuple[int, bool, Any]
_LOST = "an encoder worker process stopped under this request and is being restarted; retry it"
_DOWN = "every encoder worker process is restarting (see the server log for the cause); retry shortly"


# Past a few workers, more threads per worker serve better than more copies of every model.
MAX_AUTO_WORKERS = 4


def worker_count(limits: EngineLimits, cores: int) -> int:
    """How many worker processes: `encoder_workers`, or when that is 0, one per core up to
    `MAX_AUTO_WORKERS` on a CPU, one on a GPU (whose kernels the workers would only queue on)."""
    if limits.encoder_workers:
        return limits.encoder_workers
    return min(cores, MAX_AUTO_WORKERS) if limits.device == "cpu" else 1


def worker_threads(limits: EngineLimits, cores: int) -> int:
    """Intra-op threads for each worker: the cores shared out among the workers, at least one."""
    return max(1, cores // worker_count(limits, cores))


def respawn_delay(limits: EngineLimits, deaths: int) -> float:
    """Seconds before respawning a worker after its `deaths`-th death in a row (1, 2, ...): the
    backoff doubles while respawned workers die before answering, up to `respawn_max_s`."""
    return float(min(limits.respawn_max_s, limits.respawn_backoff_s * 2 ** max(0, deaths - 1)))


class _Worker:
    """One child process and the parent's side of its pipe."""

    def __init__(self, index: int, limits: EngineLimits, threads: int) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        switch_ms = sys.getswitchinterval() * 1000  # the serving process's, set by its lifespan
        self.proc = ctx.Process(
            target=_child_main,
            args=(child, limits.model_dump(), switch_ms, threads),
            name=f"constellation-encoder-{index}",
            daemon=True,
        )
        self.proc.start()
        child.close()
        self.index = index
        self.answered = False  # has replied at least once (resets the respawn backoff)
        self.outbox: list[Command] = []  # commands of this loop turn
        self.inputs = 0  # texts sent and not yet answered
        self.stats: dict[str, float] = {}
        self.alive = True
        self.send_lock = threading.Lock()  # one writer on the pipe at a time
        self.reader: threading.Thread | None = None


class RemoteEncoderEngine:
    """`EncoderEngine`'s interface (`embed`, `classify`, `stats`, `close`), run in `worker_count`
    child processes started with `spawn` (a fork of a process with torch threads is unsafe)."""

    def __init__(self, limits: EngineLimits, cores: int | None = None) -> None:
        import torch

        self.limits = limits
        cores = cores or torch.get_num_threads()
        self._threads = worker_threads(limits, cores)
        self._workers = [_Worker(i, limits, self._threads) for i in range(worker_count(limits, cores))]
        # command id -> (its loop, its future, its worker, its number of inputs)
        self._commands: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Future[Any], _Worker, int]] = {}
        self._ids = itertools.count()
        # guards `_commands`, `_workers`, each worker's outbox, inputs, stats; `_gone`, `_deaths`
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # a worker died or came back
        self._gone: str | None = None
        self._closing = threading.Event()  # wakes respawners out of their backoff
        self._respawners: list[threading.Thread] = []
        self._deaths = [0] * len(self._workers)  # per worker index, deaths in a row
        self._retired: Counter[str] = Counter()  # dead workers' counters, so totals never drop
        self.respawns = 0
        for w in self._workers:
            self._start_reader(w)

    async def embed(
        self,
        base: BaseSpec,
        adapter: AdapterSpec | None,
        texts: list[str],
        *,
        truncate: bool = False,
        tenant: str = "",
    ) -> EncodeResult:
        texts = check_items(texts, self.limits, truncate=truncate)  # before pickling a huge string
        out, tokens, ns = await self._call("embed", (base, adapter, texts, truncate, tenant), len(texts))
        return EncodeResult(embeddings=out, tokens=tokens, compute_ns=ns)

    async def classify(
        self,
        base: BaseSpec,
        adapter: AdapterSpec,
        texts: list[str],
        *,
        truncate: bool = False,
        tenant: str = "",
    ) -> ClassifyResult:
        texts = check_items(texts, self.limits, truncate=truncate)
        args = (base, adapter, texts, truncate, tenant)
        labels, probs, tokens, ns = await self._call("classify", args, len(texts))
        return ClassifyResult(labels=labels, probs=probs, tokens=tokens, compute_ns=ns)

    def unready(self) -> str | None:
        """Why this engine cannot serve in full (a worker is down), or None when it can."""
        with self._lock:
            down = [w.index for w in self._workers if not w.alive]
        if not down:
            return None
        return f"encoder worker(s) {down} of {len(self._workers)} stopped and are being restarted"

    def wait_ready(self, timeout: float) -> bool:
        """Block until every worker is up (True), or `timeout` seconds pass (False)."""
        with self._changed:
            return self._changed.wait_for(lambda: all(w.alive for w in self._workers), timeout)

    def stats(self) -> dict[str, float]:
        """The workers' engine statistics as of their latest replies, summed (all are counts),
        and how many workers are serving."""
        total: Counter[str] = Counter()
        with self._lock:
            total.update(self._retired)
            for w in self._workers:
                total.update(w.stats)
            total["workers"] = sum(w.alive for w in self._workers)
            total["respawns"] = self.respawns
        return dict(total)

    def close(self) -> None:
        with self._lock:
            if self._gone is None:
                self._gone = "the encoder engine is shutting down; retry on another replica"
                for w in self._workers:
                    with contextlib.suppress(OSError), w.send_lock:
                        w.conn.send(None)
        self._closing.set()
        for t in self._respawners:
            t.join(timeout=60)
        for w in self._workers:
            w.proc.join(timeout=30)
            if w.proc.is_alive():
                w.proc.terminate()
                w.proc.join(timeout=5)
            if w.reader is not None:
                w.reader.join(timeout=5)
            w.conn.close()

    async def _call(self, op: str, args: tuple[Any, ...], inputs: int) -> Any:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        with self._lock:
            if self._gone is not None:
                raise Overloaded(self._gone)
            alive = [x for x in self._workers if x.alive]
            if not alive:
                raise EngineUnavailable(_DOWN, retry_after_s=max(1, round(self.limits.respawn_backoff_s)))
            w = min(alive, key=lambda x: x.inputs)  # the first least loaded
            command_id = next(self._ids)
            self._commands[command_id] = (loop, fut, w, inputs)
            w.inputs += inputs
            if not w.outbox:
                loop.call_soon(self._flush, w)
            w.outbox.append((command_id, op, args))
        try:
            return await fut
        finally:
            with self._lock:
                if self._commands.pop(command_id, None) is not None:  # cancelled before its reply
                    w.inputs -= inputs

    def _flush(self, w: _Worker) -> None:
        """Send this loop turn's commands in one write; a command that cannot be pickled fails alone."""
        with self._lock:
            commands, w.outbox = w.outbox, []
        try:
            self._send(w, commands)
        except OSError:
            self._lost(w)
        except Exception:  # pickling failed, before any byte was written
            for command in commands:
                try:
                    self._send(w, [command])
                except OSError:  # the worker is gone: `_lost` failed every command still on it
                    self._lost(w)
                    return
                except Exception as exc:
                    why = f"this request cannot be sent to the encoder engine's process: {exc}"
                    self._fail([command], ("ConstellationError", why, None, None))

    @staticmethod
    def _send(w: _Worker, commands: list[Command]) -> None:
        with w.send_lock:
            w.conn.send(commands)

    def _fail(self, commands: list[Command], error: Any) -> None:
        with self._lock:
            lost = [self._take(c[0]) for c in commands if c[0] in self._commands]
        _settle([(fut, False, error) for _, fut in lost])

    def _lost(self, w: _Worker) -> None:
        """A worker is gone (it died, or its pipe broke): its commands fail with EngineUnavailable,
        the others keep serving, and it is respawned after a backoff (unless closing)."""
        with self._lock:
            first, w.alive = w.alive, False
            orphans = [self._take(c) for c, v in list(self._commands.items()) if v[2] is w]
            closing = self._gone is not None
            error = (
                ("Overloaded", self._gone, None, None)
                if closing
                else ("EngineUnavailable", _LOST, None, None)
            )
            if first and not closing:
                self._deaths[w.index] += 1
                t = threading.Thread(target=self._respawn, args=(w,), name="encoder-respawn", daemon=True)
                self._respawners = [*(x for x in self._respawners if x.is_alive()), t]
                t.start()
            self._changed.notify_all()
        for loop, fut in orphans:
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody is waiting
                loop.call_soon_threadsafe(_settle, [(fut, False, error)])

    def _respawn(self, dead: _Worker) -> None:
        """Replace a dead worker after its backoff; give up quietly if the engine closes first."""
        dead.proc.join(timeout=5)  # reap it
        if self._closing.wait(respawn_delay(self.limits, self._deaths[dead.index])):
            return
        try:
            fresh = _Worker(dead.index, self.limits, self._threads)
        except Exception:  # cannot start a process now: try again, later
            with self._lock:
                dead.alive = True  # so that `_lost` schedules the next try
            self._lost(dead)
            return
        with self._lock:
            installed = self._gone is None
            if installed:
                self._retired.update({k: v for k, v in dead.stats.items() if k != "queue_depth"})
                self._workers[dead.index] = fresh
                self.respawns += 1
                self._changed.notify_all()
        if not installed:
            with contextlib.suppress(OSError):
                fresh.conn.send(None)
            fresh.proc.join(timeout=30)
            return
        self._start_reader(fresh)
        dead.conn.close()

    def _start_reader(self, w: _Worker) -> None:
        w.reader = threading.Thread(target=self._read, args=(w,), name="encoder-replies", daemon=True)
        w.reader.start()

    def _take(self, command_id: int) -> tuple[asyncio.AbstractEventLoop, asyncio.Future[Any]]:
        """Forget an answered command (under `_lock`): its inputs leave its worker's count."""
        loop, fut, w, inputs = self._commands.pop(command_id)
        w.inputs -= inputs
        return loop, fut

    def _read(self, w: _Worker) -> None:
        """One worker's replies -> futures, one thread-safe wake-up per event loop per batch."""
        while True:
            try:
                replies, stats = w.conn.recv()
            except (EOFError, OSError):
                break
            by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
            with self._lock:
                w.stats = stats
                if not w.answered:
                    w.answered, self._deaths[w.index] = True, 0
                for command_id, ok, payload in replies:
                    if command_id in self._commands:
                        loop, fut = self._take(command_id)
                        by_loop.setdefault(loop, []).append((fut, ok, payload))
            for loop, items in by_loop.items():
                with contextlib.suppress(RuntimeError):  # that loop is closed: nobody is waiting
                    loop.call_soon_threadsafe(_settle, items)
        self._lost(w)


def _settle(items: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for fut, ok, payload in items:
        if fut.done():
            continue
        if ok:
            fut.set_result(payload)
        else:
            fut.set_exception(_error(payload))


def _error(payload: tuple[str, str, str | None, str | None]) -> Exception:
    name, message, param, code = payload
    cls = getattr(errors, name, None)
    if isinstance(cls, type) and issubclass(cls, ConstellationError):
        return cls(message, param=param, code=code)
    return ConstellationError(f"the encoder engine failed: {name}: {message}")


# -- the child ----------------------------------------------------------------------------------


def _child_main(conn: Connection, limits: dict[str, Any], switch_interval_ms: float, threads: int) -> None:
    """A worker process: an `EncoderEngine` driven by an event loop fed from the pipe."""
    import torch

    from constellation.config import Settings
    from constellation.engine.encoder.engine import EncoderEngine
    from constellation.runtime import tune_interpreter

    torch.set_num_threads(threads)
    tune_interpreter(Settings(gil_switch_interval_ms=switch_interval_ms))
    engine = EncoderEngine(EngineLimits(**limits))
    loop = asyncio.new_event_loop()
    outbox: list[Reply] = []

    def flush() -> None:
        batch = outbox[:]
        outbox.clear()
        try:
            conn.send((batch, engine.stats()))
        except OSError:
            loop.stop()  # the parent is gone

    def reply(item: Reply) -> None:
        if not outbox:
            loop.call_soon(flush)  # after every reply that is ready in this turn of the loop
        outbox.append(item)

    async def serve(command_id: int, op: str, args: tuple[Any, ...]) -> None:
        try:
            base, adapter, texts, truncate, tenant = args
            if op == "embed":
                r = await engine.embed(base, adapter, texts, truncate=truncate, tenant=tenant)
                reply((command_id, True, (r.embeddings, r.tokens, r.compute_ns)))
            else:
                c = await engine.classify(base, adapter, texts, truncate=truncate, tenant=tenant)
                reply((command_id, True, (c.labels, c.probs, c.tokens, c.compute_ns)))
        except ConstellationError as exc:
            reply((command_id, False, (type(exc).__name__, exc.message, exc.param, exc.code)))
        except Exception as exc:
            reply((command_id, False, (type(exc).__name__, str(exc), None, None)))

    tasks: set[asyncio.Task[None]] = set()

    def start(commands: list[Command]) -> None:
        for command in commands:
            task = loop.create_task(serve(*command))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    def receive() -> None:
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                msg = None
            if msg is None:
                loop.call_soon_threadsafe(loop.stop)
                return
            loop.call_soon_threadsafe(start, msg)

    threading.Thread(target=receive, name="encoder-requests", daemon=True).start()
    try:
        loop.run_forever()
    finally:
        engine.close()
        conn.close()
