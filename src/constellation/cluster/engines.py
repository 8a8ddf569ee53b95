"""The engine interface the app uses (`embed`, `classify`, `prepare`, `generate`, `stats`,
`unready`, `close`) with Ray Serve deployment handles behind it, as engine/remote.py puts
worker processes behind it: what an ingress replica holds instead of engines of its own.

A call goes to its base's group's deployment, with the adapter as the multiplexed model id
(see cluster/replicas.py). An engine replica that dies under a call fails it with
`EngineUnavailable` (503, retry); an engine call has no side effect (the ingress meters), so a
call that had produced nothing yet is first tried once more, on whichever replica Ray picks."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ray import exceptions as ray_errors
from ray.serve.exceptions import BackPressureError, RayServeException
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from constellation.api.engines import Engines
from constellation.config import ClusterLimits, Settings
from constellation.errors import ConstellationError, EngineUnavailable, Overloaded
from constellation.providers.pool import Upstreams

if TYPE_CHECKING:
    from constellation.engine.decoder.sequence import Delta, Prepared
    from constellation.engine.encoder.interface import ClassifyResult, EncodeResult
    from constellation.engine.spec import AdapterSpec, BaseSpec

T = TypeVar("T")
DEFAULT_GROUP = "default"
_LOST = "an engine replica stopped under this request and is being restarted; retry it"
_BUSY = "every engine replica of this model is at its queue limit; retry shortly"
# How long a blocking `prepare` waits for a replica (cold start: the base's tokenizer loads).
PREPARE_TIMEOUT_S = 300.0


def group_of(base: str, limits: ClusterLimits) -> str:
    """The engine deployment group serving `base`: the first group that names it, else default."""
    return next((g for g, bases in limits.groups.items() if base in bases), DEFAULT_GROUP)


def groups(limits: ClusterLimits) -> list[str]:
    return [*dict.fromkeys([*limits.groups, DEFAULT_GROUP])]


def engine_failure(exc: BaseException) -> BaseException:
    """What a failed engine call means to the app: the engine's own error (raised again as its
    `ConstellationError`, so the HTTP mapping does not change), or 503 when its replica is gone."""
    cause = getattr(exc, "cause", None)  # a RayTaskError carries the replica's exception
    if isinstance(cause, ConstellationError):
        return cause
    if isinstance(exc, ConstellationError):
        return exc
    if isinstance(exc, BackPressureError):
        return Overloaded(_BUSY, retry_after_s=1)
    if isinstance(exc, ray_errors.RayActorError | ray_errors.ActorUnavailableError | RayServeException):
        return EngineUnavailable(_LOST, retry_after_s=1)
    if isinstance(exc, ray_errors.RayTaskError):
        return ConstellationError(f"the engine failed: {cause or exc}")
    return exc


def _lost(exc: BaseException) -> bool:
    return isinstance(engine_failure(exc), EngineUnavailable)


class _Handles:
    """Deployment handles per group, and the counters `stats()` reports."""

    def __init__(self, handles: dict[str, DeploymentHandle], limits: ClusterLimits) -> None:
        self._handles = handles
        self._limits = limits
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()

    def to(self, base: BaseSpec, adapter: AdapterSpec | None, **options: Any) -> DeploymentHandle:
        handle = self._handles[group_of(base.name, self._limits)]
        if adapter is not None and self._limits.adapter_affinity:
            options["multiplexed_model_id"] = adapter.name
        return handle.options(**options) if options else handle

    def count(self, what: str) -> None:
        with self._lock:
            self.counts[what] += 1

    async def call(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """`attempt()`, once more if its replica died under it; errors as `engine_failure`."""
        for tries_left in (1, 0):
            self.count("calls")
            try:
                return await attempt()
            except Exception as exc:
                if tries_left and _lost(exc):
                    self.count("retries")
                    continue
                self.count("failed")
                raise engine_failure(exc) from exc
        raise AssertionError("unreachable")

    def stats(self) -> dict[str, float]:
        with self._lock:
            return {k: float(v) for k, v in self.counts.items()}


class RayEncoderEngine:
    """`EncoderEngine`'s interface over the encoder deployments."""

    def __init__(self, handles: dict[str, DeploymentHandle], limits: ClusterLimits) -> None:
        self._h = _Handles(handles, limits)

    async def embed(
        self,
        base: BaseSpec,
        adapter: AdapterSpec | None,
        texts: list[str],
        *,
        truncate: bool = False,
        tenant: str = "",
    ) -> EncodeResult:
        handle = self._h.to(base, adapter)
        return await self._h.call(lambda: handle.embed.remote(base, adapter, texts, truncate, tenant))

    async def classify(
        self,
        base: BaseSpec,
        adapter: AdapterSpec,
        texts: list[str],
        *,
        truncate: bool = False,
        tenant: str = "",
    ) -> ClassifyResult:
        handle = self._h.to(base, adapter)
        return await self._h.call(lambda: handle.classify.remote(base, adapter, texts, truncate, tenant))

    def stats(self) -> dict[str, float]:
        return self._h.stats()

    def unready(self) -> str | None:
        return None  # Ray Serve health-checks and restarts replicas; readiness is per ingress

    def close(self) -> None:
        pass  # the deployments outlive an ingress replica


