"""The encoder engine in a child process of its own, behind the same async interface.

Why: in one process the engine's worker and the server's event loop share one GIL. A forward
pass takes and releases the GIL a few hundred times (once per tensor op), and while the event
loop parses and answers requests each of those waits for it; on two cores the engine then
idles, waiting, for a large part of every step. In its own process the engine has its own GIL,
and the server's process keeps only HTTP, auth, metering and the pipe.

Protocol (one `multiprocessing` pipe each way, pickled; each side writes once per turn of its
event loop, not once per request: under load that is one write for dozens of requests):
  parent -> child  a list of `(call_id, op, args)`; op is "embed" or "classify"; `None` closes.
  child -> parent  a list of `(call_id, ok, payload)`, then the child's engine stats.
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
from multiprocessing.connection import Connection
from typing import Any

from constellation import errors
from constellation.config import EngineLimits
from constellation.engine.encoder import ClassifyResult, EncodeResult
from constellation.engine.spec import AdapterSpec, BaseSpec
from constellation.errors import ConstellationError, Overloaded

Reply = tuple[int, bool, Any]
_GONE = "the encoder engine process stopped; restart the server (see its log for the cause)"


class RemoteEncoderEngine:
    """`EncoderEngine`'s interface (`embed`, `classify`, `stats`, `close`), run in a child
    process started with `spawn` (a fork of a process with torch threads is unsafe)."""

    def __init__(self, limits: EngineLimits) -> None:
        self.limits = limits
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        switch_ms = sys.getswitchinterval() * 1000  # the serving process's, set by its lifespan
        self._proc = ctx.Process(
            target=_child_main,
            args=(child, limits.model_dump(), switch_ms),
            name="constellation-encoder",
            daemon=True,
        )
        self._proc.start()
        child.close()
        self._calls: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Future[Any]]] = {}
        self._ids = itertools.count()
        self._lock = threading.Lock()  # guards `_calls`, `_stats` and `_gone`
        self._send_lock = threading.Lock()  # one writer on the pipe at a time
        self._stats: dict[str, float] = {}
        self._outbox: list[tuple[int, str, tuple[Any, ...]]] = []  # calls of this loop turn
        self._gone: str | None = None
        self._reader = threading.Thread(target=self._read, name="encoder-replies", daemon=True)
        self._reader.start()

    async def embed(
        self, base: BaseSpec, adapter: AdapterSpec | None, texts: list[str], *, truncate: bool = False
    ) -> EncodeResult:
        out, tokens, ns = await self._call("embed", (base, adapter, texts, truncate))
        return EncodeResult(embeddings=out, tokens=tokens, compute_ns=ns)

    async def classify(
        self, base: BaseSpec, adapter: AdapterSpec, texts: list[str], *, truncate: bool = False
    ) -> ClassifyResult:
        labels, probs, tokens, ns = await self._call("classify", (base, adapter, texts, truncate))
        return ClassifyResult(labels=labels, probs=probs, tokens=tokens, compute_ns=ns)

    def stats(self) -> dict[str, float]:
        """The child's engine statistics as of its latest reply."""
        with self._lock:
            return dict(self._stats)

    def close(self) -> None:
        with self._lock:
            if self._gone is None:
                self._gone = "the encoder engine is shutting down; retry on another replica"
                with contextlib.suppress(OSError), self._send_lock:
                    self._conn.send(None)
        self._proc.join(timeout=30)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(timeout=5)
        self._reader.join(timeout=5)
        self._conn.close()

    async def _call(self, op: str, args: tuple[Any, ...]) -> Any:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        with self._lock:
            if self._gone is not None:
                raise Overloaded(self._gone)
            call_id = next(self._ids)
            self._calls[call_id] = (loop, fut)
            if not self._outbox:
                loop.call_soon(self._flush)
            self._outbox.append((call_id, op, args))
        try:
            return await fut
        finally:
            with self._lock:
                self._calls.pop(call_id, None)

    def _flush(self) -> None:
        """Send this loop turn's calls in one write; a call that cannot be pickled fails alone."""
        with self._lock:
            calls, self._outbox = self._outbox, []
        try:
            self._send(calls)
        except OSError:
            self._fail(calls, ("Overloaded", _GONE, None, None), gone=True)
        except Exception:  # pickling failed, before any byte was written
            for call in calls:
                try:
                    self._send([call])
                except OSError:
                    self._fail([call], ("Overloaded", _GONE, None, None), gone=True)
                except Exception as exc:
                    why = f"this request cannot be sent to the encoder engine's process: {exc}"
                    self._fail([call], ("ConstellationError", why, None, None))

    def _send(self, calls: list[tuple[int, str, tuple[Any, ...]]]) -> None:
        with self._send_lock:
            self._conn.send(calls)

    def _fail(self, calls: list[tuple[int, str, tuple[Any, ...]]], error: Any, *, gone: bool = False) -> None:
        with self._lock:
            if gone:
                self._gone = self._gone or _GONE
            lost = [self._calls.pop(c[0]) for c in calls if c[0] in self._calls]
        _settle([(fut, False, error) for _, fut in lost])

    def _read(self) -> None:
        """Replies -> futures, one thread-safe wake-up per event loop per batch of replies."""
        while True:
            try:
                replies, stats = self._conn.recv()
            except (EOFError, OSError):
                break
            by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
            with self._lock:
                self._stats = stats
                for call_id, ok, payload in replies:
                    hit = self._calls.get(call_id)
                    if hit is not None:
                        by_loop.setdefault(hit[0], []).append((hit[1], ok, payload))
            for loop, items in by_loop.items():
                loop.call_soon_threadsafe(_settle, items)
        with self._lock:  # the child is gone: fail whatever still waits on it
            self._gone = self._gone or _GONE
            orphans = list(self._calls.values())
        for loop, fut in orphans:
            loop.call_soon_threadsafe(_settle, [(fut, False, ("Overloaded", self._gone, None, None))])


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


def _child_main(conn: Connection, limits: dict[str, Any], switch_interval_ms: float) -> None:
    """The child process: an `EncoderEngine` driven by an event loop fed from the pipe."""
    from constellation.config import Settings
    from constellation.engine.encoder import EncoderEngine
    from constellation.runtime import tune_interpreter

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

    async def serve(call_id: int, op: str, args: tuple[Any, ...]) -> None:
        try:
            if op == "embed":
                r = await engine.embed(args[0], args[1], args[2], truncate=args[3])
                reply((call_id, True, (r.embeddings, r.tokens, r.compute_ns)))
            else:
                c = await engine.classify(args[0], args[1], args[2], truncate=args[3])
                reply((call_id, True, (c.labels, c.probs, c.tokens, c.compute_ns)))
        except ConstellationError as exc:
            reply((call_id, False, (type(exc).__name__, exc.message, exc.param, exc.code)))
        except Exception as exc:
            reply((call_id, False, (type(exc).__name__, str(exc), None, None)))

    tasks: set[asyncio.Task[None]] = set()

    def start(calls: list[tuple[int, str, tuple[Any, ...]]]) -> None:
        for call in calls:
            task = loop.create_task(serve(*call))
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
