"""Random BERT checkpoints in Hugging Face format, built locally for tests and benchmarks.

One builder for every tiny BERT: the sizes are arguments, MiniLM's tokenizer is copied when asked.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def tiny_bert_config(
    *,
    vocab: int = 30522,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 4,
    ffn: int | None = None,
    positions: int = 64,
) -> Any:
    """A `BertConfig` of these sizes (`ffn` defaults to 2 * hidden)."""
    from transformers import BertConfig

    return BertConfig(
        vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=ffn or 2 * hidden, max_position_embeddings=positions,
    )  # fmt: skip


def save_tiny_bert(
    path: Path,
    *,
    vocab: int = 30522,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 4,
    ffn: int | None = None,
    positions: int = 64,
    pooler: bool = True,
    seed: int | None = 0,
    tokenizer_from: Path | None = None,
) -> Path:
    """Save a random `BertModel` (`ffn` defaults to 2 * hidden) to `path`, with the tokenizer
    files of `tokenizer_from` when given. `seed` None: the caller's torch RNG state."""
    import torch
    from transformers import BertModel

    if seed is not None:
        torch.manual_seed(seed)
    config = tiny_bert_config(
        vocab=vocab, hidden=hidden, layers=layers, heads=heads, ffn=ffn, positions=positions
    )
    BertModel(config, add_pooling_layer=pooler).save_pretrained(path)
    if tokenizer_from is not None:
        for name in TOKENIZER_FILES:
            shutil.copy(tokenizer_from / name, path / name)
    return path
