"""Sentence pooling: one reading of sentence-transformers' config for serving and training, and
the packed pooling equal to the padded one for every mode."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from constellation.engine.pooling import MODES, Pooling, pool, pool_packed, read_pooling
from constellation.errors import InvalidInput


def _st_folder(path: Path, flags: dict[str, bool], *, normalize: bool) -> Path:
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        modules.append(
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}
        )
    (path / "1_Pooling").mkdir(parents=True)
    (path / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 8, **flags}))
    (path / "modules.json").write_text(json.dumps(modules))
    return path


@pytest.mark.parametrize(("flag", "mode"), list(MODES.items()))
@pytest.mark.parametrize("normalize", [True, False])
def test_reads_each_mode_and_normalisation(tmp_path: Path, flag: str, mode: str, normalize: bool) -> None:
    flags = {f: f == flag for f in MODES}
    assert read_pooling(_st_folder(tmp_path, flags, normalize=normalize)) == Pooling(mode, normalize)


def test_without_modules_json_mean_and_normalised(tmp_path: Path) -> None:
    assert read_pooling(tmp_path) == Pooling("mean", True)


@pytest.mark.parametrize("flags", [{}, {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": True}])
def test_anything_but_one_mode_is_refused(tmp_path: Path, flags: dict[str, bool]) -> None:
    with pytest.raises(InvalidInput, match=r"set exactly one of pooling_mode_cls_token"):
        read_pooling(_st_folder(tmp_path, flags, normalize=True))


@pytest.mark.parametrize("mode", sorted(set(MODES.values())))
def test_packed_equals_padded(mode: str) -> None:
    gen = torch.Generator().manual_seed(0)
    lengths = [3, 1, 5, 2]
    h = torch.randn(len(lengths), max(lengths), 8, generator=gen)  # [B, L, d]
    mask = torch.tensor([[1] * n + [0] * (max(lengths) - n) for n in lengths])  # [B, L]
    packed = torch.cat([h[i, :n] for i, n in enumerate(lengths)])  # [T, d]
    torch.testing.assert_close(pool_packed(packed, lengths, mode), pool(h, mask, mode))


def test_modes_pick_the_right_tokens() -> None:
    h = torch.arange(12, dtype=torch.float32).view(1, 4, 3)  # one sequence of 4 tokens, 3 used
    mask = torch.tensor([[1, 1, 1, 0]])
    assert pool(h, mask, "cls").tolist() == [[0.0, 1.0, 2.0]]
    assert pool(h, mask, "lasttoken").tolist() == [[6.0, 7.0, 8.0]]
    assert pool(h, mask, "max").tolist() == [[6.0, 7.0, 8.0]]
    assert pool(h, mask, "mean").tolist() == [[3.0, 4.0, 5.0]]
