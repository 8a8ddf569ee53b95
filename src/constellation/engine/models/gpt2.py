"""The GPT-2 family: learned positions, LayerNorm, fused qkv, GELU MLP.

Module names mirror Hugging Face's `GPT2Model`; its Conv1D weights are transposed on load.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from constellation.engine.decoder.kvcache import KVCache
from constellation.engine.models.config import LMConfig
from constellation.engine.models.layers import StepInput, paged_attention

CONV1D = (".c_attn.weight", ".c_proj.weight", ".c_fc.weight")


class GPT2Attention(nn.Module):
    def __init__(self, cfg: LMConfig, layer: int) -> None:
        super().__init__()
        self.cfg, self.layer = cfg, layer
        self.c_attn = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.c_proj = nn.Linear(cfg.dim, cfg.dim)

    def forward(self, x: Tensor, kv: KVCache, step: StepInput) -> Tensor:
        c = self.cfg
        qkv = self.c_attn(x).view(-1, 3, c.n_heads, c.head_dim)  # [T, 3, H, D]
        q, k, v = qkv.unbind(1)
        return self.c_proj(paged_attention(q, k, v, kv, self.layer, step))


class GPT2MLP(nn.Module):
    def __init__(self, cfg: LMConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(cfg.dim, cfg.ffn_dim)
        self.c_proj = nn.Linear(cfg.ffn_dim, cfg.dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class GPT2Block(nn.Module):
    def __init__(self, cfg: LMConfig, layer: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.attn = GPT2Attention(cfg, layer)
        self.ln_2 = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.mlp = GPT2MLP(cfg)

    def forward(self, x: Tensor, kv: KVCache, step: StepInput) -> Tensor:
        x = x + self.attn(self.ln_1(x), kv, step)
        return x + self.mlp(self.ln_2(x))


class GPT2Model(nn.Module):
    def __init__(self, cfg: LMConfig) -> None:
        super().__init__()
        self.wte = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.wpe = nn.Embedding(cfg.max_positions, cfg.dim)
        self.h = nn.ModuleList(GPT2Block(cfg, i) for i in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)

    def forward(self, step: StepInput, kv: KVCache) -> Tensor:
        """Hidden states [T, dim] of the step's packed tokens."""
        x = self.wte(step.tokens) + self.wpe(step.positions)  # [T, dim]
        for block in self.h:
            x = block(x, kv, step)
        return self.ln_f(x)


def hf_keys(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """HF's GPT-2 names -> ours: prefixed `transformer.`, Conv1D weights transposed to Linear."""
    sd = {(k if k.startswith(("transformer.", "lm_head")) else f"transformer.{k}"): v for k, v in sd.items()}
    sd = {k: v for k, v in sd.items() if not k.endswith((".attn.bias", ".attn.masked_bias"))}
    return {k: (v.t().contiguous() if k.endswith(CONV1D) else v) for k, v in sd.items()}
