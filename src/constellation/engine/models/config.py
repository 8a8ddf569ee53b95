"""A causal LM's shape, read from its Hugging Face `config.json` and normalised across families.

Every module under models/ builds its layers from an `LMConfig`; nothing else reads config.json.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def read_config(path: Path) -> LMConfig:
    return LMConfig.from_hf(json.loads((path / "config.json").read_text()))
