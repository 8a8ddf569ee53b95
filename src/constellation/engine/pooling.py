"""Sentence pooling as sentence-transformers configures it: which mode and whether to normalise,
read from a model folder once, and the pooling itself over padded or packed token states.

Serving (the encoder) and training (the fine-tune classifier) both pool through this module.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from constellation.errors import InvalidInput

# sentence-transformers' Pooling config flag -> our mode name.
MODES = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
    "pooling_mode_lasttoken": "lasttoken",
}


@dataclass(frozen=True, slots=True)
class Pooling:
    """One of MODES' values, then L2 normalisation or not."""

    mode: str = "mean"
    normalize: bool = True


def read_pooling(path: Path) -> Pooling:
    """The pooling of the model folder's `modules.json`: its Pooling module's one mode, and
    normalisation when it lists a Normalize module. Without `modules.json`: mean, normalised."""
    modules_file = path / "modules.json"
    if not modules_file.is_file():
        return Pooling()
    mode, normalize = "mean", False
    for m in json.loads(modules_file.read_text()):
        kind = str(m.get("type", "")).rsplit(".", 1)[-1]
        if kind == "Pooling":
            cfg = json.loads((path / m["path"] / "config.json").read_text())
            modes = [name for flag, name in MODES.items() if cfg.get(flag)]
            if len(modes) != 1:
                raise InvalidInput(
                    f"{path.name}: pooling {modes} is not supported; set exactly one of "
                    f"{', '.join(MODES)} in {m['path']}/config.json"
                )
            mode = modes[0]
        elif kind == "Normalize":
            normalize = True
    return Pooling(mode=mode, normalize=normalize)


def pool(h: Tensor, mask: Tensor, mode: str) -> Tensor:
    """Sentence embeddings before normalisation. h: [B, L, d] under mask [B, L] (right padding)
    -> [B, d]."""
    m = mask.unsqueeze(-1).to(h.dtype)  # [B, L, 1]
    if mode == "cls":
        return h[:, 0]
    if mode == "max":
        return h.masked_fill(m == 0, torch.finfo(h.dtype).min).amax(dim=1)
    if mode == "lasttoken":
        last = mask.sum(dim=1) - 1  # [B]: right padding, so the last real token
        return h[torch.arange(h.shape[0], device=h.device), last]
    summed = (h * m).sum(dim=1)  # [B, d]
    count = m.sum(dim=1).clamp(min=1e-9)  # [B, 1]
    return summed / (count.sqrt() if mode == "mean_sqrt_len" else count)


def pool_packed(h: Tensor, lengths: list[int], mode: str) -> Tensor:
    """The same over packed token states h [T, d], sequence i being the next lengths[i] rows -> [B, d]."""
    if mode == "cls":
        return h[torch.tensor([0, *lengths[:-1]], device=h.device).cumsum(0)]
    if mode == "lasttoken":
        return h[torch.tensor(lengths, device=h.device).cumsum(0) - 1]
    if mode == "max":
        return torch.stack([p.max(dim=0).values for p in torch.split(h, lengths)])
    n = torch.tensor(lengths, device=h.device)
    seq = torch.repeat_interleave(torch.arange(len(lengths), device=h.device), n)  # [T]
    summed = h.new_zeros(len(lengths), h.shape[1]).index_add_(0, seq, h)  # [B, d]
    count = n.to(h.dtype)[:, None]
    return summed / (count.sqrt() if mode == "mean_sqrt_len" else count)
