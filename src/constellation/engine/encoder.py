"""BERT-family encoder bases with multi-LoRA layers: tokenise, forward, pool like sentence-transformers.

Embeddings follow the model's sentence-transformers config (pooling, normalisation, max length);
classification adapters apply their head to the pooled embedding before normalisation.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from transformers import AutoModel, AutoTokenizer

from constellation.artifacts.peft import ENCODER_WRAPPERS, encoder_target
from constellation.config import EngineLimits
from constellation.engine import bert_packed
from constellation.engine.adapters import AdapterCache, ClassifierHead
from constellation.engine.bounds import check_items, cut_for_tokens, tokenize_bounded
from constellation.engine.lora import NO_ADAPTER, LoRAContext, inject_lora
from constellation.engine.pool import ModelPool, module_bytes
from constellation.engine.pooling import pool, pool_packed, read_pooling
from constellation.engine.spec import AdapterSpec, BaseSpec
from constellation.errors import InvalidInput

Kind = Literal["embed", "classify"]

# Which linears adapters may target, and the wrapper prefixes they may carry: the PEFT rules.
_WRAPPERS = ENCODER_WRAPPERS
BUCKET = 16  # deterministic mode pads each sequence to a multiple of this, alone or batched
# What the packed path's LoRA layers (a matmul pair per adapter's run of tokens, per layer) cost
# beyond the padded path's one bmm pair for all adapters, in tokens of base compute: a share of
# the batch's tokens plus a cost per adapter. A batch with adapters packs when the padding it
# saves is larger. Fit to side-by-side timings of the two paths on MiniLM with prepacked GEMMs
# on 2 CPU cores (31 batches of 16 to 64 sequences, 2 to 32 adapters, 8% to 50% padding): the
# rule picked the faster path in 30, and the miss cost 5%. (Without adapters the packed path
# is the faster whenever there is padding to save.)
LORA_TOKEN_SHARE = 0.17
RUN_COST_TOKENS = 8


def _max_length(path: Path, tokenizer_max: int, positions: int) -> int:
    st = path / "sentence_bert_config.json"
    if st.is_file():
        return int(json.loads(st.read_text()).get("max_seq_length") or positions)
    return min(tokenizer_max, positions)


INLINE_CHARS = 2_000  # requests up to this many characters are tokenised on the event loop


class EncoderModel:
    """One loaded encoder base: tokenizer, BERT with LoRA layers, pooling, adapter cache."""

    def __init__(self, spec: BaseSpec, limits: EngineLimits) -> None:
        path = spec.resolve()
        self.name = spec.name
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        # The Rust tokenizer itself, for the hot path: one call per request without the Python
        # wrapper's per-call set-up. Length limits are ours (`tokenize`), so none of its own.
        # A copy: the wrapper sets truncation on its own backend per call, which must not leak here.
        fast = self.tokenizer.backend_tokenizer if self.tokenizer.is_fast else None
        self._fast = Tokenizer.from_str(fast.to_str()) if fast is not None else None
        if self._fast is not None:
            self._fast.no_truncation()
            self._fast.no_padding()
        model = AutoModel.from_pretrained(str(path), dtype=torch.float32)
        model.pooler = None  # sentence-transformers pools itself; BERT's pooler is unused work
        self.model = model.eval().to(limits.device)
        self.pooling = read_pooling(path)
        positions = int(model.config.max_position_embeddings)
        self.max_length = _max_length(path, int(self.tokenizer.model_max_length), positions)
        self.deterministic = limits.deterministic
        # Packed tokens (no padding in the linears) unless bitwise batch invariance is asked for:
        # that needs each sequence's GEMMs shaped alike alone or batched, so the padded path.
        self.packed = not limits.deterministic and bert_packed.supports(model)
        self.ctx = LoRAContext(limits.adapter_slots, deterministic=limits.deterministic, device=limits.device)
        self.layers = inject_lora(
            self.model, _bert_target, self.ctx, limits.adapter_slots, limits.max_lora_rank
        )
        self.adapters = AdapterCache(
            self.layers, limits.adapter_slots, limits.adapter_host_bytes, name_map=self._layer_name
        )
        if limits.prepacked_linears and not limits.deterministic:
            for layer in self.layers.values():
                layer.prepack()
        self.nbytes = module_bytes(self.model)  # the prepacked copies included
        self.pad_id = int(self.tokenizer.pad_token_id or 0)
        self.max_request_tokens = limits.max_tokens_per_request

    def tokenize(self, texts: list[str], *, truncate: bool) -> list[list[int]]:
        """Token ids per text (with special tokens); too long is an error unless `truncate`, which
        cuts the text before tokenising it, and the request's tokens are bounded on the way."""
        if truncate:
            texts = [cut_for_tokens(t, self.max_length) for t in texts]
        fit = lambda i, row: self._fit(i, row, truncate)  # noqa: E731
        return tokenize_bounded(texts, self._encode, self.max_request_tokens, fit=fit)

    def _encode(self, texts: list[str]) -> list[list[int]]:
        if self._fast is not None and len(texts) == 1:  # the common request: no thread pool hop
            return [self._fast.encode(texts[0], add_special_tokens=True).ids]
        if self._fast is not None:
            return [e.ids for e in self._fast.encode_batch(texts, add_special_tokens=True)]
        return [list(x) for x in self.tokenizer(texts, add_special_tokens=True)["input_ids"]]

    def _fit(self, i: int, row: list[int], truncate: bool) -> list[int]:
        if len(row) <= self.max_length:
            return row
        if not truncate:
            raise InvalidInput(
                f"input[{i}] has {len(row)} tokens but model {self.name!r} accepts at most "
                f"{self.max_length}; shorten it or pass truncate: true",
                param="input",
            )
        # Keep the final [SEP]-style token, as the tokenizer's own truncation does.
        return row[: self.max_length - 1] + row[-1:]

    def padded_length(self, n_tokens: int) -> int:
        """Length a sequence runs at: its own bucket in deterministic mode (same alone or batched)."""
        if not self.deterministic:
            return n_tokens
        return min(-(-n_tokens // BUCKET) * BUCKET, int(self.model.config.max_position_embeddings))

    @torch.inference_mode()
    def forward(self, ids: list[list[int]], slots: torch.Tensor) -> torch.Tensor:
        """Pooled embeddings [n, d] before normalisation; row i uses adapter slot `slots[i]`."""
        # Rows sorted by slot once per batch: every LoRA layer then runs one grouped matmul
        # (padded) or one matmul pair per adapter's run of tokens (packed).
        order = torch.argsort(self.ctx.sort_key(slots), stable=True)  # [n]
        seqs, by_slot = [ids[i] for i in order.tolist()], slots[order]
        if self.packs(ids, slots):
            h = bert_packed.packed_forward(self.model, self.ctx, seqs, by_slot.tolist())  # [T, d]
            pooled = pool_packed(h, [len(x) for x in seqs], self.pooling.mode).cpu()
        else:
            pooled = self._forward_sorted(seqs, by_slot)
        out = torch.empty_like(pooled)  # [n, d]
        out[order] = pooled
        return out

    def packs(self, ids: list[list[int]], slots: torch.Tensor) -> bool:
        """Whether `forward` packs this batch: it can, and the padding saved outweighs what
        the packed path's LoRA layers add (`LORA_TOKEN_SHARE`, `RUN_COST_TOKENS`)."""
        if not self.packed:
            return False
        tokens = sum(len(x) for x in ids)
        padding = len(ids) * max(len(x) for x in ids) - tokens
        adapters = len(set(slots.tolist()) - {NO_ADAPTER})
        if not adapters:
            return padding > 0
        return padding > LORA_TOKEN_SHARE * tokens + RUN_COST_TOKENS * adapters

    def _forward_sorted(self, ids: list[list[int]], slots: torch.Tensor) -> torch.Tensor:
        length = max(self.padded_length(len(x)) for x in ids)
        input_ids = torch.full((len(ids), length), self.pad_id, dtype=torch.long)  # [B, L]
        mask = torch.zeros((len(ids), length), dtype=torch.long)  # [B, L]
        for i, row in enumerate(ids):
            input_ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        dev = self.ctx.device
        input_ids, mask = input_ids.to(dev, non_blocking=True), mask.to(dev, non_blocking=True)
        self.ctx.set_mapping(slots.to(dev))
        try:
            h = self.model(input_ids=input_ids, attention_mask=mask).last_hidden_state  # [B, L, d]
        finally:
            self.ctx.clear_mapping()
        return pool(h, mask, self.pooling.mode).cpu()  # a no-op on CPU

    def embed(self, pooled: torch.Tensor) -> torch.Tensor:
        return F.normalize(pooled, p=2, dim=1) if self.pooling.normalize else pooled

    @staticmethod
    def classify(pooled: torch.Tensor, head: ClassifierHead) -> torch.Tensor:
        """Label probabilities [n, labels] from one request's pooled rows."""
        return torch.softmax(F.linear(pooled, head.weight, head.bias), dim=-1)

    def _layer_name(self, hf: str) -> str | None:
        """An adapter's module path as a key of `self.layers`, tolerating task-model prefixes."""
        if hf in self.layers:
            return hf
        for prefix in _WRAPPERS:
            if hf.startswith(prefix) and hf.removeprefix(prefix) in self.layers:
                return hf.removeprefix(prefix)
        return None


def _bert_target(path: str) -> str | None:
    """Every attention/MLP linear inside an encoder layer, named as in HF's BertModel."""
    return encoder_target(path)


@dataclass(frozen=True, slots=True)
class EncodeResult:
    embeddings: np.ndarray  # float32 [n, d]
    tokens: list[int]  # per input
    compute_ns: int  # attributed engine time


@dataclass(frozen=True, slots=True)
class ClassifyResult:
    labels: list[str]
    probs: list[dict[str, float]]
    tokens: list[int]
    compute_ns: int


class EncoderEngine:
    """Async, thread-safe facade: embeddings and classification, micro-batched on one worker."""

    def __init__(self, limits: EngineLimits) -> None:
        from constellation.engine.batcher import MicroBatcher  # the batcher imports this module

        self.limits = limits
        self._retired: Counter[str] = Counter()  # adapter cache counts of evicted bases
        self.pool: ModelPool[EncoderModel] = ModelPool(
            limits.base_model_bytes,
            lambda s: EncoderModel(s, limits),
            lambda m: m.nbytes,
            lambda m: self._retired.update(m.adapters.counts),
        )
        self._batcher = MicroBatcher(limits, self.pool)

    async def embed(
        self,
        base: BaseSpec,
        adapter: AdapterSpec | None,
        texts: list[str],
        *,
        truncate: bool = False,
        tenant: str = "",
    ) -> EncodeResult:
        """`tenant` is the fairness key: rows are batched in turn across keys (engine/fairness.py)."""
        out, tokens, ns = await self._run(base, adapter, texts, truncate, "embed", tenant)
        return EncodeResult(embeddings=out.numpy().astype(np.float32), tokens=tokens, compute_ns=ns)

    async def classify(
        self,
        base: BaseSpec,
        adapter: AdapterSpec,
        texts: list[str],
        *,
        truncate: bool = False,
        tenant: str = "",
    ) -> ClassifyResult:
        out, tokens, ns = await self._run(base, adapter, texts, truncate, "classify", tenant)
        head = await asyncio.to_thread(self._head_labels, base, adapter)
        probs = [dict(zip(head, map(float, row), strict=True)) for row in out.tolist()]
        labels = [head[i] for i in out.argmax(dim=1).tolist()]
        return ClassifyResult(labels=labels, probs=probs, tokens=tokens, compute_ns=ns)

    def stats(self) -> dict[str, float]:
        s = dict(self._batcher.stats)
        s["queue_depth"] = float(self._batcher.queue_depth())
        s["base_loads"] = float(self.pool.loads)
        s["base_evictions"] = float(self.pool.evictions)
        s["memory_trims"] = float(self._batcher.trims)
        counts = self._retired + sum((m.adapters.counts for m in self.pool.models()), Counter[str]())
        s.update({k: float(v) for k, v in counts.items()})
        return s

    def unready(self) -> str | None:
        """Why this engine cannot serve (never, in process: its worker is a thread of ours)."""
        return None

    def close(self) -> None:
        self._batcher.close()
        self.pool.close()

    async def _run(
        self,
        base: BaseSpec,
        adapter: AdapterSpec | None,
        texts: list[str],
        truncate: bool,
        kind: Kind,
        tenant: str,
    ) -> tuple[torch.Tensor, list[int], int]:
        texts = check_items(texts, self.limits, truncate=truncate)
        prepared = self._prepare_inline(base, adapter, texts, truncate, kind)
        if prepared is None:
            prepared = await asyncio.to_thread(self._prepare, base, adapter, texts, truncate, kind)
        ids, lengths = prepared
        from constellation.engine.batcher import Job

        loop = asyncio.get_running_loop()
        job = Job(base, adapter, kind, ids, loop, loop.create_future(), tenant=tenant)
        self._batcher.submit(job, lengths)
        out, ns = await job.future
        return out, [len(x) for x in ids], ns

    def _prepare(
        self, base: BaseSpec, adapter: AdapterSpec | None, texts: list[str], truncate: bool, kind: Kind
    ) -> tuple[list[list[int]], list[int]]:
        """Tokenise and load the adapter into host memory, off the worker and off the event loop."""
        with self.pool.use(base) as model:
            return self._prepare_on(model, adapter, texts, truncate, kind)

    @staticmethod
    def _prepare_on(
        model: EncoderModel, adapter: AdapterSpec | None, texts: list[str], truncate: bool, kind: Kind
    ) -> tuple[list[list[int]], list[int]]:
        ids = model.tokenize(texts, truncate=truncate)
        if adapter is not None:
            loaded = model.adapters.prefetch(adapter)
            if kind == "classify" and loaded.head is None:
                raise InvalidInput(
                    f"model {adapter.name!r} has no classification head; use /v1/embeddings for it"
                )
        return ids, [model.padded_length(len(x)) for x in ids]

    def _prepare_inline(
        self, base: BaseSpec, adapter: AdapterSpec | None, texts: list[str], truncate: bool, kind: Kind
    ) -> tuple[list[list[int]], list[int]] | None:
        """`_prepare` on the calling thread when nothing needs loading and the text is short:
        tokenising a sentence takes less than the hop to a worker thread and back. None: hop."""
        if sum(map(len, texts)) > INLINE_CHARS:
            return None
        model = self.pool.try_acquire(base)
        if model is None:
            return None
        try:
            if adapter is not None and model.adapters.in_host(adapter) is None:
                return None
            return self._prepare_on(model, adapter, texts, truncate, kind)
        finally:
            self.pool.release(base.name)

    def _head_labels(self, base: BaseSpec, adapter: AdapterSpec) -> tuple[str, ...]:
        with self.pool.use(base) as model:
            loaded = model.adapters.prefetch(adapter)
            assert loaded.head is not None
            return loaded.head.labels
