"""The decoder's async interface: `prepare` a request (validate, tokenise, compile its grammar),
then `generate` streams its answer while one background thread steps every loaded base.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

from constellation.config import EngineLimits
from constellation.engine.bounds import check_prompt
from constellation.engine.decoder.detokenizer import TextStream
from constellation.engine.decoder.runner import BaseLoader, Runner, adapter_counts, load_runner, runner_bytes
from constellation.engine.decoder.sampling import SamplingParams, make_generator
from constellation.engine.decoder.sequence import Delta, Prepared, Seq
from constellation.engine.decoder.structured import Constraint, GrammarCompiler
from constellation.engine.decoder.tokens import LMTokenizer, fit_max_new
from constellation.engine.model_cache import ModelCache
from constellation.engine.models.causal_lm import serving_dtype
from constellation.engine.spec import AdapterSpec, BaseSpec
from constellation.errors import InvalidInput, Overloaded

__all__ = ["DecoderEngine", "Delta", "Prepared", "SamplingParams"]


class DecoderEngine:
    """Thread-safe async facade; one background thread runs every base's engine loop."""

    def __init__(self, limits: EngineLimits, *, loader: BaseLoader | None = None) -> None:
        self.limits = limits
        self._loader: BaseLoader = loader or load_runner
        self._tokenizers: dict[str, LMTokenizer] = {}
        self._grammars: dict[str, GrammarCompiler] = {}
        self._runners: dict[str, Runner] = {}
        self._retired: Counter[str] = Counter()  # adapter cache counts of evicted bases
        self._model_cache: ModelCache[Runner] = ModelCache(
            limits.base_model_bytes, lambda b: self._loader(b, limits), runner_bytes, self._evicted
        )
        self._inbox: queue.SimpleQueue[tuple[BaseSpec, Seq] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._grammar_lock = threading.Lock()
        self._queued = 0  # submitted, not yet admitted to a running batch
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="decoder-engine", daemon=True)
        self._thread.start()

    # -- caller side ------------------------------------------------------------------------
    def tokenizer(self, base: BaseSpec) -> LMTokenizer:
        with self._lock:
            tok = self._tokenizers.get(base.name)
        if tok is None:
            tok = LMTokenizer.load(base.resolve())
            with self._lock:
                self._tokenizers[base.name] = tok
        return tok

    def grammars(self, base: BaseSpec) -> GrammarCompiler:
        """The base's grammar compiler and cache (built on first use: it indexes the vocabulary)."""
        with self._grammar_lock:  # one build per base, however many requests ask at once
            compiler = self._grammars.get(base.name)
            if compiler is None:
                tok = self.tokenizer(base)
                compiler = GrammarCompiler(tok.tokenizer, tok.config.vocab_size, tok.eos_ids)
                self._grammars[base.name] = compiler
        return compiler

    def prepare(
        self,
        base: BaseSpec,
        adapter: AdapterSpec | None,
        *,
        prompt: str | None = None,
        messages: list[dict[str, Any]] | None = None,
        params: SamplingParams,
        tenant: str = "",
        constraint: Constraint | None = None,
    ) -> Prepared:
        """Tokenise and validate a request (InvalidInput says what to change); its text is
        bounded before it is tokenised. `tenant` is the fairness key of its admission; a
        `constraint` is compiled here (once per grammar and base, then cached)."""
        if base.task != "causal-lm":
            raise InvalidInput(
                f"model {base.name!r} is a {base.task} model; use /v1/embeddings or /v1/classify for it",
                param="model",
            )
        if (prompt is None) == (messages is None):
            raise InvalidInput("send exactly one of prompt or messages")
        check_prompt(prompt, messages, self.limits)
        tok = self.tokenizer(base)
        params = tok.defaults.apply(params)
        ids = tok.encode_prompt(prompt) if prompt is not None else tok.encode_chat(messages or [])
        context = min(tok.config.max_positions, self._kv_tokens(tok))
        max_new = fit_max_new(len(ids), params.max_tokens, context)
        grammar = self.grammars(base).compile(constraint) if constraint is not None else None
        return Prepared(base, adapter, tuple(ids), params, max_new, tenant, grammar)

    def _kv_tokens(self, tok: LMTokenizer) -> int:
        c = tok.config
        elem = serving_dtype(c, self.limits.device).itemsize
        per_token = 2 * c.n_layers * c.n_kv_heads * c.head_dim * elem
        return (self.limits.kv_cache_bytes // (per_token * 16)) * 16

    async def generate(self, prepared: Prepared) -> AsyncIterator[Delta]:
        """Stream the answer; closing the iterator aborts the sequence and frees it at once."""
        loop = asyncio.get_running_loop()
        out: asyncio.Queue[Delta | BaseException] = asyncio.Queue()

        def emit(d: Delta | BaseException) -> None:
            try:
                loop.call_soon_threadsafe(out.put_nowait, d)
            except RuntimeError:  # the caller's loop is gone: nobody reads this sequence any more
                seq.cancelled = True

        seq = Seq(
            prep=prepared,
            emit=emit,
            stream=TextStream(self.tokenizer(prepared.base), prepared.params.stop),
            gen=make_generator(prepared.params.seed),
            matcher=prepared.grammar.matcher() if prepared.grammar is not None else None,
        )

        self._submit(prepared.base, seq)
        try:
            while True:
                item = await out.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            if not seq.finished:
                seq.cancelled = True
                self._inbox.put(None)  # wake the loop so the sequence leaves now

    def _submit(self, base: BaseSpec, seq: Seq) -> None:
        with self._lock:
            if self._closed:
                raise Overloaded("the decoder engine is shutting down; retry shortly", retry_after_s=1)
            if self._queued >= self.limits.max_queue:
                raise Overloaded(
                    f"{self._queued} requests are already queued for the decoder; retry shortly",
                    retry_after_s=1,
                )
            self._queued += 1
        self._inbox.put((base, seq))

    def stats(self) -> dict[str, float]:
        runners = list(self._runners.values())
        busy = sum(r.busy_ns for r in runners)
        counts = self._retired + sum((adapter_counts(r) for r in runners), Counter[str]())
        return {
            **{k: float(v) for k, v in counts.items()},
            "bases": float(len(runners)),
            "queued": float(self._queued),
            "running": float(sum(len(r.scheduler.running) for r in runners)),
            "steps": float(sum(r.steps for r in runners)),
            "busy_ns": float(busy),
            "tokens_out": float(sum(r.tokens_out for r in runners)),
            "kv_free_blocks": float(sum(r.kv.free_blocks for r in runners)),
            "kv_blocks": float(sum(r.kv.n_blocks for r in runners)),
        }

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._inbox.put(None)
        self._thread.join(timeout=30)

    # -- engine thread ----------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            idle = not any(r.scheduler.has_work for r in self._runners.values())
            self._drain(block=idle)
            if self._closed:
                break
            for runner in list(self._runners.values()):
                if runner.scheduler.has_work:
                    self._step(runner)
        err = Overloaded("the decoder engine shut down; retry on another replica", retry_after_s=1)
        for runner in self._runners.values():
            runner.scheduler.abort_all(err)
        self._model_cache.close()

    def _step(self, runner: Runner) -> None:
        try:
            runner.step()
        except Exception as exc:  # a broken step fails its requests, never the loop
            runner.scheduler.abort_all(exc)

    def _drain(self, *, block: bool) -> None:
        try:
            item = self._inbox.get(timeout=0.5) if block else self._inbox.get_nowait()
            while True:
                if item is not None:
                    self._enqueue(*item)
                item = self._inbox.get_nowait()
        except queue.Empty:
            return

    def _enqueue(self, base: BaseSpec, seq: Seq) -> None:
        """Hold the base in the model cache for as long as `seq` lives, then queue it on its runner."""
        try:
            runner = self._model_cache.acquire(base)
        except Exception as exc:  # unloadable base or no room: this request fails, not the loop
            self._dequeued(seq)
            seq.emit(exc)
            return
        runner.scheduler.on_dequeue = self._dequeued
        runner.scheduler.on_finish = lambda s: self._model_cache.release(s.prep.base.name)
        self._runners[base.name] = runner
        runner.scheduler.waiting.push(seq)

    def _evicted(self, runner: Runner) -> None:
        self._retired.update(adapter_counts(runner))
        self._runners = {k: r for k, r in self._runners.items() if r is not runner}

    def _dequeued(self, seq: Seq) -> None:
        if seq.queued:
            seq.queued = False
            with self._lock:
                self._queued -= 1
