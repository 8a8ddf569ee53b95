"""/readyz answers 503 (engine_unavailable, with Retry-After) while an engine worker is down, and
200 again once it is back (engine/encoder/remote.py respawns it; the unit tests kill real workers)."""

from __future__ import annotations

import pytest
from tests.integration.conftest import Api

from constellation.api.state import state_of

pytestmark = pytest.mark.anyio


async def test_readyz_is_503_while_a_worker_is_down(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    engines = state_of(api.app).engines
    monkeypatch.setattr(
        engines, "unready", lambda: "encoder worker(s) [0] of 2 stopped and are being restarted"
    )
    r = await api.client.get("/readyz")
    assert r.status_code == 503 and r.headers["Retry-After"] == "1"
    assert r.json()["error"]["code"] == "engine_unavailable"
    assert "worker(s) [0] of 2" in r.json()["error"]["message"]
    monkeypatch.setattr(engines, "unready", lambda: None)
    assert (await api.client.get("/readyz")).json() == {"status": "ready"}
