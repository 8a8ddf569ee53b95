"""Default LoRA target modules per model family: the attention projections, which the engine's
multi-LoRA layers serve; callers may pass other names explicitly."""

from __future__ import annotations

from constellation.errors import InvalidInput

_TARGETS: dict[str, tuple[str, ...]] = {
    # Encoders: self-attention projections (the pooler and MLP stay frozen).
    "bert": ("query", "key", "value"),
    "roberta": ("query", "key", "value"),
    "xlm-roberta": ("query", "key", "value"),
    "mpnet": ("q", "k", "v"),
    # Decoders.
    "llama": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "mistral": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "qwen2": ("q_proj", "k_proj", "v_proj", "o_proj"),
    # GPT-2 fuses q, k, v into one Conv1D (PEFT handles its transposed weight).
    "gpt2": ("c_attn",),
}


def default_targets(model_type: str) -> tuple[str, ...]:
    """Target module names for a family; refuse unknown families with what to pass instead."""
    if model_type not in _TARGETS:
        raise InvalidInput(
            f"no default LoRA target modules for model type {model_type!r}; pass target_modules "
            f"(known families: {sorted(_TARGETS)})",
            param="target_modules",
        )
    return _TARGETS[model_type]
