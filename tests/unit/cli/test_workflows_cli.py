"""`constellation workflows add/show/list/runs` on SQLite and PostgreSQL, with a provider model
as the step (no weights needed): versions, the effective terms, and a refused document that
names the step and the field and registers nothing."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from constellation.cli import app

DOC = """
description: ask the closed model
inputs: {question: string}
terms: {per_run_nanos: 700}
steps:
  - {name: ask, chat: {model: frontier, messages: [{role: user, content: "{{ inputs.question }}"}]}}
"""


def _run(cli: CliRunner, *args: str, ok: bool = True) -> str:
    r = cli.invoke(app, list(args))
    assert (r.exit_code == 0) == ok, r.output
    return r.output


def test_workflows_commands(cli: CliRunner, tmp_path: Path) -> None:
    _run(cli, "providers", "add", "closedai", "--base-url", "https://api.example.com/v1")
    _run(
        cli,
        "providers",
        "expose",
        "closedai",
        "--model",
        "frontier-1",
        "--as",
        "frontier",
        "--task",
        "causal-lm",
    )
    doc = tmp_path / "ask.yaml"
    doc.write_text(DOC)
    first = json.loads(
        _run(cli, "workflows", "add", str(doc), "--name", "ask", "--author", "acme-ml", "--json")
    )
    assert first["version"] == 1 and first["models"] == ["frontier"] and first["fee_per_run_nanos"] == 700
    assert first["output_kind"] == "text" and first["effective_terms"]["models"]["frontier"]
    again = _run(cli, "workflows", "add", str(doc), "--name", "ask", "--author", "acme-ml", "--fee", "5")
    assert "ask@2" in again
    shown = json.loads(_run(cli, "workflows", "show", "ask@1", "--json"))
    assert shown["version"] == 1 and shown["versions"] == [1, 2] and shown["fee_per_run_nanos"] == 700
    assert "ask: chat frontier" in _run(cli, "workflows", "show", "ask")
    listed = json.loads(_run(cli, "workflows", "list", "--json"))
    assert [(w["name"], w["version"], w["fee_per_run_nanos"]) for w in listed] == [("ask", 2, 5)]
    assert json.loads(_run(cli, "workflows", "runs", "ask", "--json")) == []

    bad = tmp_path / "bad.yaml"
    bad.write_text(DOC.replace("model: frontier", "model: nowhere"))
    out = _run(cli, "workflows", "add", str(bad), "--name", "bad", "--author", "acme-ml", ok=False)
    assert "steps.ask.chat.model" in out and "nowhere" in out
    assert "bad" not in _run(cli, "workflows", "list")
    assert "does not exist" in _run(cli, "workflows", "show", "bad", ok=False)
