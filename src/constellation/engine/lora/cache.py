"""The two-tier adapter cache: disk -> host memory (LRU within a byte budget) -> slots of one
base's LoRA layers (LRU); a batch pins the adapters it uses, and concurrent first requests
load an adapter once.
"""

from __future__ import annotations

import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from constellation.engine.lora.adapters import ClassifierHead, LoadedAdapter, load_adapter
from constellation.engine.lora.layer import NO_ADAPTER, MultiLoRALinear
from constellation.engine.spec import AdapterSpec
from constellation.errors import InvalidInput, Overloaded


@dataclass(slots=True)
class _Slot:
    index: int
    head: ClassifierHead | None
    pins: int = 0


class AdapterCache:
    """Disk -> host (LRU within `host_bytes`) -> slots of `layers` (LRU within `n_slots`).

    `acquire(specs)` returns one slot per spec (NO_ADAPTER for None) and pins those adapters
    until `release(specs)`; pinned adapters are never evicted. Thread-safe; slot writes happen
    inside `acquire`, so call it between forwards (the engine's worker thread does).
    `name_map` turns an adapter's HF module path into a key of `layers` (None = unknown).
    """

    def __init__(
        self,
        layers: Mapping[str, MultiLoRALinear],
        n_slots: int,
        host_bytes: int,
        *,
        loader: Callable[[AdapterSpec], LoadedAdapter] = load_adapter,
        name_map: Callable[[str], str | None] | None = None,
    ) -> None:
        self._layers = dict(layers)
        self._n_slots = n_slots
        self._host_bytes = host_bytes
        self._loader = loader
        self._name_map = name_map or (lambda hf: hf if hf in self._layers else None)
        self._lock = threading.Lock()
        self._host: OrderedDict[str, LoadedAdapter] = OrderedDict()
        self._loading: dict[str, threading.Event] = {}
        self._slots: OrderedDict[str, _Slot] = OrderedDict()
        self._free = list(range(n_slots - 1, -1, -1))
        self.loads = 0  # disk loads, for stats and tests
        self.slot_writes = 0
        # adapter_hits / _misses / _evictions count slot uses; adapter_host_* the host tier.
        self.counts: Counter[str] = Counter()

    @property
    def n_slots(self) -> int:
        return self._n_slots

    def prefetch(self, spec: AdapterSpec) -> LoadedAdapter:
        """Ensure `spec` is in host memory; concurrent callers for one adapter load it once."""
        while True:
            with self._lock:
                if spec.name in self._host:
                    self._host.move_to_end(spec.name)
                    self.counts["adapter_host_hits"] += 1
                    return self._host[spec.name]
                event = self._loading.get(spec.name)
                if event is None:
                    event = self._loading[spec.name] = threading.Event()
                    break
            event.wait()  # another thread is loading it; then re-check (it may have failed)
        try:
            adapter = self._loader(spec)
            self._check_targets(adapter)
        finally:
            with self._lock:
                del self._loading[spec.name]
            event.set()
        with self._lock:
            self.loads += 1
            self.counts["adapter_host_misses"] += 1
            self._host[spec.name] = adapter
            self._evict_host()
        return adapter

    def in_host(self, spec: AdapterSpec) -> LoadedAdapter | None:
        """`spec` if it is in host memory already (no load); None otherwise."""
        with self._lock:
            adapter = self._host.get(spec.name)
            if adapter is not None:
                self._host.move_to_end(spec.name)
            return adapter

    def head(self, name: str) -> ClassifierHead | None:
        """The head of an adapter currently in a slot (acquired)."""
        with self._lock:
            return self._slots[name].head

    def acquire(self, specs: Sequence[AdapterSpec | None]) -> list[int]:
        """Slot per spec (NO_ADAPTER for None); pins every adapter used until `release`."""
        names = list(dict.fromkeys(s.name for s in specs if s is not None))
        if len(names) > self._n_slots:
            raise Overloaded(f"a batch uses {len(names)} adapters but only {self._n_slots} slots exist")
        by_name = {s.name: s for s in specs if s is not None}
        pinned: list[str] = []
        try:
            for name in names:
                self._pin(by_name[name])
                pinned.append(name)
        except BaseException:
            self._unpin(pinned)
            raise
        with self._lock:
            return [NO_ADAPTER if s is None else self._slots[s.name].index for s in specs]

    def release(self, specs: Sequence[AdapterSpec | None]) -> None:
        """Unpin what `acquire(specs)` pinned."""
        self._unpin(list(dict.fromkeys(s.name for s in specs if s is not None)))

    def pinned(self) -> set[str]:
        with self._lock:
            return {n for n, s in self._slots.items() if s.pins > 0}

    def resident(self) -> list[str]:
        """Adapters in slots, least recently used first."""
        with self._lock:
            return list(self._slots)

    def _pin(self, spec: AdapterSpec) -> None:
        with self._lock:
            slot = self._slots.get(spec.name)
            if slot is not None:
                slot.pins += 1
                self._slots.move_to_end(spec.name)
                self.counts["adapter_hits"] += 1
                return
            self.counts["adapter_misses"] += 1
        adapter = self.prefetch(spec)  # outside the lock: may read disk
        with self._lock:
            slot = self._slots.get(spec.name)
            if slot is None:
                index = self._take_slot()
                try:
                    self._write(index, adapter)
                except BaseException:
                    self._free.append(index)
                    raise
                slot = self._slots[spec.name] = _Slot(index=index, head=adapter.head)
            slot.pins += 1
            self._slots.move_to_end(spec.name)

    def _unpin(self, names: Sequence[str]) -> None:
        with self._lock:
            for name in names:
                self._slots[name].pins -= 1

    def _take_slot(self) -> int:
        if self._free:
            return self._free.pop()
        victim = next((n for n, s in self._slots.items() if s.pins == 0), None)
        if victim is None:
            raise Overloaded(f"all {self._n_slots} adapter slots are in use; retry shortly")
        self.counts["adapter_evictions"] += 1
        return self._slots.pop(victim).index

    def _write(self, index: int, adapter: LoadedAdapter) -> None:
        mapped = {self._name_map(hf): w for hf, w in adapter.modules.items()}
        for key, layer in self._layers.items():
            w = mapped.get(key)
            if w is None:
                layer.clear_slot(index)
            else:
                layer.set_slot(index, w.A, w.B, w.scale)
        self.slot_writes += 1

    def _check_targets(self, adapter: LoadedAdapter) -> None:
        unknown = [hf for hf in adapter.modules if self._name_map(hf) is None]
        if unknown:
            raise InvalidInput(
                f"adapter {adapter.name!r} adapts modules this base cannot serve: {unknown[:3]}; "
                "target the attention/MLP linear layers of the same base"
            )
        for hf, w in adapter.modules.items():
            layer = self._layers[self._name_map(hf) or hf]
            if w.A.shape[0] > layer.max_rank:
                raise InvalidInput(
                    f"adapter {adapter.name!r} has rank {w.A.shape[0]} on {hf}; this engine serves "
                    f"ranks up to {layer.max_rank}: retrain with a smaller r"
                )

    def _evict_host(self) -> None:
        total = sum(a.nbytes for a in self._host.values())
        for name in list(self._host):
            if total <= self._host_bytes or len(self._host) <= 1:
                break
            slot = self._slots.get(name)
            if slot is not None and slot.pins > 0:
                continue
            total -= self._host.pop(name).nbytes
            self.counts["adapter_host_evictions"] += 1
