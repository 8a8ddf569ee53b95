"""Process-wide interpreter settings for a serving process: `constellation serve` (through the
app's lifespan), the encoder engine's own process, and the benchmarks of the server's parts,
which apply them too so that they measure what the server runs."""

from __future__ import annotations

import gc
import sys

from constellation.config import Settings


def tune_interpreter(settings: Settings) -> None:
    """Apply, for the whole process:

    - The GIL switch interval (`Settings.gil_switch_interval_ms`).
    - `gc.freeze()`: what is loaded by now (torch, transformers, FastAPI: some 450,000 objects)
      lives as long as the process, so the cycle collector stops re-scanning it in every full
      collection. Those scans cost about a fifth of the ledger's postings per second here."""
    sys.setswitchinterval(settings.gil_switch_interval_ms / 1000)
    gc.freeze()
