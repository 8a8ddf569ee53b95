"""Serving-process runtime settings (GIL switch interval, gc.freeze), FastAPI's OTel bridge
switch, and counter-based request ids."""

from __future__ import annotations

import gc
import inspect
import sys
from pathlib import Path
from typing import Any

import pytest

from constellation.api import app as app_module
from constellation.api.app import _telemetry, tune_interpreter
from constellation.api.pipeline import new_request_id
from constellation.config import Settings


def test_tune_interpreter_sets_switch_interval_and_freezes(tmp_path: Path) -> None:
    old = sys.getswitchinterval()
    gc.unfreeze()  # start from nothing frozen, so the count below can only come from the call
    try:
        assert gc.get_freeze_count() == 0
        tune_interpreter(Settings(gil_switch_interval_ms=1.0, data_dir=tmp_path))
        assert sys.getswitchinterval() == pytest.approx(0.001)
        assert gc.get_freeze_count() > 0
    finally:
        sys.setswitchinterval(old)
        gc.unfreeze()


def test_switch_interval_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="gil_switch_interval_ms"):
        Settings(gil_switch_interval_ms=0, data_dir=tmp_path)


def test_telemetry_off_unless_otel(tmp_path: Path) -> None:
    assert _telemetry(Settings(otel=True, data_dir=tmp_path)) == {}
    off = _telemetry(Settings(data_dir=tmp_path))
    if "telemetry" in inspect.signature(app_module.FastAPI.__init__).parameters:
        assert off == {"telemetry": {"tracing": False, "metrics": False, "logs": False}}
    else:
        assert off == {}


def test_telemetry_omitted_for_a_fastapi_without_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class OldFastAPI:
        def __init__(self, title: str = "", **extra: Any) -> None:
            pass

    monkeypatch.setattr(app_module, "FastAPI", OldFastAPI)
    assert _telemetry(Settings(data_dir=tmp_path)) == {}


def test_request_ids_are_distinct_prefixed_and_fixed_width() -> None:
    ids = [new_request_id() for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert all(i.startswith("req_") for i in ids)
    assert len({len(i) for i in ids}) == 1
