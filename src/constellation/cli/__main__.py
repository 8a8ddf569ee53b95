"""`python -m constellation.cli` runs the CLI (used by tests to pick the same interpreter)."""

from constellation.cli import app

app()
