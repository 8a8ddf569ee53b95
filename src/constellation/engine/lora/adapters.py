"""LoRA adapters read from PEFT directories into host memory: A/B weights per module, scale,
and an optional classification head. The adapter cache (lora/cache.py) moves them into slots.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from constellation.artifacts.peft import read_adapter
from constellation.engine.spec import AdapterSpec
from constellation.errors import InvalidInput

HEAD_WEIGHTS = "classifier_head.safetensors"
HEAD_CONFIG = "classifier_head.json"
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LoRAWeights:
    """One adapted module, PEFT orientation: A [r, in] (lora_A.weight), B [out, r]."""

    A: torch.Tensor
    B: torch.Tensor
    scale: float


@dataclass(frozen=True, slots=True)
class ClassifierHead:
    """Linear head on the base's pooled (pre-normalisation) embedding, then softmax."""

    weight: torch.Tensor  # [num_labels, hidden]
    bias: torch.Tensor  # [num_labels]
    labels: tuple[str, ...]
    pooling: str = "base"


@dataclass(slots=True)
class LoadedAdapter:
    """An adapter in host memory; `modules` is keyed by HF module path (PEFT prefix stripped)."""

    name: str
    rank: int
    scale: float
    modules: dict[str, LoRAWeights]
    head: ClassifierHead | None = None
    nbytes: int = field(default=0)

    def __post_init__(self) -> None:
        tensors = [t for w in self.modules.values() for t in (w.A, w.B)]
        if self.head is not None:
            tensors += [self.head.weight, self.head.bias]
        self.nbytes = sum(t.numel() * t.element_size() for t in tensors)


def load_adapter(spec: AdapterSpec) -> LoadedAdapter:
    """Read a PEFT LoRA directory via `spec.resolve()`, by the rules of `artifacts.peft`."""
    peft = read_adapter(spec.resolve(), name=spec.name)
    for note in peft.notes():
        log.warning("adapter %r: %s", spec.name, note)
    state = load_file(str(peft.weights))
    modules = {
        m.name: LoRAWeights(A=state[m.a_key].float(), B=state[m.b_key].float(), scale=m.scale)
        for m in peft.modules
    }
    head = _read_head(peft.weights.parent, spec)
    return LoadedAdapter(name=spec.name, rank=peft.rank, scale=peft.scale, modules=modules, head=head)


def _read_head(path: Path, spec: AdapterSpec) -> ClassifierHead | None:
    """The classification head, if any; its labels must equal the registry's."""
    if not (path / HEAD_WEIGHTS).is_file():
        if spec.labels is not None:
            raise InvalidInput(f"adapter {spec.name!r} has labels but no {HEAD_WEIGHTS}")
        return None
    tensors = load_file(str(path / HEAD_WEIGHTS))
    meta = json.loads((path / HEAD_CONFIG).read_text())
    labels = tuple(str(x) for x in meta["labels"])
    if spec.labels is not None and tuple(spec.labels) != labels:
        raise InvalidInput(
            f"adapter {spec.name!r}: registry labels {list(spec.labels)} differ from its head's "
            f"{list(labels)}; re-register the adapter with the head's labels"
        )
    weight, bias = tensors["weight"].float(), tensors["bias"].float()
    if weight.shape[0] != len(labels) or bias.shape != (len(labels),):
        raise InvalidInput(f"adapter {spec.name!r}: head shape {tuple(weight.shape)} != {len(labels)} labels")
    return ClassifierHead(weight=weight, bias=bias, labels=labels, pooling=str(meta.get("pooling", "base")))
