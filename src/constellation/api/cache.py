"""A short-lived cache for the hot path's registry reads (API keys, resolved models).

An entry is fresh for `ttl_s`. Once stale, the first caller to ask is told to reload it, and
every other caller keeps the stale value until that reload lands (for at most another `ttl_s`):
under load an expiry costs one database read, not one per request in flight. `clear` wins over
reloads in flight: what they read may predate the write that cleared the cache, so it is not kept."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class RefreshingCache(Generic[K, V]):
    def __init__(self, ttl_s: float, *, max_entries: int = 10_000) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._entries: dict[K, tuple[float, V]] = {}
        self._reloading: set[K] = set()
        self._generation = 0  # bumped by `clear`
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        """The value, fresh or stale while another caller reloads it; None means: load it, then
        `put` it (or `drop` the key if the load fails)."""
        now = time.monotonic()
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None:
                age = now - hit[0]
                if age < self.ttl_s or (key in self._reloading and age < 2 * self.ttl_s):
                    return hit[1]
            self._reloading.add(key)
            return None

    def load(self, key: K, fn: Callable[[], V]) -> V:
        """`fn()`, cached under `key` unless `clear` ran meanwhile; if it raises, `key` is
        forgotten (nothing stale is served)."""
        generation = self._generation
        try:
            value = fn()
        except BaseException:
            self.drop(key)
            raise
        self.put(key, value, generation=generation)
        return value

    def put(self, key: K, value: V, *, generation: int | None = None) -> None:
        """Cache `value`; with `generation` (read before loading it), only if no `clear` since."""
        with self._lock:
            if generation is not None and generation != self._generation:
                self._reloading.discard(key)
                return
            if len(self._entries) >= self.max_entries and key not in self._entries:
                self._entries.clear()
            self._entries[key] = (time.monotonic(), value)
            self._reloading.discard(key)

    def drop(self, key: K) -> None:
        """Forget `key` (its load failed: the next caller tries again)."""
        with self._lock:
            self._entries.pop(key, None)
            self._reloading.discard(key)

    def clear(self) -> None:
        with self._lock:
            self._generation += 1
            self._entries.clear()
            self._reloading.clear()
