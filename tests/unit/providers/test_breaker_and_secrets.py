"""The circuit breaker's states and the secret source (environment, then the secrets file)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from constellation.errors import InvalidInput
from constellation.providers.breaker import Breaker
from constellation.providers.secrets import SecretSource, check_var, parse


def test_the_breaker_opens_after_the_threshold_then_lets_one_trial_through() -> None:
    b = Breaker(threshold=3, reset_s=0.05)
    for _ in range(2):
        b.failure()
    assert b.allow() is None and b.state == "closed"
    b.failure()
    wait = b.allow()
    assert b.state == "open" and wait is not None and 0 < wait <= 0.05
    time.sleep(0.06)
    assert b.allow() is None and b.state == "half-open"  # the trial
    assert b.allow() is not None  # only one trial at a time
    b.failure()  # the trial failed: open again at once
    assert b.state == "open" and b.allow() is not None
    time.sleep(0.06)
    assert b.allow() is None
    b.success()
    assert b.state == "closed" and b.failures == 0


def test_an_abandoned_trial_does_not_keep_the_circuit_open() -> None:
    b = Breaker(threshold=1, reset_s=0.01)
    b.failure()
    time.sleep(0.02)
    assert b.allow() is None
    b.abandon()  # its client went away: no verdict
    assert b.allow() is None


def test_secrets_come_from_the_environment_then_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = tmp_path / "secrets.env"
    f.write_text("# provider keys\nexport UP_A='from-file'\nUP_B = \"b\"\n\nnot a line\n")
    source = SecretSource(f)
    monkeypatch.setenv("UP_A", "from-env")
    assert source.get("UP_A") == "from-env" and source.get("UP_B") == "b"
    monkeypatch.delenv("UP_A")
    assert source.get("UP_A") == "from-file"
    f.write_text("UP_A=rotated\n")  # read again when the file changes
    os.utime(f, ns=(time.time_ns(), time.time_ns() + 1_000_000))
    assert source.get("UP_A") == "rotated" and source.get("UP_B") is None
    assert SecretSource(tmp_path / "missing").get("UP_A") is None
    assert parse("A=1\nB='x=y'") == {"A": "1", "B": "x=y"}


@pytest.mark.parametrize("name", ["CONSTELLATION_DB_URL", "constellation_x", "1ABC", "A B", "A" * 200])
def test_variable_names_that_could_leak_settings_are_refused(name: str) -> None:
    with pytest.raises(InvalidInput):
        check_var(name)
