"""Compact causal-LM forwards (Llama/Mistral/Qwen2 and GPT-2) over a paged KV cache.

Module names mirror Hugging Face's so checkpoints and PEFT adapters map onto them unchanged.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn

from constellation.engine.kvcache import KVCache
from constellation.errors import InvalidInput

LLAMA_LIKE = {"llama", "mistral", "qwen2"}
GPT2_CONV1D = (".c_attn.weight", ".c_proj.weight", ".c_fc.weight")


@dataclass(frozen=True, slots=True)
class LMConfig:
    """What the forward needs from an HF `config.json`, normalised across families."""

    family: str  # "llama" (also Mistral, Qwen2) or "gpt2"
    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn_dim: int
    max_positions: int
    norm_eps: float
    rope_theta: float = 10000.0
    qkv_bias: bool = False
    sliding_window: int | None = None
    tie_embeddings: bool = False
    eos_ids: tuple[int, ...] = ()
    dtype: str = "float32"  # what the checkpoint declares (`torch_dtype`, or `dtype` since transformers 5)

    @classmethod
    def from_hf(cls, cfg: dict[str, Any]) -> LMConfig:
        kind = cfg.get("model_type", "")
        eos = cfg.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (int(eos),))
        dtype = str(cfg.get("dtype") or cfg.get("torch_dtype") or "float32")
        if kind == "gpt2":
            d = cfg["n_embd"]
            return cls(
                "gpt2", cfg["vocab_size"], d, cfg["n_layer"], cfg["n_head"], cfg["n_head"],
                d // cfg["n_head"], cfg.get("n_inner") or 4 * d, cfg["n_positions"],
                cfg.get("layer_norm_epsilon", 1e-5), tie_embeddings=True, eos_ids=eos_ids, dtype=dtype,
            )  # fmt: skip
        if kind not in LLAMA_LIKE:
            raise InvalidInput(
                f"model_type {kind!r} is not a supported causal LM; use a Llama, Mistral, Qwen2 "
                "or GPT-2 family checkpoint"
            )
        return cls._llama_like(kind, cfg, eos_ids, dtype)

    @classmethod
    def _llama_like(cls, kind: str, cfg: dict[str, Any], eos_ids: tuple[int, ...], dtype: str) -> LMConfig:
        rope = cfg.get("rope_parameters") or {}
        if rope.get("rope_type", "default") != "default" or cfg.get("rope_scaling"):
            raise InvalidInput("RoPE scaling is not supported; serve a checkpoint with default RoPE")
        heads = cfg["num_attention_heads"]
        window = cfg.get("sliding_window")
        if kind == "qwen2" and not cfg.get("use_sliding_window", False):
            window = None
        return cls(
            "llama", cfg["vocab_size"], cfg["hidden_size"], cfg["num_hidden_layers"], heads,
            cfg.get("num_key_value_heads") or heads,
            cfg.get("head_dim") or cfg["hidden_size"] // heads, cfg["intermediate_size"],
            cfg["max_position_embeddings"], cfg.get("rms_norm_eps", 1e-6),
            rope_theta=rope.get("rope_theta", cfg.get("rope_theta", 10000.0)),
            qkv_bias=kind == "qwen2", sliding_window=window,
            tie_embeddings=bool(cfg.get("tie_word_embeddings", False)), eos_ids=eos_ids, dtype=dtype,
        )  # fmt: skip


@dataclass(slots=True)
class StepInput:
    """One engine step, packed: T new tokens from B sequences (prefill chunks and decodes)."""

    tokens: Tensor  # [T] token ids
    positions: Tensor  # [T] absolute positions
    slot_mapping: Tensor  # [T] flat KV-cache slot each new token is written to
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
    kv.write(layer, k, v, step.slot_mapping)
    keys, values = kv.gather(layer, step.block_tables, step.mask.shape[-1])  # [B, Hkv, L, D]
    qb = q[step.q_index].transpose(1, 2)  # [B, H, N, D]
    out = F.scaled_dot_product_attention(qb, keys, values, attn_mask=step.mask, enable_gqa=True)
    out = out.transpose(1, 2)  # [B, N, H, D]
    return out[step.q_valid].flatten(1)  # [T, H*D], packed order


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
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(LlamaBlock(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)


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


class CausalLM(nn.Module):
    """Either family behind one `forward(step, kv) -> logits [R, vocab]`."""

    def __init__(self, cfg: LMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        if cfg.family == "gpt2":
            self.transformer = GPT2Model(cfg)
        else:
            self.model = LlamaModel(cfg)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        self.rope: tuple[Tensor, Tensor] | None = None

    @torch.inference_mode()
    def forward(self, step: StepInput, kv: KVCache) -> Tensor:
        if self.cfg.family == "gpt2":
            h = self._gpt2_hidden(step, kv)
        else:
            h = self._llama_hidden(step, kv)
        return self.lm_head(h[step.logits_rows]).float()  # [R, V]

    def _llama_hidden(self, step: StepInput, kv: KVCache) -> Tensor:
        if self.rope is None:
            cos, sin = rope_tables(self.cfg)
            device = self.lm_head.weight.device
            self.rope = (cos.to(device), sin.to(device))
        cos, sin = self.rope
        dtype = self.lm_head.weight.dtype
        rope = (cos[step.positions].to(dtype), sin[step.positions].to(dtype))  # [T, D] each
        x = self.model.embed_tokens(step.tokens)  # [T, dim]
        for block in self.model.layers:
            x = block(x, rope, kv, step)
        return self.model.norm(x)

    def _gpt2_hidden(self, step: StepInput, kv: KVCache) -> Tensor:
        t = self.transformer
        x = t.wte(step.tokens) + t.wpe(step.positions)  # [T, dim]
        for block in t.h:
            x = block(x, kv, step)
        return t.ln_f(x)


def _read_weights(path: Path) -> dict[str, Tensor]:
    if (path / "model.safetensors").is_file():
        return load_file(path / "model.safetensors")
    index = path / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return {k: v for shard in shards for k, v in load_file(path / shard).items()}
    raise InvalidInput(
        f"no model.safetensors in {path}; convert the checkpoint to safetensors (pickle .bin is refused)"
    )


def _normalise_keys(cfg: LMConfig, sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """HF names -> ours: GPT-2 Conv1D weights transposed to Linear, tied heads filled in."""
    if cfg.family == "gpt2":
        sd = {
            (k if k.startswith(("transformer.", "lm_head")) else f"transformer.{k}"): v for k, v in sd.items()
        }
        sd = {k: v for k, v in sd.items() if not k.endswith((".attn.bias", ".attn.masked_bias"))}
        sd = {k: (v.t().contiguous() if k.endswith(GPT2_CONV1D) else v) for k, v in sd.items()}
    if "lm_head.weight" not in sd:
        if not cfg.tie_embeddings and cfg.family != "gpt2":
            raise InvalidInput("checkpoint has no lm_head.weight and does not tie embeddings")
        embed = "transformer.wte.weight" if cfg.family == "gpt2" else "model.embed_tokens.weight"
        sd["lm_head.weight"] = sd[embed]
    return sd


@functools.cache
def native_bf16(device: torch.device | str) -> bool:
    """Whether bf16 GEMMs run natively here: a GPU that supports them, or a CPU whose oneDNN
    can use AVX512-BF16 or AMX instructions (elsewhere oneDNN emulates bf16, slower than fp32)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    try:
        flags = next(ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags"))
    except (OSError, StopIteration):
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(flags.split()))