class RayDecoderEngine:
    """`DecoderEngine`'s interface (`prepare`, `generate`) over the decoder deployments."""

    def __init__(self, handles: dict[str, DeploymentHandle], limits: ClusterLimits) -> None:
        self._h = _Handles(handles, limits)

    def prepare(self, base: BaseSpec, adapter: AdapterSpec | None, **kwargs: Any) -> Prepared:
        """Tokenised and validated by a decoder replica; called from a worker thread (the route
        runs it in one), so it blocks on the answer."""
        handle = self._h.to(base, None)  # any replica: preparing holds no slot
        for tries_left in (1, 0):
            self._h.count("calls")
            try:
                prepared: Prepared = handle.prepare.remote(base, adapter, kwargs).result(
                    timeout_s=PREPARE_TIMEOUT_S
                )
                return prepared
            except Exception as exc:
                if tries_left and _lost(exc):
                    self._h.count("retries")
                    continue
                self._h.count("failed")
                raise engine_failure(exc) from exc
        raise AssertionError("unreachable")

    async def generate(self, prepared: Prepared) -> AsyncIterator[Delta]:
        """The replica's stream; closing this iterator cancels it there, freeing the sequence."""
        handle = self._h.to(prepared.base, prepared.adapter, stream=True)
        for tries_left in (1, 0):
            self._h.count("calls")
            stream: DeploymentResponseGenerator[Delta] = handle.generate.remote(prepared)  # type: ignore[assignment]
            produced = False
            try:
                async for d in stream:
                    produced = True
                    yield d
                return
            except Exception as exc:
                if tries_left and not produced and _lost(exc):
                    self._h.count("retries")
                    continue
                self._h.count("failed")
                raise engine_failure(exc) from exc
            finally:
                stream.cancel()

    def stats(self) -> dict[str, float]:
        return self._h.stats()

    def close(self) -> None:
        pass


class ClusterEngines(Engines):
    """`Engines` whose encoder and decoder are the cluster's deployments (created eagerly:
    a handle is cheap, the replicas behind it already run)."""

    def __init__(
        self,
        settings: Settings,
        upstreams: Upstreams,
        encoders: dict[str, DeploymentHandle],
        decoders: dict[str, DeploymentHandle],
    ) -> None:
        super().__init__(settings.engine, upstreams)
        self._ray_encoder = RayEncoderEngine(encoders, settings.cluster)
        self._ray_decoder = RayDecoderEngine(decoders, settings.cluster)

    # The app calls engines by their interface; these are not the local classes Engines names.
    @property
    def encoder(self) -> Any:
        return self._ray_encoder

    @property
    def decoder(self) -> Any:
        return self._ray_decoder

    def stats(self) -> dict[str, dict[str, float]]:
        return {"encoder": self._ray_encoder.stats(), "decoder": self._ray_decoder.stats()}

    def unready(self) -> str | None:
        return None

    def close(self) -> None:
        pass
