"""Layers shared by the causal-LM families: RMSNorm, rotary embeddings, paged attention, and
the packed step every forward takes (`StepInput`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from constellation.engine.decoder.kvcache import KVCache
from constellation.engine.models.config import LMConfig


@dataclass(slots=True)
class StepInput:
    """One engine step, packed: T new tokens from B sequences (prefill chunks and decodes)."""

    tokens: Tensor  # [T] token ids
    positions: Tensor  # [T] absolute positions
    kv_index: Tensor  # [T] flat KV-cache index each new token is written to
    block_tables: Tensor  # [B, max_blocks] cache blocks of each sequence (padded with 0)
    q_index: Tensor  # [B, N] packed row of each sequence's n-th new token (padded with 0)
    q_valid: Tensor  # [B, N] which entries of q_index are real
    mask: Tensor  # [B, 1, N, L] key j visible to query n
    logits_rows: Tensor  # [R] packed rows whose next-token logits are wanted

    def to(self, device: torch.device) -> StepInput:
        """The same step on `device` (built on the host; copied without waiting on the host)."""
        if device.type == "cpu":
            return self
        return StepInput(*(getattr(self, f.name).to(device, non_blocking=True) for f in fields(self)))


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def rope_tables(cfg: LMConfig) -> tuple[Tensor, Tensor]:
    """cos/sin [max_positions, head_dim] in HF's rotate-half layout."""
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float32) / cfg.head_dim))
    freqs = torch.outer(torch.arange(cfg.max_positions, dtype=torch.float32), inv)  # [P, D/2]
    emb = torch.cat([freqs, freqs], dim=-1)  # [P, D]
    return emb.cos(), emb.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x: [T, H, D]; cos/sin: [T, D]."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos[:, None] + rotated * sin[:, None]


def paged_attention(q: Tensor, k: Tensor, v: Tensor, kv: KVCache, layer: int, step: StepInput) -> Tensor:
    """Write this step's k/v into the cache, then attend over each sequence's cached prefix.

    q: [T, H, D], k/v: [T, Hkv, D] -> [T, H*D]."""
    kv.write(layer, k, v, step.kv_index)
    keys, values = kv.gather(layer, step.block_tables, step.mask.shape[-1])  # [B, Hkv, L, D]
    qb = q[step.q_index].transpose(1, 2)  # [B, H, N, D]
    out = F.scaled_dot_product_attention(qb, keys, values, attn_mask=step.mask, enable_gqa=True)
    out = out.transpose(1, 2)  # [B, N, H, D]
    return out[step.q_valid].flatten(1)  # [T, H*D], packed order
