"""The Ray Serve application: the API ingress (the same FastAPI app, HTTP, auth, licences and
metering; N replicas autoscaled on ongoing requests) and, per base model group, an encoder and a
decoder deployment whose replicas each hold one engine within the engine byte budgets.

Every replica gets the driver's settings, so every node must see the same database (PostgreSQL),
Redis and artifact directory (a shared mount at the same path): see README "Deploying a cluster"."""

from __future__ import annotations

from typing import Any, Literal

from ray import serve
from ray.serve.handle import DeploymentHandle

from constellation.cluster.engines import DEFAULT_GROUP, ClusterEngines, groups
from constellation.cluster.replicas import DecoderReplica, EncoderReplica, deployment_class, replica_settings
from constellation.config import EngineLimits, Settings
from constellation.errors import InvalidInput
from constellation.providers.pool import Upstreams

INGRESS = "ingress"


def check_cluster_settings(settings: Settings) -> None:
    """Refuse what cannot be shared across replicas and nodes, saying what to set instead."""
    if settings.database_url.startswith("sqlite"):
        raise InvalidInput(
            "serve --ray needs PostgreSQL: every ingress replica meters into one ledger, and a SQLite "
            "file cannot be shared across processes and nodes; set "
            "CONSTELLATION_DB_URL=postgresql+psycopg://USER@HOST:5432/DB"
        )
    limits = settings.rate_limits
    shared = settings.cluster.ingress_max_replicas > 1 or any(
        (limits.key_rpm, limits.key_tpm, limits.tenant_rpm, limits.tenant_tpm)
    )
    if shared and not settings.redis_url:
        raise InvalidInput(
            "serve --ray with more than one ingress replica (or rate limits) needs Redis, or each "
            "replica would keep rate-limit buckets of its own; set CONSTELLATION_REDIS_URL=redis://HOST:6379/0"
        )


def for_replicas(settings: Settings) -> dict[str, Any]:
    """The settings every replica receives: paths made absolute (a replica's working directory
    is Ray's, not the driver's), the database URL spelled out."""
    dump = settings.model_dump(mode="json")
    dump["data_dir"] = str(settings.data_dir.resolve())
    dump["db_url"] = settings.database_url
    dump["engine"]["encoder_process"] = False  # a replica is already a process of its own
    return dump


def memory_budget(engine: EngineLimits, *, decoder: bool) -> int:
    """Ray's `memory` reservation for one engine replica: the byte budgets its engine may fill."""
    kv = engine.kv_cache_bytes if decoder else 0
    return engine.base_model_bytes + engine.adapter_host_bytes + kv


def _scaling(least: int, most: int, target: float) -> dict[str, Any]:
    if least == most:
        return {"num_replicas": least}
    return {
        "autoscaling_config": {
            "min_replicas": least,
            "max_replicas": most,
            "target_ongoing_requests": target,
        }
    }


def engine_deployment(
    kind: Literal["encoder", "decoder"], settings: Settings, group: str = DEFAULT_GROUP
) -> Any:
    """One group's encoder or decoder deployment: replicas within the engine byte budgets."""
    c, e = settings.cluster, settings.engine
    cls = DecoderReplica if kind == "decoder" else EncoderReplica
    threads = str(max(1, int(c.engine_cpus)))
    return serve.deployment(
        deployment_class(cls, c.adapters_per_replica or e.adapter_slots),
        name=f"{kind}-{group}",
        max_ongoing_requests=c.max_ongoing_requests,
        ray_actor_options={
            "num_cpus": c.engine_cpus,
            "memory": c.engine_memory_bytes or memory_budget(e, decoder=kind == "decoder"),
            "runtime_env": {"env_vars": {"OMP_NUM_THREADS": threads, "OMP_WAIT_POLICY": "PASSIVE"}},
        },
        **_scaling(c.engine_replicas, c.engine_max_replicas, c.target_ongoing_requests),
    )


class Ingress:
    """The FastAPI app of one process, its engines being the cluster's deployments."""

    def __init__(
        self,
        dump: dict[str, Any],
        encoders: dict[str, DeploymentHandle],
        decoders: dict[str, DeploymentHandle],
    ) -> None:
        self.settings = replica_settings(dump)
        self.encoders = encoders
        self.decoders = decoders

    def __serve_build_asgi_app__(self) -> Any:
        from constellation.api.app import create_app

        def engines(settings: Settings, upstreams: Upstreams) -> ClusterEngines:
            return ClusterEngines(settings, upstreams, self.encoders, self.decoders)

        return create_app(self.settings, engines=engines)


def build(settings: Settings) -> Any:
    """The application to `serve.run`: the ingress bound to every group's engine deployments."""
    check_cluster_settings(settings)
    c = settings.cluster
    dump = for_replicas(settings)
    encoders = {g: engine_deployment("encoder", settings, g).bind(dump) for g in groups(c)}
    decoders = {g: engine_deployment("decoder", settings, g).bind(dump) for g in groups(c)}
    ingress: Any = serve.deployment(
        serve.ingress()(Ingress),
        name=INGRESS,
        max_ongoing_requests=c.max_ongoing_requests,
        ray_actor_options={"num_cpus": c.ingress_cpus, "runtime_env": {"env_vars": {"OMP_NUM_THREADS": "1"}}},
        **_scaling(c.ingress_replicas, c.ingress_max_replicas, c.target_ongoing_requests),
    )
    return ingress.bind(dump, encoders, decoders)


def start(settings: Settings, address: str | None, *, host: str, port: int) -> str:
    """Connect to the Ray cluster at `address` (or start a local one), deploy, return the URL."""
    import ray

    check_cluster_settings(settings)  # before starting anything
    ray.init(address=address, namespace="constellation", ignore_reinit_error=True, log_to_driver=False)
    serve.start(http_options={"host": host, "port": port}, proxy_location=settings.cluster.proxy_location)
    serve.run(build(settings), name=settings.cluster.app_name, route_prefix="/", blocking=False)
    return f"http://{host}:{port}"


def replica_stats(
    app_name: str, deployment: str, replicas: int, *, calls: int = 64
) -> dict[str, dict[str, float]]:
    """Each replica's engine statistics, by replica id. A handle routes a call to one replica of
    its choosing, so this asks until `replicas` have answered or `calls` calls are spent."""
    handle = serve.get_deployment_handle(deployment, app_name=app_name)
    seen: dict[str, dict[str, float]] = {}
    for _ in range(calls):
        rid, stats = handle.stats.remote().result(timeout_s=60)
        seen[rid] = stats
        if len(seen) == replicas:
            break
    return seen


def app_builder(args: dict[str, Any]) -> Any:
    """For a Serve config file (`import_path: constellation.cluster.deploy:app_builder`, as in
    examples/cluster/rayservice.yaml): the application from CONSTELLATION_* variables, which the
    config's runtime_env sets; `args` is unused (every setting has its variable)."""
    return build(Settings())
