"""BERT-family encoder bases with multi-LoRA layers: tokenise, forward, pool like sentence-transformers.

Embeddings follow the model's sentence-transformers config (pooling, normalisation, max length);
classification adapters apply their head to the pooled embedding before normalisation.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from transformers import AutoModel, AutoTokenizer

from constellation.artifacts.peft import ENCODER_WRAPPERS, encoder_target
from constellation.config import EngineLimits
from constellation.engine.bounds import cut_for_tokens, tokenize_bounded
from constellation.engine.lora.adapters import ClassifierHead
from constellation.engine.lora.cache import AdapterCache
from constellation.engine.lora.layer import NO_ADAPTER, LoRAContext, inject_lora
from constellation.engine.model_cache import module_bytes
from constellation.engine.models import bert
from constellation.engine.pooling import pool, pool_packed, read_pooling
from constellation.engine.spec import BaseSpec
from constellation.errors import InvalidInput

# Which linears adapters may target, and the wrapper prefixes they may carry: the PEFT rules.
_WRAPPERS = ENCODER_WRAPPERS
BUCKET = 16  # deterministic mode pads each sequence to a multiple of this, alone or batched
# What the packed path's LoRA layers (a matmul pair per adapter's run of tokens, per layer) cost
# beyond the padded path's one bmm pair for all adapters, in tokens of base compute: a share of
# the batch's tokens plus a cost per adapter. A batch with adapters packs when the padding it
# saves is larger. Fit to side-by-side timings of the two paths (docs/decisions.md has the fit
# and how often the rule picks the faster path). Without adapters the packed path is the faster
# whenever there is padding to save.
LORA_TOKEN_SHARE = 0.17
RUN_COST_TOKENS = 8


def _max_length(path: Path, tokenizer_max: int, positions: int) -> int:
    st = path / "sentence_bert_config.json"
    if st.is_file():
        return int(json.loads(st.read_text()).get("max_seq_length") or positions)
    return min(tokenizer_max, positions)


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
        self.packed = not limits.deterministic and bert.supports(model)
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
            h = bert.packed_forward(self.model, self.ctx, seqs, by_slot.tolist())  # [T, d]
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
