"""Fixtures for engine tests: random PEFT adapters for tests/conftest.py's tiny random BERT, and
the reference (HF transformers + PEFT merged, fp32, one request at a time)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import save_file
from transformers import AutoTokenizer, BertModel

from constellation.engine.spec import AdapterSpec, BaseSpec

ALL_LINEARS = ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"]


def base_spec(path: Path, name: str = "tiny") -> BaseSpec:
    return BaseSpec(name=name, task="embedding", resolve=lambda: path, size_bytes=0)


def make_adapter(
    base: Path, out: Path, *, rank: int, seed: int, labels: tuple[str, ...] | None = None
) -> AdapterSpec:
    """A PEFT LoRA adapter with random, non-zero lora_B on every attention and MLP linear."""
    torch.manual_seed(seed)
    model = get_peft_model(
        BertModel.from_pretrained(base), LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=ALL_LINEARS)
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.05)
    model.save_pretrained(str(out))
    if labels is not None:
        hidden = model.config.hidden_size
        save_file(
            {"weight": torch.randn(len(labels), hidden), "bias": torch.randn(len(labels))},
            str(out / "classifier_head.safetensors"),
        )
        (out / "classifier_head.json").write_text(json.dumps({"labels": list(labels), "pooling": "base"}))
    return AdapterSpec(name=out.name, base="tiny", resolve=lambda: out, labels=labels)


Reference = Callable[[AdapterSpec | None, list[str]], torch.Tensor]


@pytest.fixture(scope="session")
def tiny_reference(tiny_bert: Path) -> Reference:
    """Pooled (pre-normalisation) embeddings from HF + PEFT merged, fp32, one text at a time."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    merged: dict[str, BertModel] = {}

    def model_for(adapter: AdapterSpec | None) -> BertModel:
        key = adapter.name if adapter else ""
        if key not in merged:
            base = BertModel.from_pretrained(tiny_bert, add_pooling_layer=False)
            m = PeftModel.from_pretrained(base, adapter.resolve()).merge_and_unload() if adapter else base
            merged[key] = m.eval()
        return merged[key]

    def pooled(adapter: AdapterSpec | None, texts: list[str]) -> torch.Tensor:
        model, rows = model_for(adapter), []
        with torch.no_grad():
            for text in texts:
                enc = tokenizer([text], return_tensors="pt")
                h = model(**enc).last_hidden_state  # [1, L, d]
                rows.append(h.mean(dim=1)[0])
        return torch.stack(rows)

    return pooled


def normalized(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, p=2, dim=1)
