"""Several loaded base models within one memory budget, least recently used evicted first.

Generic over what a "loaded base" is, so the encoder and the decoder share it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Generic, TypeVar

from torch import nn

from constellation.engine.spec import BaseSpec
from constellation.errors import Overloaded

M = TypeVar("M")


def module_bytes(module: nn.Module) -> int:
    """Bytes held by a module's parameters and buffers, and by the weight copies its layers
    keep prepacked for the CPU (`prepacked_bytes`, see `MultiLoRALinear.prepack`)."""
    tensors = [*module.parameters(), *module.buffers()]
    prepacked = sum(getattr(m, "prepacked_bytes", 0) for m in module.modules())
    return sum(t.numel() * t.element_size() for t in tensors) + prepacked


@dataclass(slots=True)
class _Entry(Generic[M]):
    model: M
    nbytes: int
    users: int = 0


class ModelCache(Generic[M]):
    """Loaded bases keyed by name, within `budget_bytes`; a base in use is never evicted.

    `load(spec)` builds a base (it must call `spec.resolve()`, which verifies the artifact, on
    every load); `size_of(model)` measures it; `on_evict(model)` frees it. Thread-safe, and
    concurrent first uses of one base load it once.
    """

    def __init__(
        self,
        budget_bytes: int,
        load: Callable[[BaseSpec], M],
        size_of: Callable[[M], int],
        on_evict: Callable[[M], None] | None = None,
    ) -> None:
        self._budget = budget_bytes
        self._load = load
        self._size_of = size_of
        self._on_evict = on_evict
        self._lock = threading.Condition()
        self._entries: OrderedDict[str, _Entry[M]] = OrderedDict()
        self._loading: set[str] = set()
        self.loads = 0
        self.evictions = 0

    @contextmanager
    def use(self, spec: BaseSpec) -> Iterator[M]:
        """The loaded base for `spec`, held (not evictable) inside the block."""
        model = self.acquire(spec)
        try:
            yield model
        finally:
            self.release(spec.name)

    def acquire(self, spec: BaseSpec) -> M:
        """Load `spec` if needed (evicting idle LRU bases to fit) and hold it until `release`."""
        with self._lock:
            while spec.name in self._loading:
                self._lock.wait()
            entry = self._entries.get(spec.name)
            if entry is not None:
                entry.users += 1
                self._entries.move_to_end(spec.name)
                return entry.model
            self._make_room(spec.size_bytes)
            self._loading.add(spec.name)
        try:
            model = self._load(spec)
        finally:
            with self._lock:
                self._loading.discard(spec.name)
                self._lock.notify_all()
        with self._lock:
            self.loads += 1
            self._entries[spec.name] = _Entry(model, self._size_of(model), users=1)
            self._make_room(0)
        return model

    def try_acquire(self, spec: BaseSpec) -> M | None:
        """Hold `spec` if it is loaded already; None (holding nothing) if it would need loading."""
        with self._lock:
            entry = None if spec.name in self._loading else self._entries.get(spec.name)
            if entry is None:
                return None
            entry.users += 1
            self._entries.move_to_end(spec.name)
            return entry.model

    def release(self, name: str) -> None:
        with self._lock:
            self._entries[name].users -= 1

    def models(self) -> list[M]:
        """The loaded models themselves (for statistics)."""
        with self._lock:
            return [e.model for e in self._entries.values()]

    def loaded(self) -> list[str]:
        """Names of loaded bases, least recently used first."""
        with self._lock:
            return list(self._entries)

    def close(self) -> None:
        with self._lock:
            while self._entries:
                _, entry = self._entries.popitem(last=False)
                if self._on_evict:
                    self._on_evict(entry.model)

    def _make_room(self, incoming: int) -> None:
        """Evict idle bases, oldest first, until `incoming` more bytes fit in the budget."""
        used = sum(e.nbytes for e in self._entries.values())
        for name in list(self._entries):
            if used + incoming <= self._budget:
                return
            entry = self._entries[name]
            if entry.users > 0:
                continue
            del self._entries[name]
            used -= entry.nbytes
            self.evictions += 1
            if self._on_evict:
                self._on_evict(entry.model)
        if used + incoming > self._budget and incoming > 0 and self._entries:
            raise Overloaded(
                f"no room to load a {incoming}-byte base: the bases in use hold {used} of "
                f"{self._budget} bytes (raise base_model_bytes or retry shortly)"
            )
