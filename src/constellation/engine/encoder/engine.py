"""The encoder's async interface: embeddings and classification, tokenised off the worker and
micro-batched on it (encoder/batcher.py).
"""

from __future__ import annotations

import asyncio
from collections import Counter

import numpy as np
import torch

from constellation.config import EngineLimits
from constellation.engine.bounds import check_items
from constellation.engine.encoder.batcher import EncoderRequest, MicroBatcher
from constellation.engine.encoder.interface import ClassifyResult, EncodeResult, Op
from constellation.engine.encoder.model import EncoderModel
from constellation.engine.model_cache import ModelCache
from constellation.engine.spec import AdapterSpec, BaseSpec
from constellation.errors import InvalidInput

INLINE_CHARS = 2_000  # requests up to this many characters are tokenised on the event loop


class EncoderEngine:
    """Async, thread-safe facade: embeddings and classification, micro-batched on one worker."""

    def __init__(self, limits: EngineLimits) -> None:
        self.limits = limits
        self._retired: Counter[str] = Counter()  # adapter cache counts of evicted bases
        self.model_cache: ModelCache[EncoderModel] = ModelCache(
            limits.base_model_bytes,
            lambda s: EncoderModel(s, limits),
            lambda m: m.nbytes,
            lambda m: self._retired.update(m.adapters.counts),
        )
        self._batcher = MicroBatcher(limits, self.model_cache)

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
        s["base_loads"] = float(self.model_cache.loads)
        s["base_evictions"] = float(self.model_cache.evictions)
        s["memory_trims"] = float(self._batcher.trims)
        counts = self._retired + sum((m.adapters.counts for m in self.model_cache.models()), Counter[str]())
        s.update({k: float(v) for k, v in counts.items()})
        return s

    def unready(self) -> str | None:
        """Why this engine cannot serve (never, in process: its worker is a thread of ours)."""
        return None

    def close(self) -> None:
        self._batcher.close()
        self.model_cache.close()

    async def _run(
        self,
        base: BaseSpec,
        adapter: AdapterSpec | None,
        texts: list[str],
        truncate: bool,
        op: Op,
        tenant: str,
    ) -> tuple[torch.Tensor, list[int], int]:
        texts = check_items(texts, self.limits, truncate=truncate)
        tokenized = self._tokenize_inline(base, adapter, texts, truncate, op)
        if tokenized is None:
            tokenized = await asyncio.to_thread(self._tokenize, base, adapter, texts, truncate, op)
        ids, lengths = tokenized
        loop = asyncio.get_running_loop()
        request = EncoderRequest(base, adapter, op, ids, loop, loop.create_future(), tenant=tenant)
        self._batcher.submit(request, lengths)
        out, ns = await request.future
        return out, [len(x) for x in ids], ns

    def _tokenize(
        self, base: BaseSpec, adapter: AdapterSpec | None, texts: list[str], truncate: bool, op: Op
    ) -> tuple[list[list[int]], list[int]]:
        """Tokenise and load the adapter into host memory, off the worker and off the event loop."""
        with self.model_cache.use(base) as model:
            return self._tokenize_on(model, adapter, texts, truncate, op)

    @staticmethod
    def _tokenize_on(
        model: EncoderModel, adapter: AdapterSpec | None, texts: list[str], truncate: bool, op: Op
    ) -> tuple[list[list[int]], list[int]]:
        ids = model.tokenize(texts, truncate=truncate)
        if adapter is not None:
            loaded = model.adapters.prefetch(adapter)
            if op == "classify" and loaded.head is None:
                raise InvalidInput(
                    f"model {adapter.name!r} has no classification head; use /v1/embeddings for it"
                )
        return ids, [model.padded_length(len(x)) for x in ids]

    def _tokenize_inline(
        self, base: BaseSpec, adapter: AdapterSpec | None, texts: list[str], truncate: bool, op: Op
    ) -> tuple[list[list[int]], list[int]] | None:
        """`_tokenize` on the calling thread when nothing needs loading and the text is short:
        tokenising a sentence takes less than the hop to a worker thread and back. None: hop."""
        if sum(map(len, texts)) > INLINE_CHARS:
            return None
        model = self.model_cache.try_acquire(base)
        if model is None:
            return None
        try:
            if adapter is not None and model.adapters.in_host(adapter) is None:
                return None
            return self._tokenize_on(model, adapter, texts, truncate, op)
        finally:
            self.model_cache.release(base.name)

    def _head_labels(self, base: BaseSpec, adapter: AdapterSpec) -> tuple[str, ...]:
        with self.model_cache.use(base) as model:
            loaded = model.adapters.prefetch(adapter)
            assert loaded.head is not None
            return loaded.head.labels
