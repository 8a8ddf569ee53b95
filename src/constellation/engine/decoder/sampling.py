"""Token sampling (greedy, temperature, top-k, top-p) with a per-request generator, and the
sampling parameters and defaults a request carries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from constellation.errors import InvalidInput

MAX_STOPS = 16


@dataclass(slots=True)
class SamplingParams:
    """Per-request decoding settings; `temperature == 0` means greedy."""

    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    unset: frozenset[str] = frozenset()  # fields the request left out: the model's defaults apply

    def __post_init__(self) -> None:
        if self.max_tokens is not None and self.max_tokens < 1:
            raise InvalidInput("max_tokens must be at least 1 (or omitted)", param="max_tokens")
        if not 0.0 <= self.temperature <= 2.0:
            raise InvalidInput("temperature must be between 0 and 2 (0 = greedy)", param="temperature")
        if not 0.0 < self.top_p <= 1.0:
            raise InvalidInput("top_p must be in (0, 1]", param="top_p")
        if self.top_k < 0:
            raise InvalidInput("top_k must be 0 (disabled) or positive", param="top_k")
        self.stop = tuple(self.stop)
        if len(self.stop) > MAX_STOPS or any(not s for s in self.stop):
            raise InvalidInput(f"stop takes at most {MAX_STOPS} non-empty strings", param="stop")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


DEFAULTABLE = ("temperature", "top_p", "top_k")


@dataclass(frozen=True, slots=True)
class SamplingDefaults:
    """A model's own defaults for what a request leaves out, from its `generation_config.json`
    (as vLLM does); OpenAI's defaults where the model says nothing."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0

    @classmethod
    def from_generation_config(cls, cfg: dict[str, Any]) -> SamplingDefaults:
        """Values outside the API's own bounds are ignored rather than trusted."""
        t, p, k = cfg.get("temperature"), cfg.get("top_p"), cfg.get("top_k")
        return cls(
            temperature=float(t) if isinstance(t, int | float) and 0 <= t <= 2 else 1.0,
            top_p=float(p) if isinstance(p, int | float) and 0 < p <= 1 else 1.0,
            top_k=int(k) if isinstance(k, int) and k >= 0 and k < 2**31 else 0,
        )

    def apply(self, params: SamplingParams) -> SamplingParams:
        """`params` with every field it left out taken from these defaults."""
        if not params.unset:
            return params
        filled = {f: getattr(self, f) for f in DEFAULTABLE if f in params.unset}
        return replace(params, **filled, unset=frozenset())


def make_generator(seed: int | None) -> torch.Generator:
    """A private CPU generator: seeded requests replay exactly whatever they are batched with."""
    g = torch.Generator()
    g.manual_seed(seed if seed is not None else int(torch.randint(0, 2**62, ()).item()))
    return g


def sample(logits: Tensor, params: Sequence[SamplingParams], gens: Sequence[torch.Generator]) -> Tensor:
    """logits [R, V] -> next tokens [R]. Each row only depends on its own logits and generator.

    Greedy rows are picked where the logits are; any sampled row moves the logits to the host,
    where the per-request CPU generators live."""
    if all(p.greedy for p in params):
        return logits.argmax(-1)  # [R]
    logits = logits.cpu()
    temp = torch.tensor([p.temperature for p in params], dtype=torch.float32)
    greedy = logits.argmax(-1)  # [R]
    scaled = logits.float() / temp.clamp_min(1e-5)[:, None]
    sorted_logits, order = scaled.sort(dim=-1, descending=True, stable=True)  # [R, V]
    rank = torch.arange(logits.shape[-1])[None, :]  # [1, V]
    top_k = torch.tensor([p.top_k or logits.shape[-1] for p in params])[:, None]  # [R, 1]
    sorted_logits = sorted_logits.masked_fill(rank >= top_k, float("-inf"))
    probs = sorted_logits.softmax(-1)
    # Drop tokens whose preceding mass already reaches top_p; the first token always stays.
    top_p = torch.tensor([p.top_p for p in params])[:, None]  # [R, 1]
    probs = probs.masked_fill((probs.cumsum(-1) - probs) >= top_p, 0.0)
    cdf = probs.cumsum(-1)  # [R, V]
    u = torch.cat([torch.rand(1, generator=g) for g in gens])  # [R]
    pick = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None]).clamp_max(logits.shape[-1] - 1)  # [R, 1]
    sampled = order.gather(-1, pick).squeeze(-1)  # [R]
    return torch.where(temp == 0.0, greedy, sampled)
