"""Decoder serving: iteration-level continuous batching of causal LMs with many LoRA adapters.

`Runner` is one loaded base (schedule / run / postprocess); `DecoderEngine` is the async facade.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from constellation.artifacts.peft import DECODER_TARGETS
from constellation.config import EngineLimits
from constellation.engine.adapters import AdapterCache
from constellation.engine.attribution import split_ns
from constellation.engine.bounds import check_prompt
from constellation.engine.fairness import FairQueue
from constellation.engine.kvcache import KVCache
from constellation.engine.llm import CausalLM, StepInput, load_causal_lm, read_config, serving_dtype
from constellation.engine.llm_tokens import LMTokenizer, fit_max_new
from constellation.engine.lora import NO_ADAPTER, LoRAContext, inject_lora
from constellation.engine.pool import ModelPool, module_bytes
from constellation.engine.sampling import SamplingParams, TextStream, make_generator, sample
from constellation.engine.spec import AdapterSpec, BaseSpec
from constellation.engine.structured import Constraint, Grammar, GrammarCompiler, Matcher, mask_logits
from constellation.errors import InvalidInput, Overloaded

__all__ = ["DecoderEngine", "Delta", "Prepared", "SamplingParams"]


@dataclass(frozen=True, slots=True)
class Prepared:
    """A validated, tokenised request, ready for `DecoderEngine.generate`."""

    base: BaseSpec
    adapter: AdapterSpec | None
    prompt_ids: tuple[int, ...]
    params: SamplingParams
    max_new: int
    tenant: str = ""  # fairness key: waiting sequences are admitted in turn across keys
    grammar: Grammar | None = None  # constrained decoding: the output must match it


@dataclass(frozen=True, slots=True)
class Delta:
    """One streamed piece of an answer; the last has `finish_reason`. `compute_ns` is the compute
    attributed to the request so far (what a stream dropped here is billed for)."""

    text: str
    token_ids: tuple[int, ...]
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    compute_ns: int | None = None
    queue_ns: int | None = None  # on the first piece: how long the request waited to be admitted


class AdapterSlots(Protocol):
    """Pins adapters into the base's LoRA slots for as long as a sequence runs."""

    def acquire(self, specs: Sequence[AdapterSpec]) -> list[int]: ...
    def release(self, specs: Sequence[AdapterSpec]) -> None: ...


Emit = Callable[[Delta | BaseException], object]


@dataclass(slots=True, eq=False)
class Seq:
    """One request inside the engine loop."""

    prep: Prepared
    emit: Emit
    stream: TextStream
    gen: torch.Generator
    out: list[int] = field(default_factory=list)
    table: list[int] = field(default_factory=list)  # KV-cache blocks
    n_cached: int = 0  # tokens whose k/v are in the cache
    slot: int = NO_ADAPTER
    pinned: bool = False
    matcher: Matcher | None = None  # where a constrained output is in its grammar
    compute_ns: int = 0
    cancelled: bool = False
    finished: bool = False
    queued: bool = True  # counted against max_queue until first admitted or dropped
    submitted_ns: int = field(default_factory=time.monotonic_ns)
    queue_ns: int | None = None  # submission to first admission (a preempted one keeps its first)

    @property
    def n_tokens(self) -> int:
        return len(self.prep.prompt_ids) + len(self.out)

    def token_slice(self, start: int, end: int) -> list[int]:
        p = self.prep.prompt_ids
        return [*(p[start:end]), *self.out[max(0, start - len(p)) : max(0, end - len(p))]]


@dataclass(frozen=True, slots=True)
class Work:
    seq: Seq
    start: int  # first new position
    n: int  # new tokens this step

    @property
    def samples(self) -> bool:
        return self.start + self.n == self.seq.n_tokens


