"""`constellation models add` and `adapters add` build the same input schema as the admin API
(registry/inputs.py): the same fields accepted, the same ones refused, naming the field; an
adapter above the rank setting is refused at import, one on BERT's pooler is noted in its card."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import BertConfig, BertModel
from typer.testing import CliRunner

from constellation.cli import app


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random BERT with its pooler, and two PEFT adapters for it (all-linear r=4, q r=8)."""
    root = tmp_path_factory.mktemp("cli-models")
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=16,
    )  # fmt: skip
    BertModel(config).save_pretrained(root / "tiny-bert")
    for name, targets, r in (("all-linear", "all-linear", 4), ("rank-8", ["query"], 8)):
        model = get_peft_model(
            BertModel.from_pretrained(root / "tiny-bert"), LoraConfig(r=r, target_modules=targets)
        )
        model.save_pretrained(str(root / name))
    return root / "tiny-bert"


def _add_base(cli: CliRunner, bert: Path, *extra: str) -> object:
    args = ["models", "add", str(bert), "--name", "tiny", "--author", "acme-ml", "--license", "mit", *extra]
    return cli.invoke(app, [*args, "--json"])


def test_models_add_validates_through_the_shared_schema(cli: CliRunner, bert: Path) -> None:
    r = _add_base(cli, bert, "--task", "translation")
    assert (
        r.exit_code == 1 and "task: Input should be 'embedding', 'classification' or 'causal-lm'" in r.output
    )
    r = _add_base(cli, bert, "--task", "embedding")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["task"] == "embedding"


def test_adapters_add_checks_rank_and_notes_unread_modules(
    cli: CliRunner, bert: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert _add_base(cli, bert, "--task", "embedding").exit_code == 0
    add = ["adapters", "add", "--base", "tiny", "--author", "acme-ml", "--license", "mit", "--json"]
    monkeypatch.setenv("CONSTELLATION_ENGINE__MAX_LORA_RANK", "4")
    r = cli.invoke(app, [*add, str(bert.parent / "rank-8"), "--name", "r8"])
    assert r.exit_code == 1 and "rank 8" in r.output and "largest rank served (4" in r.output
    r = cli.invoke(app, [*add, str(bert.parent / "all-linear"), "--name", "every-linear"])
    assert r.exit_code == 0, r.output
    (note,) = json.loads(r.output)["card"]["notes"]
    assert "pooler.dense" in note and "not served" in note
