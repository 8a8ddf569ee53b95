"""`constellation finetune` end to end on a tiny random BERT: success registers the adapter,
its data set and lineage; malformed data exits non-zero with line numbers and registers nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from constellation.cli import app


@pytest.fixture
def env(tmp_path: Path, tiny_bert: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("CONSTELLATION_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("CONSTELLATION_DB_URL", raising=False)
    base = tiny_bert
    runner = CliRunner()
    for args in (
        ["contributors", "add", "lab", "--name", "Lab"],
        [
            "models",
            "add",
            str(base),
            "--name",
            "tiny",
            "--task",
            "embedding",
            "--author",
            "lab",
            "--license",
            "apache-2.0",
        ],
    ):
        out = runner.invoke(app, args)
        assert out.exit_code == 0, out.output
    return runner


def _data(path: Path, extra: str = "") -> Path:
    rows = [{"text": f"refund order {i}", "label": "refund"} for i in range(12)]
    rows += [{"text": f"app crash {i}", "label": "bug"} for i in range(12)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + extra)
    return path


ARGS = [
    "finetune",
    "--base",
    "tiny",
    "--task",
    "classification",
    "--name",
    "intent",
    "--author",
    "acme",
    "--data-provider",
    "acme-support",
    "--license",
    "cc-by-4.0",
    "--epochs",
    "1",
    "--json",
]


def test_finetune_registers_adapter_dataset_and_lineage(env: CliRunner, tmp_path: Path) -> None:
    out = env.invoke(app, [*ARGS, "--data", str(_data(tmp_path / "tickets.jsonl"))])
    assert out.exit_code == 0, out.output
    shown = json.loads(env.invoke(app, ["models", "show", "intent", "--json"]).output)
    assert shown["task"] == "classification" and shown["labels"] == ["bug", "refund"]
    assert shown["lineage"]["datasets"] == [
        {"name": "intent-tickets", "weight": 24, "license": "cc-by-4.0", "provider": "acme-support"}
    ]
    assert "valid_accuracy" in shown["card"]["metrics"]


def test_malformed_data_exits_with_line_numbers_and_registers_nothing(env: CliRunner, tmp_path: Path) -> None:
    bad = _data(tmp_path / "bad.jsonl", extra='{"text": "x"}\nnot json\n')
    out = env.invoke(app, [*ARGS, "--data", str(bad)])
    assert out.exit_code == 1
    assert "25" in out.output and "26" in out.output
    listed = json.loads(env.invoke(app, ["models", "list", "--json"]).output)
    assert [m["name"] for m in listed] == ["tiny"]
    assert json.loads(env.invoke(app, ["datasets", "list", "--json"]).output) == []
