"""Random causal-LM checkpoints and LoRA adapters in Hugging Face format, built locally.

Tests, benchmarks and the demo use them: nothing is downloaded, every family is covered.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

_TEXT = (
    "the a an and or but if then so because cat dog bird fish tree river stone cloud sun moon "
    "star rain snow wind fire water earth light dark red blue green gold small big old new fast "
    "slow happy sad good bad run walk swim fly sing read write see hear make take give find "
    "keep think know say go come sit stand sleep eat drink play work rest home road city sea "
    "hill field . , ! ? hello yes no stop end"
)
WORDS = tuple(_TEXT.split())
SPECIALS = ("<unk>", "<pad>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>")
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
LORA_TARGETS = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
}


def save_toy_tokenizer(path: Path, extra_words: int = 0, *, byte_level: bool = False) -> int:
    """A whitespace WordLevel tokenizer with a chat template; returns the vocabulary size.

    `byte_level`: a GPT-2-style byte-level BPE instead (the 256 bytes, no merges), which can
    spell any text, JSON included, as a grammar engine needs."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    if byte_level:
        alphabet = pre_tokenizers.ByteLevel.alphabet()
        words = [*SPECIALS, *sorted(alphabet)]
        tok = Tokenizer(models.BPE({w: i for i, w in enumerate(words)}, [], unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
    else:
        words = [*SPECIALS, *WORDS, *(f"w{i}" for i in range(extra_words))]
        tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(path))
    return len(words)


def hf_config(
    family: str, vocab: int, *, dim: int = 32, layers: int = 2, heads: int = 4, ctx: int = 128
) -> Any:
    """A transformers config of `family` (llama, mistral, qwen2, gpt2) with small sizes."""
    from transformers import GPT2Config, LlamaConfig, MistralConfig, Qwen2Config

    ids: dict[str, Any] = {"bos_token_id": 2, "eos_token_id": 3, "pad_token_id": 1}
    if family == "gpt2":
        return GPT2Config(vocab_size=vocab, n_embd=dim, n_layer=layers, n_head=heads, n_positions=ctx, **ids)
    cls = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config}[family]
    return cls(
        vocab_size=vocab, hidden_size=dim, intermediate_size=dim * 2 + dim // 2 * 2,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=max(1, heads // 2),
        max_position_embeddings=ctx, tie_word_embeddings=family == "qwen2", **ids,
    )  # fmt: skip


def save_random_lm(
    path: Path, family: str, *, seed: int = 0, extra_words: int = 0, byte_level: bool = False, **sizes: int
) -> Path:
    """Write config.json + model.safetensors + tokenizer for a random model of `family`."""
    from transformers import AutoModelForCausalLM

    vocab = save_toy_tokenizer(path, extra_words, byte_level=byte_level)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(hf_config(family, vocab, **sizes))
    with torch.no_grad():  # larger weights than HF's init, so greedy tokens are well separated
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.15 if "embed" in name or "wte" in name or "wpe" in name else 0.08)
            if p.dim() == 1 and "bias" in name:
                p.normal_(0.0, 0.02)
    model.save_pretrained(str(path))
    model.generation_config.save_pretrained(str(path))
    return path


def save_random_adapter(base: Path, out: Path, *, rank: int, seed: int, std: float = 0.1) -> Path:
    """Write a PEFT LoRA adapter with random (non-zero) A and B for the model at `base`."""
    return save_random_adapters(base, {out: seed}, rank=rank, std=std)[0]


def save_random_adapters(base: Path, seeds: dict[Path, int], *, rank: int, std: float = 0.1) -> list[Path]:
    """Write one random adapter per `{out_dir: seed}`, loading the base once for all of them."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    family = "gpt2" if model.config.model_type == "gpt2" else "llama"
    cfg = LoraConfig(
        r=rank, lora_alpha=2 * rank, target_modules=LORA_TARGETS[family], fan_in_fan_out=family == "gpt2"
    )
    peft_model = get_peft_model(model, cfg)
    for out, seed in seeds.items():
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in peft_model.named_parameters():
                if "lora_" in name:
                    p.copy_(torch.randn(p.shape, generator=gen) * std)
        peft_model.save_pretrained(str(out))
    return list(seeds)
