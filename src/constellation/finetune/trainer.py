"""Train one LoRA adapter (PEFT format) from validated examples: seeded, early-stopped, cancellable.

Writes into a temporary sibling of `out_dir` and renames it at the end, so a failed or cancelled
run leaves nothing behind. No registry here: the caller records the result.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from constellation.errors import ConstellationError, InvalidInput
from constellation.finetune.causal import CausalObjective
from constellation.finetune.classify import ClassificationObjective
from constellation.finetune.data import ChatExample, Example, FinetuneTask, PromptExample, TextExample


class TrainingCancelled(ConstellationError):
    """The caller's cancel event was set; nothing was written."""

    status = 409
    type = "invalid_request_error"
    code = "cancelled"


@dataclass(slots=True)
class LoraConfig:
    """Hyper-parameters; the defaults suit a few hundred short examples on a small base."""

    rank: int = 8
    alpha: int = 16
    target_modules: tuple[str, ...] | None = None  # None: per family, see targets.py
    epochs: int = 5
    lr: float = 1e-3
    head_lr: float = 1e-2  # the freshly initialised head learns faster than the LoRA factors
    batch_size: int = 16
    max_length: int = 128
    val_fraction: float = 0.2
    patience: int = 2  # epochs without a better validation loss before stopping
    dropout: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        checks = {
            "rank": self.rank >= 1,
            "alpha": self.alpha > 0,
            "epochs": self.epochs >= 1,
            "lr": self.lr > 0,
            "head_lr": self.head_lr > 0,
            "batch_size": self.batch_size >= 1,
            "max_length": self.max_length >= 2,
            "val_fraction": 0 < self.val_fraction < 1,
            "patience": self.patience >= 1,
            "dropout": 0 <= self.dropout < 1,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise InvalidInput(f"invalid fine-tuning settings {bad}: {self}", param=bad[0])


@dataclass(frozen=True, slots=True)
class Progress:
    """One optimisation step; `total` is the step count if no early stop happens."""

    step: int
    total: int
    epoch: int
    loss: float
    eta_s: float


@dataclass(frozen=True, slots=True)
class TrainResult:
    metrics: dict[str, float]
    labels: tuple[str, ...]
    n_train: int
    n_valid: int
    duration_s: float
    config: dict[str, Any] = field(default_factory=dict)


class _Objective(Protocol):
    @property
    def module(self) -> nn.Module: ...

    def param_groups(self, lr: float, head_lr: float) -> list[dict[str, Any]]: ...
    def encode(self, examples: Sequence[Example], max_length: int) -> list[Any]: ...
    def loss(self, batch: Sequence[Any]) -> Tensor: ...
    def evaluate(self, batches: Sequence[Sequence[Any]]) -> dict[str, float]: ...
    def save(self, out_dir: Path) -> None: ...


def _check_examples(task: FinetuneTask, examples: Sequence[Example], what: str) -> None:
    kinds = (TextExample,) if task == "classification" else (PromptExample, ChatExample)
    if not examples:
        raise InvalidInput(f"no {what} examples; pass at least one", param="data")
    if not all(isinstance(ex, kinds) for ex in examples):
        raise InvalidInput(
            f"{what} examples do not match task {task!r}; load them for that task", param="data"
        )


def split(examples: Sequence[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Seeded (train, valid) split, stratified by label for classification."""
    rng = random.Random(seed)
    groups: dict[str, list[Example]] = {}
    for ex in examples:
        groups.setdefault(ex.label if isinstance(ex, TextExample) else "", []).append(ex)
    train: list[Example] = []
    valid: list[Example] = []
    for key in sorted(groups):
        group = groups[key][:]
        rng.shuffle(group)
        k = int(len(group) * fraction) if len(group) > 1 else 0
        valid, train = valid + group[:k], train + group[k:]
    if not valid:  # tiny data: hold out one example so early stopping has a signal
        valid, train = train[-1:], train[:-1]
    return train, valid


def _objective(task: FinetuneTask, base_dir: Path, labels: Sequence[str], cfg: LoraConfig) -> _Objective:
    lora = {"rank": cfg.rank, "alpha": cfg.alpha, "dropout": cfg.dropout}
    targets = cfg.target_modules
    if task == "classification":
        return ClassificationObjective(base_dir, labels, targets=targets, **lora)  # type: ignore[arg-type]
    return CausalObjective(base_dir, targets=targets, **lora)  # type: ignore[arg-type]


def _batches(items: Sequence[Any], size: int, order: list[int] | None = None) -> list[list[Any]]:
    idx = order if order is not None else list(range(len(items)))
    return [[items[i] for i in idx[s : s + size]] for s in range(0, len(idx), size)]


class _Loop:
    """The optimisation loop: epochs of shuffled batches, validation after each, best kept."""

    def __init__(
        self,
        obj: _Objective,
        cfg: LoraConfig,
        progress: Callable[[Progress], None] | None,
        cancel: threading.Event | None,
    ) -> None:
        self.obj, self.cfg, self.progress, self.cancel = obj, cfg, progress, cancel
        self.params = [p for p in obj.module.parameters() if p.requires_grad]
        self.step, self.total, self.start = 0, 0, 0.0

    def _snapshot(self) -> list[Tensor]:
        return [p.detach().clone() for p in self.params]

    def _restore(self, state: list[Tensor]) -> None:
        with torch.no_grad():
            for p, saved in zip(self.params, state, strict=True):
                p.copy_(saved)

    def check_cancel(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise TrainingCancelled("fine-tuning was cancelled; nothing was written or registered")

    def run(self, train: list[Any], valid: list[Any]) -> dict[str, float]:
        """Train up to `epochs`, stop after `patience` epochs without a better validation loss,
        and leave the best epoch's weights in place. Returns that epoch's metrics."""
        cfg = self.cfg
        opt = torch.optim.AdamW(self.obj.param_groups(cfg.lr, cfg.head_lr), weight_decay=0.0)
        self.total = math.ceil(len(train) / cfg.batch_size) * cfg.epochs
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - s / self.total)
        gen = torch.Generator().manual_seed(cfg.seed)
        valid_batches = _batches(valid, cfg.batch_size)
        best: tuple[float, list[Tensor], dict[str, float]] | None = None
        self.step, self.start, stale = 0, time.perf_counter(), 0
        for epoch in range(1, cfg.epochs + 1):
            order = torch.randperm(len(train), generator=gen).tolist()
            train_loss = self._epoch(opt, sched, _batches(train, cfg.batch_size, order), epoch)
            self.obj.module.eval()
            metrics = {**self.obj.evaluate(valid_batches), "train_loss": train_loss, "best_epoch": epoch}
            if best is None or metrics["valid_loss"] < best[0]:
                best, stale = (metrics["valid_loss"], self._snapshot(), metrics), 0
            else:
                stale += 1
                if stale >= cfg.patience:
                    break
        assert best is not None
        self._restore(best[1])
        return {**best[2], "epochs_run": epoch, "steps": self.step}

    def _epoch(
        self,
        opt: torch.optim.Optimizer,
        sched: torch.optim.lr_scheduler.LRScheduler,
        batches: list[list[Any]],
        epoch: int,
    ) -> float:
        """One pass over the shuffled batches; returns the mean training loss."""
        self.obj.module.train()
        losses = []
        for batch in batches:
            self.check_cancel()
            loss = self.obj.loss(batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            self.step += 1
            losses.append(float(loss.detach()))
            self._report(epoch, losses[-1])
        return sum(losses) / len(losses)

    def _report(self, epoch: int, loss: float) -> None:
        if self.progress is None:
            return
        elapsed = time.perf_counter() - self.start
        eta = elapsed / self.step * (self.total - self.step)
        self.progress(Progress(self.step, self.total, epoch, loss, eta_s=eta))


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise InvalidInput(f"{out_dir} already exists and is not empty; choose a new output directory")


def train_lora(
    *,
    base_dir: Path,
    task: FinetuneTask,
    train: Sequence[Example],
    valid: Sequence[Example] | None,
    out_dir: Path,
    config: LoraConfig | None = None,
    progress: Callable[[Progress], None] | None = None,
    cancel: threading.Event | None = None,
) -> TrainResult:
    """Train a LoRA adapter on `base_dir` and write it (PEFT format, safetensors) into `out_dir`.

    Classification also writes the head (classifier_head.safetensors/json). With `valid=None`, a
    stratified `val_fraction` of `train` is held out. Same seed, data and threads -> same bytes.
    """
    cfg = config or LoraConfig()
    started = time.perf_counter()
    base_dir, out_dir = Path(base_dir), Path(out_dir)
    _check_out_dir(out_dir)
    _check_examples(task, train, "training")
    if valid is None:
        train, valid = split(train, cfg.val_fraction, cfg.seed)
    _check_examples(task, valid, "validation")
    labels = sorted({ex.label for ex in [*train, *valid] if isinstance(ex, TextExample)})
    if task == "classification" and len(labels) < 2:
        raise InvalidInput("a classifier needs examples of at least two labels", param="data")
    # fork_rng: PEFT's LoRA init and dropout draw from the global generator; keep the caller's.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        obj = _objective(task, base_dir, labels, cfg)
        loop = _Loop(obj, cfg, progress, cancel)
        metrics = loop.run(obj.encode(train, cfg.max_length), obj.encode(valid, cfg.max_length))
    _write(obj, out_dir, loop)
    return TrainResult(
        metrics=metrics,
        labels=tuple(labels),
        n_train=len(train),
        n_valid=len(valid),
        duration_s=time.perf_counter() - started,
        config=asdict(cfg),
    )


def _sort_target_modules(path: Path) -> None:
    """PEFT stores target_modules from a set, whose order varies between processes; sort it so
    the same run gives the same bytes."""
    config = json.loads(path.read_text())
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _write(obj: _Objective, out_dir: Path, loop: _Loop) -> None:
    """Save into a temporary sibling and rename it into place: all or nothing."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        obj.save(tmp)
        _sort_target_modules(tmp / "adapter_config.json")
        loop.check_cancel()
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked before training); rename needs it gone
        tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
