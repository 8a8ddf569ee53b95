"""Classification objective: LoRA on the base encoder plus a linear head on its pooled embedding.

The head format (classifier_head.safetensors/json) is the serving contract with the encoder engine.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import peft
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from transformers import AutoModel, AutoTokenizer

from constellation.engine.pooling import pool, read_pooling
from constellation.finetune.data import Example, TextExample
from constellation.finetune.targets import default_targets

HEAD_WEIGHTS = "classifier_head.safetensors"
HEAD_META = "classifier_head.json"
Encoded = tuple[list[int], int]  # (token ids, label index)


class ClassificationObjective:
    """Owns the PEFT-wrapped encoder and the head; turns batches of examples into a loss."""

    def __init__(
        self,
        base_dir: Path,
        labels: Sequence[str],
        *,
        rank: int,
        alpha: int,
        targets: Sequence[str] | None,
        dropout: float,
    ) -> None:
        self.labels = tuple(labels)
        self.tokenizer = AutoTokenizer.from_pretrained(base_dir)
        encoder = AutoModel.from_pretrained(base_dir, use_safetensors=True, dtype=torch.float32)
        lora = peft.LoraConfig(
            r=rank,
            lora_alpha=alpha,
            lora_dropout=dropout,
            target_modules=list(targets or default_targets(encoder.config.model_type)),
            bias="none",
        )
        self.encoder = peft.get_peft_model(encoder, lora)
        self.head = nn.Linear(encoder.config.hidden_size, len(self.labels))
        self.pooling = read_pooling(base_dir).mode
        self.module: nn.Module = nn.ModuleDict({"encoder": self.encoder, "head": self.head})

    def param_groups(self, lr: float, head_lr: float) -> list[dict[str, object]]:
        lora = [p for p in self.encoder.parameters() if p.requires_grad]
        return [{"params": lora, "lr": lr}, {"params": list(self.head.parameters()), "lr": head_lr}]

    def encode(self, examples: Sequence[Example], max_length: int) -> list[Encoded]:
        index = {label: i for i, label in enumerate(self.labels)}
        texts = [ex.text for ex in examples if isinstance(ex, TextExample)]
        ids = self.tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
        return [(row, index[ex.label]) for row, ex in zip(ids, examples, strict=True)]  # type: ignore[union-attr]

    def _logits(self, batch: Sequence[Encoded]) -> tuple[Tensor, Tensor]:
        padded = self.tokenizer.pad({"input_ids": [ids for ids, _ in batch]}, return_tensors="pt")
        h = self.encoder(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"])[0]
        logits = self.head(pool(h, padded["attention_mask"], self.pooling))  # [B, labels]
        return logits, torch.tensor([y for _, y in batch])

    def loss(self, batch: Sequence[Encoded]) -> Tensor:
        logits, y = self._logits(batch)
        return nn.functional.cross_entropy(logits, y)

    @torch.no_grad()
    def evaluate(self, batches: Sequence[Sequence[Encoded]]) -> dict[str, float]:
        total, correct, n = 0.0, 0, 0
        for batch in batches:
            logits, y = self._logits(batch)
            total += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(dim=-1) == y).sum())
            n += len(batch)
        return {"valid_loss": total / max(n, 1), "valid_accuracy": correct / max(n, 1)}

    def save(self, out_dir: Path) -> None:
        self.encoder.save_pretrained(str(out_dir), safe_serialization=True)
        weights = {"weight": self.head.weight.detach().contiguous(), "bias": self.head.bias.detach()}
        save_file(weights, str(out_dir / HEAD_WEIGHTS))  # weight [labels, hidden], bias [labels]
        meta = {"labels": list(self.labels), "pooling": "base"}
        (out_dir / HEAD_META).write_text(json.dumps(meta, indent=2) + "\n")


@torch.no_grad()
def predict(
    base_dir: Path, adapter_dir: Path, texts: Sequence[str], *, batch_size: int = 64, max_length: int = 128
) -> list[str]:
    """Reference classifier (plain PEFT, fp32) for a trained adapter dir: one label per text.
    Benchmarks and tests use it; serving goes through the engine."""
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    base = AutoModel.from_pretrained(base_dir, use_safetensors=True, dtype=torch.float32)
    model = peft.PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    head = load_file(str(adapter_dir / HEAD_WEIGHTS))
    labels = json.loads((adapter_dir / HEAD_META).read_text())["labels"]
    mode = read_pooling(base_dir).mode
    out: list[str] = []
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(
            list(texts[start : start + batch_size]),
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        h = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])[0]  # [B, S, H]
        logits = pool(h, enc["attention_mask"], mode) @ head["weight"].T + head["bias"]  # [B, labels]
        out += [labels[i] for i in logits.argmax(dim=-1).tolist()]
    return out
