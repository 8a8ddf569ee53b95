"""`constellation finetune`: one command from JSONL files to a live LoRA adapter, with a
progress bar; Ctrl-C stops training and registers nothing."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from constellation.cli._common import JsonOpt, console, emit, opened_platform
from constellation.finetune.data import FinetuneTask


def finetune(
    base: Annotated[str, typer.Option(help="Registered base model, e.g. minilm.")],
    task: Annotated[
        str,
        typer.Option(
            help="classification ({text, label} lines) or causal-lm "
            "({prompt, completion} or {messages} lines)."
        ),
    ],
    data: Annotated[
        list[Path],
        typer.Option("--data", help="JSONL file (repeatable; lineage weights follow example counts)."),
    ],
    name: Annotated[str, typer.Option(help="Name of the new adapter (the OpenAI `model` field).")],
    author: Annotated[str, typer.Option(help="Contributor id of the adapter's author (created if new).")],
    data_provider: Annotated[
        str, typer.Option(help="Contributor id of the data's provider (created if new).")
    ],
    license: Annotated[str, typer.Option("--license", help="Licence id of the adapter, e.g. cc-by-4.0.")],
    data_license: Annotated[
        str | None, typer.Option(help="Licence of the data (default: --license).")
    ] = None,
    outputs_of: Annotated[
        list[str] | None,
        typer.Option(
            "--outputs-of",
            help="A model (e.g. a provider's) whose outputs the data holds; the adapter inherits its "
            "licence terms. Repeatable.",
        ),
    ] = None,
    rank: Annotated[int, typer.Option(help="LoRA rank.")] = 8,
    alpha: Annotated[int, typer.Option(help="LoRA alpha (scale = alpha / rank).")] = 16,
    epochs: Annotated[int, typer.Option(help="Maximum epochs (early stopping on validation loss).")] = 8,
    learning_rate: Annotated[float, typer.Option(help="Learning rate of the LoRA factors.")] = 1e-3,
    seed: Annotated[int, typer.Option(help="Same seed and data -> the same adapter, bit for bit.")] = 0,
    private_to: Annotated[
        str | None, typer.Option("--private-to", help="Visible to this tenant only.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Fine-tune a LoRA adapter from JSONL and register it with its data sets and lineage, e.g.
    `constellation finetune --base minilm --task classification --data tickets.jsonl --name ticket-intent
    --author acme --data-provider acme-support --license cc-by-4.0`."""
    if task not in ("classification", "causal-lm"):
        raise typer.BadParameter("use classification or causal-lm", param_hint="--task")
    # Training pulls in torch and PEFT: load them only when this command runs.
    from constellation.finetune.service import FinetuneSpec, run_finetune
    from constellation.finetune.trainer import LoraConfig, TrainingCancelled
    from constellation.finetune.trainer import Progress as TrainProgress

    kind: FinetuneTask = "classification" if task == "classification" else "causal-lm"

    spec = FinetuneSpec(
        base=base,
        task=kind,
        data=data,
        name=name,
        author=author,  # type: ignore[arg-type]
        data_provider=data_provider,
        license=license,
        data_license=data_license,
        outputs_of=outputs_of or [],
        config=LoraConfig(rank=rank, alpha=alpha, epochs=epochs, lr=learning_rate, seed=seed),
        visibility="private" if private_to else "public",
        owner_tenant=private_to,
    )
    cancel = threading.Event()
    with (
        opened_platform() as platform,
        Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} steps"),
            TextColumn("loss {task.fields[loss]}"),
            TimeRemainingColumn(),
            console=console,
            transient=as_json,
        ) as bar,
    ):
        job = bar.add_task(f"training {name}", total=None, loss="-")

        def progress(p: TrainProgress) -> None:
            bar.update(job, completed=p.step, total=p.total, loss=f"{p.loss:.4f}")

        try:
            outcome = run_finetune(platform, spec, progress=progress, cancel=cancel)
        except KeyboardInterrupt:
            cancel.set()
            console.print("[yellow]cancelled: nothing was registered[/yellow]")
            raise typer.Exit(130) from None
        except TrainingCancelled:
            console.print("[yellow]cancelled: nothing was registered[/yellow]")
            raise typer.Exit(130) from None
    emit(outcome.as_dict(), as_json=as_json)
    if not as_json:
        console.print(
            f"[green]{name} is live[/green]: POST /v1/classify or /v1/chat/completions with model={name!r}"
        )
