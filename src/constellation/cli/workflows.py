"""`constellation workflows ...`: register a workflow document (a new version each time), show
one with its graph and effective licence terms, list them, and list a workflow's recent runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from constellation.cli._common import JsonOpt, emit, fail, opened_platform
from constellation.registry import workflows as repo
from constellation.workflows.validate import describe, register

workflows = typer.Typer(
    help="Workflows: models composed into one endpoint, metered step by step.", no_args_is_help=True
)


@workflows.command("add")
def workflows_add(
    file: Annotated[Path, typer.Argument(help="The workflow document (YAML or JSON).")],
    name: Annotated[str, typer.Option("--name", help="Its name; an existing name gets a new version.")],
    author: Annotated[str, typer.Option("--author", help="The contributor who designed it (paid its fee).")],
    visibility: Annotated[str, typer.Option(help="public, or private (to --owner-tenant).")] = "public",
    owner_tenant: Annotated[
        str | None, typer.Option(help="The tenant a private workflow belongs to.")
    ] = None,
    fee: Annotated[
        int | None,
        typer.Option("--fee", help="The author's fee per run, nano-USD (default: the document's)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Register FILE as workflow NAME (checked first: steps, templates, models, sub-workflows)."""
    try:
        source = file.read_text()
    except OSError as e:
        raise fail(f"cannot read {file}: {e.strerror}") from None
    with opened_platform() as p, p.db.session() as s:
        wf = register(
            s,
            name=name,
            source=source,
            author_id=author,
            limits=p.settings.workflows,
            visibility=visibility,
            owner_tenant_id=owner_tenant,
            fee_per_run_nanos=fee,
        )
        out = describe(s, wf)
    if as_json:
        emit(out, as_json=True)
        return
    emit(
        {
            "registered": f"{out['name']}@{out['version']}",
            "output": out["output_kind"],
            "models": out["models"],
            "fee_per_run_nanos": out["fee_per_run_nanos"],
        },
        as_json=False,
    )


@workflows.command("show")
def workflows_show(
    name: Annotated[str, typer.Argument(help="'name' (the latest version) or 'name@N'.")],
    as_json: JsonOpt = False,
) -> None:
    """A workflow's inputs, steps, reachable models and effective licence terms."""
    with opened_platform() as p, p.db.session() as s:
        out = describe(s, repo.get_workflow(s, ref=name))
    if as_json:
        emit(out, as_json=True)
        return
    terms = out["effective_terms"]
    emit(
        {
            "name": f"{out['name']}@{out['version']}",
            "versions": out["versions"],
            "author": out["author"],
            "fee_per_run_nanos": out["fee_per_run_nanos"],
            "visibility": out["visibility"],
            "inputs": out["inputs"],
            "output": f"{out['output']} ({out['output_kind']})",
            "steps": [
                f"{n['id']}: {n['kind']} {' '.join(n['models'])}".strip() for n in out["graph"]["nodes"]
            ],
            "models": out["models"],
            "commercial_use": terms["commercial_use"],
            "notices": terms["notices"],
            "acceptance_required": terms["acceptance_required"],
        },
        as_json=False,
    )


@workflows.command("list")
def workflows_list(as_json: JsonOpt = False) -> None:
    """Every workflow (its latest version)."""
    with opened_platform() as p, p.db.session() as s:
        rows = [
            {
                "name": wf.name,
                "version": wf.version,
                "output": wf.output_kind,
                "author": wf.author_id,
                "fee_per_run_nanos": wf.fee_per_run_nanos,
                "visibility": wf.visibility,
                "models": wf.models,
            }
            for wf in repo.list_workflows(s)
        ]
    emit(
        rows,
        as_json=as_json,
        title="Workflows",
        columns=("name", "version", "output", "author", "fee_per_run_nanos", "visibility", "models"),
    )


@workflows.command("runs")
def workflows_runs(
    name: Annotated[str, typer.Argument(help="The workflow.")],
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 20,
    as_json: JsonOpt = False,
) -> None:
    """A workflow's recent runs, each with its steps and price."""
    with opened_platform() as p, p.db.session() as s:
        rows = repo.recent_runs(s, workflow=repo.get_workflow(s, ref=name).name, limit=limit)
    if as_json:
        emit(rows, as_json=True)
        return
    flat = [
        {
            "run_id": r["run_id"],
            "version": r["version"],
            "status": r["status"],
            "price_nanos": r["price_nanos"],
            "steps": ", ".join(f"{st['step']}={st['price_nanos']}" for st in r["steps"]),
        }
        for r in rows
    ]
    emit(
        flat,
        as_json=False,
        title=f"Runs of {name}",
        columns=("run_id", "version", "status", "price_nanos", "steps"),
    )
