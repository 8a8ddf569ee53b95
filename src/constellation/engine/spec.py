"""What the engine is asked to serve: plain descriptions of bases, adapters and requests.

The API layer resolves registry rows into these; the engine never sees SQL or HTTP.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Task = Literal["embedding", "classification", "causal-lm"]


@dataclass(frozen=True, slots=True)
class BaseSpec:
    """A base model. `resolve()` verifies the artifact (sha256) and returns its directory;
    the engine calls it on every load from disk, never caches the path across evictions."""

    name: str
    task: Task
    resolve: Callable[[], Path] = field(compare=False, repr=False)
    size_bytes: int = 0


@dataclass(frozen=True, slots=True)
class AdapterSpec:
    """A LoRA adapter in PEFT format on `base`. Classification adapters carry `labels`
    (index order of their head's outputs)."""

    name: str
    base: str
    resolve: Callable[[], Path] = field(compare=False, repr=False)
    labels: tuple[str, ...] | None = None
    size_bytes: int = 0
