"""Shared CLI plumbing: open the platform with one clear line on failure, and print rows as
a rich table or, with --json, as JSON for scripts."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from constellation.config import Settings
from constellation.errors import ConstellationError
from constellation.platform import Platform

console = Console()
err_console = Console(stderr=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table (for scripts).")]


def fail(message: str, code: int = 1) -> typer.Exit:
    err_console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


@contextmanager
def opened_platform() -> Iterator[Platform]:
    """Open settings, database and store; any platform error becomes one line and exit 1."""
    try:
        platform = Platform(Settings()).open()
    except ConstellationError as exc:
        raise fail(exc.message) from None
    try:
        yield platform
    except ConstellationError as exc:
        raise fail(exc.message) from None
    finally:
        platform.close()


def emit(
    rows: Sequence[dict[str, Any]] | dict[str, Any],
    *,
    as_json: bool,
    columns: Sequence[str] = (),
    title: str | None = None,
) -> None:
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2, default=str) + "\n")
        return
    if isinstance(rows, dict):
        for k, v in rows.items():
            console.print(
                f"[bold]{k}[/bold]: {json.dumps(v, default=str) if isinstance(v, dict | list) else v}",
                highlight=False,
            )
        return
    table = Table(title=title)
    cols = list(columns) or (list(rows[0]) if rows else [])
    for c in cols:
        table.add_column(c)
    for r in rows:
        table.add_row(*[_cell(r.get(c)) for c in cols])
    console.print(table)


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, list | dict):
        return json.dumps(v, default=str)
    return str(v)


def split_csv(value: str | None) -> list[str] | None:
    return [x.strip() for x in value.split(",") if x.strip()] if value else None
