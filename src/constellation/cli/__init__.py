"""The `constellation` command line: serve, register models and adapters, manage tenants and
keys, fine-tune, read usage and statements, run benchmarks. `constellation --help` lists all."""

from __future__ import annotations

import os
import sys

# `serve` shares two cores between the engine's OpenMP threads and the event loop: threads that
# spin while waiting for the next parallel region take the CPU the request handlers need
# (about +20% req/s in `bench encoder` item 3 here). OpenMP reads this once, when torch first
# loads (the server's app does that); set OMP_WAIT_POLICY yourself to override.

if sys.argv[1:2] == ["serve"]:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import typer

from constellation.cli import (
    _quiet,  # noqa: F401  (side effect: quiet model loads)
    economy,
)
from constellation.cli import registry_cmds as reg
from constellation.cli.bench import bench
from constellation.cli.demo import demo
from constellation.cli.finetune import finetune
from constellation.cli.providers import providers
from constellation.cli.serve import serve
from constellation.cli.workflows import workflows

app = typer.Typer(
    name="constellation",
    help="Serve many specialised open models behind one OpenAI-compatible API, priced by contribution.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.command()(serve)
app.command()(bench)
app.command()(demo)

app.command()(finetune)

app.add_typer(reg.models, name="models")
app.add_typer(reg.adapters, name="adapters")
app.add_typer(reg.datasets, name="datasets")
app.add_typer(reg.contributors, name="contributors")
app.add_typer(reg.terms, name="terms")
app.add_typer(reg.licences, name="licences")
app.add_typer(reg.tenants, name="tenants")
app.add_typer(reg.keys, name="keys")
app.add_typer(providers, name="providers")
app.add_typer(workflows, name="workflows")
app.add_typer(economy.usage, name="usage")
app.add_typer(economy.invoices, name="invoices")
app.add_typer(economy.statements, name="statements")
app.add_typer(economy.ledger, name="ledger")
reg.tenants.command("fund")(economy.tenants_fund)
reg.tenants.command("limit")(economy.tenants_limit)
