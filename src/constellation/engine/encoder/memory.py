"""Give freed heap memory back to the operating system after large batches.

Why: glibc keeps what a large batch freed (tokenizer buffers, activations) in its arenas, so a
worker's resident size stays at its largest batch's peak long after it; `malloc_trim` returns it.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable


def _libc_trim() -> Callable[[], object] | None:
    """glibc's `malloc_trim(0)`, or None where the C library has none (musl, macOS, Windows).
    Looked up among the symbols already loaded: `ctypes.util.find_library` runs a subprocess."""
    try:
        trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    except (OSError, TypeError):  # no dlopen(NULL) on this platform
        return None
    return None if trim is None else lambda: trim(0)


class MemoryTrimmer:
    """Trims the heap when the engine goes idle after processing `after_tokens` tokens or more
    since the last trim: once per burst, never on the hot path of a busy engine."""

    def __init__(self, after_tokens: int, trim: Callable[[], object] | None = None) -> None:
        self._after = after_tokens
        self._trim = trim if trim is not None else _libc_trim()
        self._tokens = 0
        self.trims = 0

    def processed(self, tokens: int, *, idle: bool) -> None:
        self._tokens += tokens
        if idle and self._tokens >= self._after and self._trim is not None:
            self._trim()
            self._tokens = 0
            self.trims += 1
