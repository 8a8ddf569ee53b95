"""The hot path's registry cache: an expiry under load costs one reload, not one per request."""

from __future__ import annotations

import pytest

from constellation.api import cache as cache_mod
from constellation.api.cache import RefreshingCache


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(cache_mod.time, "monotonic", c)
    return c


def test_a_stale_entry_is_reloaded_by_one_caller_while_the_others_keep_it(clock: Clock) -> None:
    c: RefreshingCache[str, int] = RefreshingCache(ttl_s=2.0)
    assert c.get("k") is None  # first ever: load it
    c.put("k", 1)
    clock.now += 1.0
    assert c.get("k") == 1  # fresh
    clock.now += 1.5  # stale
    assert c.get("k") is None  # this caller reloads
    assert [c.get("k") for _ in range(5)] == [1] * 5  # the rest keep the old value meanwhile
    c.put("k", 2)
    assert c.get("k") == 2


def test_a_reload_that_never_lands_stops_shielding_after_another_ttl(clock: Clock) -> None:
    c: RefreshingCache[str, int] = RefreshingCache(ttl_s=2.0)
    c.get("k")
    c.put("k", 1)
    clock.now += 2.5
    assert c.get("k") is None
    clock.now += 2.0  # 4.5 s old: too stale to serve even while a reload is under way
    assert c.get("k") is None


def test_a_failed_load_forgets_the_key_and_clear_forgets_everything(clock: Clock) -> None:
    c: RefreshingCache[str, int] = RefreshingCache(ttl_s=2.0)
    c.get("k")
    c.put("k", 1)
    clock.now += 3.0
    assert c.get("k") is None
    c.drop("k")  # e.g. the key was revoked: the reload raised
    assert c.get("k") is None  # nothing stale is served
    c.put("k", 1)
    c.put("j", 2)
    c.clear()
    assert c.get("k") is None and c.get("j") is None


def test_load_caches_a_value_and_a_failed_load_serves_nothing_stale(clock: Clock) -> None:
    c: RefreshingCache[str, int] = RefreshingCache(ttl_s=2.0)
    assert c.load("k", lambda: 1) == 1
    assert c.get("k") == 1
    clock.now += 3.0
    assert c.get("k") is None  # stale: this caller reloads

    def revoked() -> int:
        raise KeyError("k")

    with pytest.raises(KeyError):
        c.load("k", revoked)
    assert c.get("k") is None  # the old value is gone, not served while the next load runs


def test_a_load_that_started_before_a_clear_is_not_kept() -> None:
    """A revocation clears the cache while a request is still reading the key's old row: that
    read must not be cached, or the revoked key would work for another ttl."""
    c: RefreshingCache[str, str] = RefreshingCache(ttl_s=60.0)

    def load_then_clear() -> str:
        c.clear()  # the admin write lands while this load is in flight
        return "old row"

    assert c.load("k", load_then_clear) == "old row"  # the caller still gets what it read
    assert c.get("k") is None  # but the next caller reads again
    assert c.load("k", lambda: "new row") == "new row"
    assert c.get("k") == "new row"
