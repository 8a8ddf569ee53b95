"""The Llama family (also Mistral and Qwen2): pre-norm blocks with RoPE, GQA and a SwiGLU MLP.

Module names mirror Hugging Face's `LlamaModel`, so checkpoints and PEFT adapters map unchanged.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from constellation.engine.decoder.kvcache import KVCache
from constellation.engine.models.config import LMConfig
from constellation.engine.models.layers import RMSNorm, StepInput, apply_rope, paged_attention, rope_tables


class LlamaAttention(nn.Module):
    def __init__(self, cfg: LMConfig, layer: int) -> None:
        super().__init__()
        self.cfg, self.layer = cfg, layer
        hd = cfg.head_dim
        self.q_proj = nn.Linear(cfg.dim, cfg.n_heads * hd, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(cfg.dim, cfg.n_kv_heads * hd, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(cfg.dim, cfg.n_kv_heads * hd, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(cfg.n_heads * hd, cfg.dim, bias=False)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor], kv: KVCache, step: StepInput) -> Tensor:
        c = self.cfg
        q = self.q_proj(x).view(-1, c.n_heads, c.head_dim)  # [T, H, D]
        k = self.k_proj(x).view(-1, c.n_kv_heads, c.head_dim)  # [T, Hkv, D]
        v = self.v_proj(x).view(-1, c.n_kv_heads, c.head_dim)
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        return self.o_proj(paged_attention(q, k, v, kv, self.layer, step))


class LlamaMLP(nn.Module):
    def __init__(self, cfg: LMConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)
        self.up_proj = nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)
        self.down_proj = nn.Linear(cfg.ffn_dim, cfg.dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaBlock(nn.Module):
    def __init__(self, cfg: LMConfig, layer: int) -> None:
        super().__init__()
        self.self_attn = LlamaAttention(cfg, layer)
        self.mlp = LlamaMLP(cfg)
        self.input_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor], kv: KVCache, step: StepInput) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), rope, kv, step)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Module):
    def __init__(self, cfg: LMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(LlamaBlock(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)

        self.rope: tuple[Tensor, Tensor] | None = None  # cos/sin tables, built on first use

    def forward(self, step: StepInput, kv: KVCache) -> Tensor:
        """Hidden states [T, dim] of the step's packed tokens."""
        w = self.embed_tokens.weight
        if self.rope is None:
            cos, sin = rope_tables(self.cfg)
            self.rope = (cos.to(w.device), sin.to(w.device))
        cos, sin = self.rope
        rope = (cos[step.positions].to(w.dtype), sin[step.positions].to(w.dtype))  # [T, D] each
        x = self.embed_tokens(step.tokens)  # [T, dim]
        for block in self.layers:
            x = block(x, rope, kv, step)
        return self.norm(x)
