"""The packed-token BERT forward equals the padded Hugging Face forward: every pooling mode, both
attention paths, sequences of different lengths, rows with and without adapters in one batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from constellation.config import EngineLimits
from constellation.engine.encoder.model import EncoderModel
from constellation.engine.models import bert
from constellation.engine.models.bert import supports

from ..conftest import base_spec, make_adapter

TEXTS = ["a", "the model serves many small adapters on one shared base under load", "hello there", "ok then"]


@pytest.fixture(scope="module")
def models(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[EncoderModel, EncoderModel]:
    root = tmp_path_factory.mktemp("packed")
    packed = EncoderModel(base_spec(tiny_bert), EngineLimits(adapter_slots=4))
    padded = EncoderModel(base_spec(tiny_bert), EngineLimits(adapter_slots=4))
    padded.packed = False  # the Hugging Face forward over a padded batch
    assert packed.packed and supports(packed.model)
    for i, rank in enumerate((2, 8)):
        spec = make_adapter(tiny_bert, root / f"p{i}", rank=rank, seed=10 + i)
        for m in (packed, padded):
            m.adapters.acquire([spec])
    return packed, padded


@pytest.mark.parametrize("mode", ["mean", "cls", "max", "mean_sqrt_len"])
def test_packed_equals_padded_for_every_pooling(models: tuple[EncoderModel, EncoderModel], mode: str) -> None:
    packed, padded = models
    ids = packed.tokenize(TEXTS * 2, truncate=False)
    slots = torch.tensor([0, 1, -1, 0, 1, -1, -1, 1])  # adapters and none, lengths 3 to 14
    assert packed.packs(ids, slots) and not padded.packs(ids, slots)  # the two paths differ
    for m in models:
        m.pooling = type(m.pooling)(mode=mode, normalize=True)
    got, want = packed.forward(ids, slots), padded.forward(ids, slots)
    assert got.shape == want.shape == (8, packed.model.config.hidden_size)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_packs_when_the_padding_saved_outweighs_the_packed_lora_cost(
    models: tuple[EncoderModel, EncoderModel],
) -> None:
    packed, padded = models
    ids = [[7] * 10] * 7 + [[7] * 14]  # 84 tokens, 28 of padding
    none, one, two = torch.full((8,), -1), torch.tensor([0] * 8), torch.tensor([0, 1] * 4)
    assert packed.packs(ids, none)  # no adapters: any padding saved
    assert not packed.packs([[7] * 10] * 8, none)  # nothing to save
    assert packed.packs(ids, one)  # 28 > 0.17 * 84 + 8
    assert not packed.packs(ids, two)  # 28 < 0.17 * 84 + 16
    assert not padded.packs(ids, none)  # a model that cannot pack never does


@pytest.mark.parametrize("short", [bert.SHORT_ATTENTION, 0], ids=["matmul-softmax", "fused-kernel"])
def test_both_attention_paths_equal_padded(
    models: tuple[EncoderModel, EncoderModel], short: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bert, "SHORT_ATTENTION", short)
    packed, padded = models
    ids = packed.tokenize(TEXTS[::-1] * 3, truncate=False)
    slots = torch.tensor([-1, 0, 1, -1] * 3)
    assert packed.packs(ids, slots)
    torch.testing.assert_close(packed.forward(ids, slots), padded.forward(ids, slots), atol=1e-5, rtol=0)
