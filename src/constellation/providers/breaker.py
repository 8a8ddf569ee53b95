"""A circuit breaker per provider: after `threshold` failures in a row it opens and requests
fail fast for `reset_s`; then one trial request is let through (half-open), and its outcome
closes the circuit or opens it again."""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(slots=True)
class Breaker:
    threshold: int = 5
    reset_s: float = 10.0
    failures: int = 0
    opened_at: float | None = None
    trial: bool = False  # a half-open trial request is in flight

    def allow(self) -> float | None:
        """None if a request may go upstream now; else the seconds until the next trial."""
        if self.opened_at is None:
            return None
        waited = time.monotonic() - self.opened_at
        if waited >= self.reset_s and not self.trial:
            self.trial = True
            return None
        return max(self.reset_s - waited, 0.0)

    def abandon(self) -> None:
        """A request ended without a verdict on the upstream (its client went away)."""
        self.trial = False

    def success(self) -> None:
        self.failures, self.opened_at, self.trial = 0, None, False

    def failure(self) -> None:
        self.failures += 1
        if self.trial or self.failures >= self.threshold:
            self.opened_at, self.trial = time.monotonic(), False

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half-open" if self.trial else "open"