class Runner:
    """One loaded base with its KV cache and adapter slots; the loop calls `step()`."""

    def __init__(
        self,
        model: CausalLM,
        tok: LMTokenizer,
        kv: KVCache,
        limits: EngineLimits,
        *,
        lora: LoRAContext | None = None,
        adapters: AdapterSlots | None = None,
    ) -> None:
        self.model, self.tok, self.kv, self.limits = model, tok, kv, limits
        self.lora, self.adapters = lora, adapters
        # Round-robin across tenants: one tenant's backlog does not delay another's admission.
        self.waiting: FairQueue[Seq] = FairQueue(lambda s: s.prep.tenant)
        self.running: list[Seq] = []
        self.busy_ns = 0
        self.steps = 0
        self.tokens_out = 0
        self.on_dequeue: Callable[[Seq], None] = lambda s: None
        self.on_finish: Callable[[Seq], None] = lambda s: None

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def step(self) -> None:
        work = self.schedule()
        if work:
            sampled, ns = self.run(work)
            self.postprocess(work, sampled, ns)

    # -- schedule ---------------------------------------------------------------------------
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
            self._free(seq)
        for seq in self.waiting.remove(lambda s: s.cancelled):
            self._free(seq)
            self.on_dequeue(seq)

    def _free(self, seq: Seq) -> None:
        if seq in self.running:
            self.running.remove(seq)
        self.kv.release(seq.table)
        self._unpin(seq)
        if not seq.finished:
            seq.finished = True
            self.on_finish(seq)

    # -- run --------------------------------------------------------------------------------
    def run(self, work: list[Work]) -> tuple[list[int], int]:
        """One forward over every scheduled token; returns sampled tokens and busy ns."""
        t0 = time.perf_counter_ns()
        step, slots = self._build(work)
        if self.lora is not None:
            self.lora.set_padded(slots)
        logits = self.model(step.to(self.kv.k.device), self.kv)  # [R, V]
        rows = [w for w in work if w.samples]
        logits = mask_logits(logits, [w.seq.matcher for w in rows])
        tokens = (
            sample(logits, [w.seq.prep.params for w in rows], [w.seq.gen for w in rows]) if rows else None
        )
        sampled = tokens.tolist() if tokens is not None else []
        return sampled, time.perf_counter_ns() - t0

    def _build(self, work: list[Work]) -> tuple[StepInput, list[int]]:
        bs = self.kv.block_size
        n_max = max(w.n for w in work)
        length = max(w.start + w.n for w in work)
        tokens: list[int] = []
        positions: list[int] = []
        slot_map: list[int] = []
        lora_slots: list[int] = []
        q_index = torch.zeros(len(work), n_max, dtype=torch.long)  # [B, N]
        q_pos = torch.zeros(len(work), n_max, dtype=torch.long)  # [B, N]
        tables = torch.zeros(len(work), -(-length // bs), dtype=torch.long)  # [B, nb]
        logits_rows: list[int] = []
        for b, w in enumerate(work):
            off = len(tokens)
            tokens += w.seq.token_slice(w.start, w.start + w.n)
            positions += range(w.start, w.start + w.n)
            slot_map += self.kv.slots(w.seq.table, w.start, w.start + w.n)
            lora_slots += [w.seq.slot] * w.n
            q_index[b, : w.n] = torch.arange(off, off + w.n)
            q_pos[b, : w.n] = torch.arange(w.start, w.start + w.n)
            tables[b, : len(w.seq.table)] = torch.tensor(w.seq.table[: tables.shape[1]])
            if w.samples:
                logits_rows.append(off + w.n - 1)
        q_valid = torch.arange(n_max)[None, :] < torch.tensor([w.n for w in work])[:, None]  # [B, N]
        step = StepInput(
            tokens=torch.tensor(tokens),
            positions=torch.tensor(positions),
            slot_mapping=torch.tensor(slot_map),
            block_tables=tables,
            q_index=q_index,
            q_valid=q_valid,
            mask=self._mask(q_pos, length),
            logits_rows=torch.tensor(logits_rows, dtype=torch.long),
        )
        return step, lora_slots

    def _mask(self, q_pos: torch.Tensor, length: int) -> torch.Tensor:
        """[B, 1, N, L]: causal over each sequence's own prefix (padded queries see key 0)."""
        keys = torch.arange(length)[None, None, :]  # [1, 1, L]
        pos = q_pos[:, :, None]  # [B, N, 1]
        mask = keys <= pos
        window = self.model.cfg.sliding_window
        if window is not None:
            mask &= keys > pos - window
        return mask[:, None]

    # -- postprocess ------------------------------------------------------------------------
    def postprocess(self, work: list[Work], sampled: list[int], busy_ns: int) -> None:
        """Charge the step, append sampled tokens, stream text, retire finished sequences."""
        self.busy_ns += busy_ns
        self.steps += 1
        for w, ns in zip(work, split_ns(busy_ns, [w.n for w in work]), strict=True):
            w.seq.compute_ns += ns
            w.seq.n_cached = w.start + w.n
        it = iter(sampled)
        for w in work:
            if w.samples:
                self._advance(w.seq, next(it))

    def _advance(self, seq: Seq, token: int) -> None:
        seq.out.append(token)
        self.tokens_out += 1
        eos = token in self.tok.eos_ids
        text, hit = seq.stream.push([] if eos else [token])
        closed = False  # a constrained output is complete: only end-of-sequence could follow
        if seq.matcher is not None and not eos:
            seq.matcher.advance(token)
            closed = seq.matcher.done
        stop = eos or hit or closed
        reason = "stop" if stop else ("length" if len(seq.out) >= seq.prep.max_new else None)
        if reason is None:
            seq.emit(self._delta(seq, text, token, None))
            return
        if not hit:
            text += seq.stream.flush()
        self._free(seq)
        seq.emit(self._delta(seq, text, token, reason))

    def _delta(self, seq: Seq, text: str, token: int, reason: str | None) -> Delta:
        return Delta(
            text=text,
            token_ids=(token,),
            finish_reason=reason,
            prompt_tokens=len(seq.prep.prompt_ids),
            completion_tokens=len(seq.out),
            compute_ns=seq.compute_ns,
            queue_ns=seq.queue_ns if len(seq.out) == 1 else None,
        )

    def abort_all(self, err: BaseException) -> None:
        for seq in [*self.running, *self.waiting]:
            self._free(seq)
            self.on_dequeue(seq)
            seq.emit(err)
        self.waiting.clear()


BaseLoader = Callable[[BaseSpec, EngineLimits], Runner]
LORA_LEAVES = DECODER_TARGETS  # the PEFT rules: which linears adapters may target


def load_runner(base: BaseSpec, limits: EngineLimits) -> Runner:
    """Load `base` from its verified directory: forward, KV cache, LoRA slots, adapter cache."""
    path = base.resolve()
    dtype = serving_dtype(read_config(path), limits.device)
    model = load_causal_lm(path, dtype).to(limits.device)
    cfg = model.cfg
    # Always the batch-invariant LoRA path: a seeded request's tokens must not depend on its
    # batch companions (sampling amplifies any last-bit difference into a different token).
    ctx = LoRAContext(limits.adapter_slots, deterministic=True, device=limits.device)

    # Our module paths equal HF's, so an adapter's module name is the layer's own path.
    targets = lambda p: p if p.rpartition(".")[2] in LORA_LEAVES else None  # noqa: E731
    layers = inject_lora(model, targets, ctx, limits.adapter_slots, limits.max_lora_rank)
    kv = KVCache(
        n_layers=cfg.n_layers,
        n_kv_heads=cfg.n_kv_heads,
        head_dim=cfg.head_dim,
        budget_bytes=limits.kv_cache_bytes,
        dtype=dtype,
        device=limits.device,
    )
    adapters = AdapterCache(layers, limits.adapter_slots, limits.adapter_host_bytes)
    return Runner(model, LMTokenizer.load(path), kv, limits, lora=ctx, adapters=adapters)


def _adapter_counts(runner: Runner) -> Counter[str]:
    counts = getattr(runner.adapters, "counts", None)
    return counts if isinstance(counts, Counter) else Counter()


def runner_bytes(runner: Runner) -> int:
    """Weights, LoRA slots and KV cache: what a resident base holds."""
    return module_bytes(runner.model) + runner.kv.k.nbytes + runner.kv.v.nbytes


class DecoderEngine:
    """Thread-safe async facade; one background thread runs every base's engine loop."""

    def __init__(self, limits: EngineLimits, *, loader: BaseLoader | None = None) -> None:
        self.limits = limits
        self._loader: BaseLoader = loader or load_runner
        self._tokenizers: dict[str, LMTokenizer] = {}
        self._grammars: dict[str, GrammarCompiler] = {}
        self._runners: dict[str, Runner] = {}
        self._retired: Counter[str] = Counter()  # adapter cache counts of evicted bases
        self._pool: ModelPool[Runner] = ModelPool(
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
        counts = self._retired + sum((_adapter_counts(r) for r in runners), Counter[str]())
        return {
            **{k: float(v) for k, v in counts.items()},
            "bases": float(len(runners)),
            "queued": float(self._queued),
            "running": float(sum(len(r.running) for r in runners)),
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
            idle = not any(r.has_work for r in self._runners.values())
            self._drain(block=idle)
            if self._closed:
                break
            for runner in list(self._runners.values()):
                if runner.has_work:
                    self._step(runner)
        err = Overloaded("the decoder engine shut down; retry on another replica", retry_after_s=1)
        for runner in self._runners.values():
            runner.abort_all(err)
        self._pool.close()

    def _step(self, runner: Runner) -> None:
        try:
            runner.step()
        except Exception as exc:  # a broken step fails its requests, never the loop
            runner.abort_all(exc)

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
        """Hold the base in the pool for as long as `seq` lives, then queue it on its runner."""
        try:
            runner = self._pool.acquire(base)
        except Exception as exc:  # unloadable base or no room: this request fails, not the loop
            self._dequeued(seq)
            seq.emit(exc)
            return
        runner.on_dequeue = self._dequeued
        runner.on_finish = lambda s: self._pool.release(s.prep.base.name)
        self._runners[base.name] = runner
        runner.waiting.push(seq)

    def _evicted(self, runner: Runner) -> None:
        self._retired.update(_adapter_counts(runner))
        self._runners = {k: r for k, r in self._runners.items() if r is not runner}

    def _dequeued(self, seq: Seq) -> None:
        if seq.queued:
            seq.queued = False
            with self._lock:
                self._queued -= 1
