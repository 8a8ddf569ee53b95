"""LoRA adapters read from PEFT directories into host memory: A/B weights per module, scale,
and an optional classification head. The adapter cache (lora/cache.py) moves them into slots.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from constellation.engine.spec import AdapterSpec
from constellation.errors import InvalidInput

PEFT_PREFIX = "base_model.model."
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
HEAD_WEIGHTS = "classifier_head.safetensors"
HEAD_CONFIG = "classifier_head.json"


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
    """Read a PEFT LoRA directory (safetensors only) via `spec.resolve()`."""
    path = spec.resolve()
    config = _read_config(path, spec.name)
    weights_path = path / ADAPTER_WEIGHTS
    if not weights_path.is_file():
        pickled = [p.name for p in path.glob("*.bin")] + [p.name for p in path.glob("*.pt")]
        hint = f" (found pickle files {pickled}: convert them to safetensors)" if pickled else ""
        raise InvalidInput(f"adapter {spec.name!r} has no {ADAPTER_WEIGHTS}{hint}")
    modules = _modules(load_file(str(weights_path)), config, spec.name)
    head = _read_head(path, spec)
    r = int(config.get("r", 8))  # type: ignore[call-overload]
    return LoadedAdapter(
        name=spec.name, rank=max(w.A.shape[0] for w in modules.values()), scale=_scale(config, r),
        modules=modules, head=head,
    )  # fmt: skip


def _read_config(path: Path, name: str) -> dict[str, object]:
    try:
        config = json.loads((path / ADAPTER_CONFIG).read_text())
    except FileNotFoundError:
        raise InvalidInput(f"adapter {name!r} has no {ADAPTER_CONFIG}; export it with PEFT save_pretrained")
    if config.get("peft_type", "LORA") != "LORA":
        raise InvalidInput(f"adapter {name!r} is {config.get('peft_type')}, only LoRA adapters are served")
    if config.get("use_dora"):
        raise InvalidInput(f"adapter {name!r} uses DoRA; retrain it with use_dora=false")
    return dict(config)


def _scale(config: Mapping[str, object], r: int, alpha: object = None) -> float:
    """alpha / r, or alpha / sqrt(r) for rsLoRA (PEFT's definition)."""
    a = float(config.get("lora_alpha", r) if alpha is None else alpha)  # type: ignore[arg-type]
    return a / math.sqrt(r) if config.get("use_rslora") else a / r


def _modules(
    state: dict[str, torch.Tensor], config: Mapping[str, object], name: str
) -> dict[str, LoRAWeights]:
    """Pair lora_A / lora_B per module; per-module ranks and alphas follow PEFT's patterns."""
    alphas = dict(config.get("alpha_pattern") or {})  # type: ignore[call-overload]
    out: dict[str, LoRAWeights] = {}
    for key, A in state.items():
        if not key.endswith(".lora_A.weight"):
            continue
        module = key.removesuffix(".lora_A.weight")
        B = state.get(module + ".lora_B.weight")
        if B is None:
            raise InvalidInput(f"adapter {name!r} has {key} but no matching lora_B weight")
        hf = module.removeprefix(PEFT_PREFIX)
        r = A.shape[0]
        # The rank is the tensor's (rank_pattern is already reflected in the shapes).
        alpha = next((v for k, v in alphas.items() if hf == k or hf.endswith("." + k)), None)
        out[hf] = LoRAWeights(A=A.float(), B=B.float(), scale=_scale(config, r, alpha))
    if not out:
        raise InvalidInput(f"adapter {name!r} holds no LoRA weights (no *.lora_A.weight keys)")
    return out


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