def serving_dtype(cfg: LMConfig, device: torch.device | str) -> torch.dtype:
    """The dtype a checkpoint is served in: bf16 where it declares bf16 and the device runs bf16
    natively (decode reads every weight once per step, so half the bytes is faster; emulated
    bf16 is slower than fp32), fp32 otherwise (fp16 included: CPUs have no fast fp16 GEMM).
    docs/decisions.md has the measurements."""
    return torch.bfloat16 if cfg.dtype == "bfloat16" and native_bf16(device) else torch.float32


def load_causal_lm(path: Path, dtype: torch.dtype | None = None) -> CausalLM:
    """Build the forward for a local HF checkpoint dir; weights cast to `dtype` (default: what
    `serving_dtype` picks for a CPU)."""
    cfg = LMConfig.from_hf(json.loads((path / "config.json").read_text()))
    dtype = dtype or serving_dtype(cfg, "cpu")
    with torch.device("meta"):
        model = CausalLM(cfg)
    sd = {k: v.to(dtype) for k, v in _normalise_keys(cfg, _read_weights(path)).items()}
    model.load_state_dict(sd, strict=True, assign=True)
    return model.eval()


def read_config(path: Path) -> LMConfig:
    return LMConfig.from_hf(json.loads((path / "config.json").read_text()))
