"""One loaded base's forward: builds a step's packed input from the scheduled `Work`, runs the
model once, samples, and turns sampled tokens into streamed `Delta`s (schedule / run / postprocess).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

import torch

from constellation.artifacts.peft import DECODER_TARGETS
from constellation.config import EngineLimits
from constellation.engine.attribution import split_ns
from constellation.engine.decoder.kvcache import KVCache
from constellation.engine.decoder.sampling import sample
from constellation.engine.decoder.scheduler import AdapterSlots, Scheduler
from constellation.engine.decoder.sequence import Delta, Seq, Work
from constellation.engine.decoder.structured import mask_logits
from constellation.engine.decoder.tokens import LMTokenizer
from constellation.engine.lora.cache import AdapterCache
from constellation.engine.lora.layer import LoRAContext, inject_lora
from constellation.engine.model_cache import module_bytes
from constellation.engine.models.causal_lm import CausalLM, load_causal_lm, serving_dtype
from constellation.engine.models.config import read_config
from constellation.engine.models.layers import StepInput
from constellation.engine.spec import BaseSpec


class Runner:
    """One loaded base with its KV cache, adapter slots and scheduler; the loop calls `step()`."""

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
        self.scheduler = Scheduler(kv, limits, adapters)
        self.busy_ns = 0
        self.steps = 0
        self.tokens_out = 0

    def step(self) -> None:
        work = self.scheduler.schedule()
        if work:
            sampled, ns = self.run(work)
            self.postprocess(work, sampled, ns)

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
        kv_index: list[int] = []
        lora_slots: list[int] = []
        q_index = torch.zeros(len(work), n_max, dtype=torch.long)  # [B, N]
        q_pos = torch.zeros(len(work), n_max, dtype=torch.long)  # [B, N]
        tables = torch.zeros(len(work), -(-length // bs), dtype=torch.long)  # [B, nb]
        logits_rows: list[int] = []
        for b, w in enumerate(work):
            off = len(tokens)
            tokens += w.seq.token_slice(w.start, w.start + w.n)
            positions += range(w.start, w.start + w.n)
            kv_index += self.kv.flat_index(w.seq.table, w.start, w.start + w.n)
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
            kv_index=torch.tensor(kv_index),
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
        self.scheduler.finish(seq)
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


def adapter_counts(runner: Runner) -> Counter[str]:
    counts = getattr(runner.adapters, "counts", None)
    return counts if isinstance(counts, Counter) else Counter()


def runner_bytes(runner: Runner) -> int:
    """Weights, LoRA slots and KV cache: what a resident base holds."""
    return module_bytes(runner.model) + runner.kv.k.nbytes + runner.kv.v.nbytes
