"""`constellation bench NAME`: run a benchmark from the repository's bench/ folder; each
prints its peer comparisons as ratios. `all --tiny` is what CI runs so none rots."""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from constellation.cli._common import console, fail

# Benchmarks are not shipped in the wheel: they run from a checkout, with the `bench` extra.
BENCH_DIR = Path(__file__).resolve().parents[3] / "bench"


def _available() -> list[str]:
    return sorted(p.stem for p in BENCH_DIR.glob("*.py") if not p.stem.startswith("_"))


def _run_one(name: str, tiny: bool, model: str | None = None) -> None:
    path = BENCH_DIR / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"constellation_bench_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and pickling look the module up by name
    try:
        spec.loader.exec_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != "sentence_transformers":
            raise
        raise fail(
            f"bench {name} compares against sentence-transformers: run `pip install -e '.[bench]'`"
        ) from None
    console.rule(f"bench {name}{' (tiny)' if tiny else ''}")
    module.main(tiny=tiny, **({"model": model} if model else {}))


def bench(
    name: Annotated[
        str,
        typer.Argument(
            help="Benchmark name (cluster, encoder, decoder, fairness, finetune, ledger, providers, "
            "structured, workflows) or 'all'."
        ),
    ],
    tiny: Annotated[
        bool, typer.Option("--tiny", help="Tiny sizes: checks it runs, numbers mean little.")
    ] = False,
    model: Annotated[
        str | None,
        typer.Option("--model", help="decoder only: a real model instead of the random toy (smollm2)."),
    ] = None,
) -> None:
    """Run a benchmark that compares Constellation against the peer a user would otherwise pick."""
    names = _available()
    if not names:
        raise fail(f"no benchmarks in {BENCH_DIR}: they run from a checkout of the repository")
    if name != "all" and name not in names:
        raise fail(f"unknown benchmark '{name}'; available: {', '.join(names) or 'none'}, or 'all'")
    if model is not None and name != "decoder":
        raise fail(
            f"--model is for the decoder benchmark only; run `constellation bench decoder --model {model}`"
        )
    took: dict[str, float] = {}
    for n in names if name == "all" else [name]:
        started = time.monotonic()
        _run_one(n, tiny, model)
        took[n] = time.monotonic() - started
    if len(took) > 1:  # what each costs CI, which runs `all --tiny`
        console.print("wall time: " + ", ".join(f"{n} {s:.0f} s" for n, s in took.items()), highlight=False)
