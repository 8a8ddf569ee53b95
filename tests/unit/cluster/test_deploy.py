"""Cluster mode's settings checks, what replicas receive, routing by base group, and the engine
errors the ingress maps; plus: one process never imports Ray."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from constellation.config import ClusterLimits, EngineLimits, RateLimits, Settings
from constellation.errors import EngineUnavailable, InvalidInput, Overloaded

PG = "postgresql+psycopg://u@db:5432/c"


def test_the_single_machine_server_never_imports_ray(tmp_path: Path) -> None:
    code = (
        "import sys; from constellation.cli import app; from constellation.api.app import create_app; "
        "from constellation.config import Settings; "
        f"create_app(Settings(data_dir={str(tmp_path)!r})); "
        "assert 'ray' not in sys.modules, 'ray imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cluster_limits_refuse_a_maximum_below_the_minimum() -> None:
    with pytest.raises(ValidationError, match="ingress_max_replicas"):
        ClusterLimits(ingress_replicas=3, ingress_max_replicas=2)


deploy = pytest.importorskip("constellation.cluster.deploy", reason="the `cluster` extra is not installed")


def test_cluster_mode_refuses_sqlite_naming_what_to_set(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="CONSTELLATION_DB_URL=postgresql"):
        deploy.check_cluster_settings(Settings(data_dir=tmp_path))
    deploy.check_cluster_settings(Settings(data_dir=tmp_path, db_url=PG))


@pytest.mark.parametrize(
    "shared",
    [{"rate_limits": RateLimits(key_rpm=60)}, {"cluster": ClusterLimits(ingress_max_replicas=2)}],
)
def test_cluster_rate_limits_need_redis_once_buckets_are_shared(tmp_path: Path, shared: dict) -> None:  # type: ignore[type-arg]
    with pytest.raises(InvalidInput, match="CONSTELLATION_REDIS_URL"):
        deploy.check_cluster_settings(Settings(data_dir=tmp_path, db_url=PG, **shared))
    deploy.check_cluster_settings(
        Settings(data_dir=tmp_path, db_url=PG, redis_url="redis://r:6379/0", **shared)
    )


def test_replicas_get_absolute_paths_and_no_worker_processes(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    s = Settings(data_dir=Path("rel"), db_url=PG, engine=EngineLimits(encoder_process=True))
    dump = deploy.for_replicas(s)
    again = deploy.replica_settings(dump)
    assert again.data_dir == tmp_path / "rel" and again.database_url == PG
    assert again.engine.encoder_process is False


def test_memory_budget_is_what_the_engine_may_fill() -> None:
    e = EngineLimits(base_model_bytes=100, adapter_host_bytes=20, kv_cache_bytes=7)
    assert deploy.memory_budget(e, decoder=False) == 120
    assert deploy.memory_budget(e, decoder=True) == 127


def test_bases_route_to_their_group_else_default() -> None:
    from constellation.cluster.engines import group_of, groups

    limits = ClusterLimits(groups={"big": ["llama-8b"], "small": ["minilm", "llama-8b"]})
    assert group_of("llama-8b", limits) == "big"
    assert group_of("minilm", limits) == "small"
    assert group_of("other", limits) == "default"
    assert groups(limits) == ["big", "small", "default"]


def test_engine_failures_keep_their_http_meaning() -> None:
    from ray import exceptions as rx
    from ray.serve.exceptions import BackPressureError

    from constellation.cluster.engines import engine_failure

    bad = InvalidInput("too long", param="input")
    wrapped = rx.RayTaskError("embed", "traceback", bad)
    assert engine_failure(wrapped) is bad
    assert isinstance(engine_failure(rx.ActorDiedError()), EngineUnavailable)
    assert isinstance(
        engine_failure(BackPressureError(num_queued_requests=9, max_queued_requests=8)), Overloaded
    )
    other = ValueError("x")
    assert engine_failure(other) is other


def test_serve_on_ray_refuses_sqlite_before_creating_it(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from constellation.cli import app

    env = {"CONSTELLATION_DATA_DIR": str(tmp_path), "CONSTELLATION_DB_URL": None}
    out = CliRunner().invoke(app, ["serve", "--ray", "local"], env=env)
    assert out.exit_code == 1 and "needs PostgreSQL" in out.stderr
    assert not (tmp_path / "constellation.db").exists()
