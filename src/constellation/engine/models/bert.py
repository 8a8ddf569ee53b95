"""BERT's forward over packed tokens: every linear runs on the batch's real tokens only.

A padded batch of sequences of different lengths spends most of its work on the linear layers,
and on padding as much as on tokens when lengths differ. Here the tokens of all sequences are
packed into one [T, d] matrix for the linears (with multi-LoRA through `LoRAContext.set_padded`,
as the decoder does), and only attention -- a small part for sentence-length inputs -- sees a
padded [B, H, L, D] view. The modules and weights are the loaded Hugging Face `BertModel`'s own,
so outputs equal its padded forward to float rounding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from constellation.engine.lora.layer import LoRAContext

# Up to this padded length attention on a CPU runs as plain matmuls and softmax; past it, and
# on a GPU, as the fused kernel (its memory stays linear in the length).
SHORT_ATTENTION = 128


@dataclass(frozen=True, slots=True)
class Packing:
    """Where each sequence's tokens sit: packed [T] and in the padded [B * L] view."""

    tokens: Tensor  # [T] token ids
    positions: Tensor  # [T] position of each token in its sequence
    padded: Tensor  # [T] row of each token in the padded [B * L] view
    key_mask: Tensor  # [B, 1, 1, L] True where a key is a real token
    key_bias: Tensor  # [B, 1, 1, L] 0 where a key is a real token, -inf where it is padding
    batch: int  # B
    longest: int  # L
    dense: bool  # every sequence is `longest` long: the packed rows are the padded view

    @classmethod
    def of(cls, ids: list[list[int]], device: torch.device) -> Packing:
        lengths = [len(x) for x in ids]
        longest = max(lengths)
        positions = [p for n in lengths for p in range(n)]
        seq = [b for b, n in enumerate(lengths) for _ in range(n)]
        padded = [b * longest + p for b, p in zip(seq, positions, strict=True)]
        n = torch.tensor(lengths)
        mask = (torch.arange(longest)[None, :] < n[:, None])[:, None, None, :]  # [B, 1, 1, L]
        bias = torch.zeros(mask.shape).masked_fill_(~mask, float("-inf"))

        def dev(t: Tensor) -> Tensor:
            return t.to(device, non_blocking=True)

        return cls(
            tokens=dev(torch.tensor([t for x in ids for t in x])), positions=dev(torch.tensor(positions)),
            padded=dev(torch.tensor(padded)), key_mask=dev(mask), key_bias=dev(bias), batch=len(ids),
            longest=longest,
            dense=min(lengths) == longest,
        )  # fmt: skip


def supports(model: nn.Module) -> bool:
    """A plain BERT with absolute positions: what this forward reproduces exactly."""
    cfg = getattr(model, "config", None)
    return (
        cfg is not None
        and cfg.model_type == "bert"
        and getattr(cfg, "position_embedding_type", "absolute") == "absolute"
        and not getattr(cfg, "is_decoder", False)
    )


@torch.inference_mode()
def packed_forward(model: Any, ctx: LoRAContext, ids: list[list[int]], slots: list[int]) -> Tensor:
    """Final hidden states of every real token, packed [T, d]; sequence b uses adapter `slots[b]`."""
    pk = Packing.of(ids, next(model.parameters()).device)
    ctx.set_padded([s for s, x in zip(slots, ids, strict=True) for _ in x])
    try:
        emb = model.embeddings
        x = emb.word_embeddings(pk.tokens) + emb.position_embeddings(pk.positions)
        x = emb.LayerNorm(x + emb.token_type_embeddings.weight[0])  # [T, d]; token type 0 throughout
        for layer in model.encoder.layer:
            x = _layer(layer, x, pk)
    finally:
        ctx.clear_mapping()
    return x


def _layer(layer: Any, x: Tensor, pk: Packing) -> Tensor:
    att = layer.attention
    sa = att.self
    heads, head_dim = sa.num_attention_heads, sa.attention_head_size
    b, n = pk.batch, pk.longest

    def padded(t: Tensor) -> Tensor:  # [T, H*D] -> [B, H, L, D]
        if pk.dense:
            return t.view(b, n, heads, head_dim).transpose(1, 2)
        # index_copy_ moves whole rows (a memcpy each); advanced-index assignment is far slower.
        out = t.new_zeros(b * n, t.shape[1]).index_copy_(0, pk.padded, t)
        return out.view(b, n, heads, head_dim).transpose(1, 2)

    q, k, v = padded(sa.query(x)), padded(sa.key(x)), padded(sa.value(x))
    if n <= SHORT_ATTENTION and x.device.type == "cpu":
        # Plain softmax(q k^T / sqrt(D) + mask) v: for sentence lengths, about twice as fast on
        # a CPU as the fused kernel, which is built for long sequences (on a GPU it is not).
        scores = torch.matmul(q, k.transpose(-1, -2)).mul_(head_dim**-0.5)  # [B, H, L, L]
        if not pk.dense:
            scores.add_(pk.key_bias)
        ctx = torch.matmul(scores.softmax(-1), v)  # [B, H, L, D]
    else:  # the fused kernel never holds the [B, H, L, L] scores
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=None if pk.dense else pk.key_mask)
    ctx = ctx.transpose(1, 2).reshape(b * n, heads * head_dim)  # [B * L, H*D]
    if not pk.dense:
        ctx = ctx.index_select(0, pk.padded)  # [T, H*D]
    x = att.output.LayerNorm(att.output.dense(ctx) + x)
    h = layer.intermediate.intermediate_act_fn(layer.intermediate.dense(x))
    return layer.output.LayerNorm(layer.output.dense(h) + x)
