"""The engines one server process runs, created on first use so an embeddings-only server
never starts the decoder loop (and vice versa), and the clients of upstream providers; closed
with the app."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from constellation.config import EngineLimits
from constellation.providers.pool import Upstreams

if TYPE_CHECKING:
    from constellation.engine.decoder.engine import DecoderEngine
    from constellation.engine.encoder.engine import EncoderEngine
    from constellation.engine.encoder.remote import RemoteEncoderEngine


class Engines:
    def __init__(self, limits: EngineLimits, upstreams: Upstreams | None = None) -> None:
        self.limits = limits
        self.upstreams = upstreams or Upstreams()  # provider models' clients: one more kind of engine
        self._encoder: EncoderEngine | RemoteEncoderEngine | None = None
        self._decoder: DecoderEngine | None = None
        self._lock = threading.Lock()

    @property
    def encoder(self) -> EncoderEngine | RemoteEncoderEngine:
        with self._lock:
            if self._encoder is None:
                if self.limits.encoder_process:
                    from constellation.engine.encoder.remote import RemoteEncoderEngine

                    self._encoder = RemoteEncoderEngine(self.limits)
                else:
                    from constellation.engine.encoder.engine import EncoderEngine

                    self._encoder = EncoderEngine(self.limits)
            return self._encoder

    @property
    def decoder(self) -> DecoderEngine:
        with self._lock:
            if self._decoder is None:
                from constellation.engine.decoder.engine import DecoderEngine

                self._decoder = DecoderEngine(self.limits)
            return self._decoder

    def stats(self) -> dict[str, dict[str, float]]:
        out = {}
        if self._encoder is not None:
            out["encoder"] = self._encoder.stats()
        if self._decoder is not None:
            out["decoder"] = self._decoder.stats()
        return out

    def unready(self) -> str | None:
        """Why the engines started so far cannot serve in full (a worker is down), or None."""
        return self._encoder.unready() if self._encoder is not None else None

    def close(self) -> None:
        for engine in (self._encoder, self._decoder):
            if engine is not None:
                engine.close()
