"""Typed settings, read once from `CONSTELLATION_*` environment variables and passed explicitly.

Nothing reads the environment after `Settings()` is built; tests construct their own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from constellation.economy.money import MAX_RATE_NANOS


class EngineLimits(BaseModel):
    """Sizes the engine may use; all byte budgets are for host (or device) memory."""

    device: str = "cpu"
    max_batch_tokens: int = Field(default=8192, gt=0)
    # An encoder step takes at most about this long at its measured cost per token (fewer tokens
    # than `max_batch_tokens` on a slow or busy CPU): a request arriving mid-step waits about two
    # steps, whatever another tenant has queued. 0: steps of `max_batch_tokens` always.
    max_step_ms: float = Field(default=40.0, ge=0)
    # A step starts when its batch is full, `max_batch_wait_ms` after its first request, or once
    # no request has arrived for `batch_quiet_ms`, whichever comes first.
    max_batch_wait_ms: float = Field(default=2.0, ge=0)
    batch_quiet_ms: float = Field(default=1.0, ge=0)
    max_items_per_request: int = Field(default=2048, gt=0)
    # Checked before tokenising (engine/bounds.py): a longer item is a 400 naming it, or with
    # `truncate` is cut to a length that still covers the model's max tokens; a request's
    # items are tokenised in chunks and refused once their tokens pass `max_tokens_per_request`.
    max_chars_per_item: int = Field(default=100_000, gt=0)
    max_tokens_per_request: int = Field(default=300_000, gt=0)
    # After this many tokens, an encoder worker that goes idle gives its freed heap back.
    trim_after_tokens: int = Field(default=65_536, gt=0)
    # A dead encoder worker process is respawned after this delay, doubled on each death in a
    # row (one that never answered) up to `respawn_max_s`.
    respawn_backoff_s: float = Field(default=0.5, ge=0)
    respawn_max_s: float = Field(default=30.0, ge=0)
    adapter_slots: int = Field(default=64, gt=0)
    # The largest LoRA rank either engine serves (vLLM's default limit too); adapters above it are
    # refused when imported. Slot buffers grow to the largest rank loaded, not to this.
    max_lora_rank: int = Field(default=64, gt=0)
    adapter_host_bytes: int = Field(default=2 * 1024**3, gt=0)
    base_model_bytes: int = Field(default=8 * 1024**3, gt=0)
    max_decode_seqs: int = Field(default=64, gt=0)
    kv_cache_bytes: int = Field(default=1024**3, gt=0)
    max_queue: int = Field(default=1024, gt=0)
    # Encoder outputs bitwise identical alone or batched (slower: per-sequence GEMMs, padded
    # lengths). Seeded/greedy decoding is batch-invariant whatever this says.
    deterministic: bool = False
    # Run the encoder engine in a child process of its own (see engine/encoder/remote.py): its forward
    # passes then stop waiting on the GIL while the event loop serves requests. `constellation
    # serve` turns it on unless you set it; in-process is the default for embedding the app.
    encoder_process: bool = False
    # With `encoder_process`: that many engine processes, the cores shared out among them (see
    # engine/encoder/remote.py). 0 picks: one per core up to 4 on a CPU, one on a GPU. Each worker
    # loads its own copy of the models it serves, within the byte budgets above (per worker).
    encoder_workers: int = Field(default=0, ge=0)
    # Encoder linears on a CPU run as oneDNN GEMMs on weights reordered once at load, instead of
    # the BLAS library's GEMM on the plain weights (see `MultiLoRALinear.prepack`). Still fp32,
    # and off in deterministic mode, whose per-sequence GEMMs this does not cover.
    prepacked_linears: bool = True


class PriceBook(BaseModel):
    """Platform-side prices in integer nano-USD; contributors' terms live in the registry."""

    # Rate per compute-second of attributed engine time, by device class.
    infra_nanos_per_second: dict[str, Annotated[int, Field(ge=0, le=MAX_RATE_NANOS)]] = Field(
        default_factory=lambda: {"cpu": 20_000, "gpu": 600_000}
    )
    platform_fee_bps: int = Field(default=1000, ge=0, le=10_000)


# Rate limits are per minute and bounded so that bucket arithmetic stays exact in a float.
MAX_PER_MINUTE = 10**12


class RateLimits(BaseModel):
    """Requests and estimated tokens per minute, per API key and per tenant; 0 = unlimited.
    A tenant's own limits (`constellation tenants set ID --rpm N --tpm N`) replace the
    `tenant_*` defaults. Off by default, as in vLLM or LiteLLM: set them for shared servers."""

    key_rpm: int = Field(default=0, ge=0, le=MAX_PER_MINUTE)
    key_tpm: int = Field(default=0, ge=0, le=MAX_PER_MINUTE)
    tenant_rpm: int = Field(default=0, ge=0, le=MAX_PER_MINUTE)
    tenant_tpm: int = Field(default=0, ge=0, le=MAX_PER_MINUTE)


class WorkflowLimits(BaseModel):
    """Bounds on one workflow run (workflows/): checked at registration where they can be (steps,
    depth), and enforced while it runs (fan-out, tokens, time)."""

    max_steps: int = Field(default=64, gt=0, le=10_000)  # counting sub-workflows' steps
    max_depth: int = Field(default=3, gt=0, le=16)  # sub-workflow calls, nested
    max_fan_out: int = Field(default=64, gt=0, le=100_000)  # items of one map step
    max_total_tokens: int = Field(default=200_000, gt=0)  # input + output over all steps
    run_timeout_s: float = Field(default=300.0, gt=0, le=24 * 3600)


class ClusterLimits(BaseModel):
    """`constellation serve --ray`: how the app is laid out as Ray Serve deployments (see
    cluster/deploy.py). Engine deployments are per base model group, each replica within the
    engine byte budgets above; `groups` names the groups, bases in none serve from "default"."""

    app_name: str = "constellation"
    # API ingress replicas (HTTP, auth, licences, metering): autoscaled between the two counts on
    # ongoing requests per replica; equal counts: a fixed number.
    ingress_replicas: int = Field(default=1, gt=0)
    ingress_max_replicas: int = Field(default=1, gt=0)
    ingress_cpus: float = Field(default=1.0, gt=0)
    # Engine replicas per deployment (one encoder and one decoder deployment per group).
    engine_replicas: int = Field(default=1, gt=0)
    engine_max_replicas: int = Field(default=1, gt=0)
    engine_cpus: float = Field(default=1.0, gt=0)
    # Ray's `memory` reservation of each engine replica; 0: the engine byte budgets it may fill
    # (bases + host adapters, + KV cache for a decoder), so the scheduler never overcommits a node.
    engine_memory_bytes: int = Field(default=0, ge=0)
    target_ongoing_requests: float = Field(default=32.0, gt=0)
    max_ongoing_requests: int = Field(default=256, gt=0)  # per replica, before it queues at the router
    groups: dict[str, list[str]] = Field(default_factory=dict)  # group -> base model names
    # Adapters whose requests a replica attracts (Ray Serve multiplexing); 0: `adapter_slots`.
    adapters_per_replica: int = Field(default=0, ge=0)
    # False: adapter requests are routed like any other, on queue length alone (the baseline
    # `bench cluster` measures affinity against).
    adapter_affinity: bool = True
    # Where Ray Serve runs its HTTP proxies: on every node (behind a load balancer), or on the
    # head only (one address; also what several Ray nodes on one machine need: one port each).
    proxy_location: Literal["EveryNode", "HeadOnly"] = "EveryNode"

    @model_validator(mode="after")
    def _check(self) -> ClusterLimits:
        if self.ingress_max_replicas < self.ingress_replicas:
            raise ValueError("cluster.ingress_max_replicas must be at least cluster.ingress_replicas")
        if self.engine_max_replicas < self.engine_replicas:
            raise ValueError("cluster.engine_max_replicas must be at least cluster.engine_replicas")
        return self


class Settings(BaseSettings):
    """Process-wide configuration. Env vars: CONSTELLATION_DATA_DIR, CONSTELLATION_DB_URL, ..."""

    model_config = SettingsConfigDict(env_prefix="CONSTELLATION_", env_nested_delimiter="__")

    data_dir: Path = Path(".constellation")
    db_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    engine: EngineLimits = Field(default_factory=EngineLimits)
    prices: PriceBook = Field(default_factory=PriceBook)
    metering: bool = True  # False: serve without usage events, prices or charges (benchmarks)
    rate_limits: RateLimits = Field(default_factory=RateLimits)
    workflows: WorkflowLimits = Field(default_factory=WorkflowLimits)

    cluster: ClusterLimits = Field(default_factory=ClusterLimits)  # `serve --ray` only
    # Rate-limit buckets in Redis (e.g. redis://127.0.0.1:6379/0), shared by every server
    # process that names the same one; unset: in this process's memory.
    redis_url: str | None = None
    # How long a server thread may hold the GIL while another waits for it (Python's default is
    # 5 ms). The ledger writer waits for it after every statement while the event loop handles
    # requests; at 5 ms that wait, not the database, bounds postings per second.
    gil_switch_interval_ms: float = Field(default=0.5, gt=0, le=100)
    # FastAPI's OpenTelemetry bridge (spans, metrics and logs to an OTel SDK you configure). Off
    # by default: it checks for a configured provider on every request, and Constellation
    # exports its own Prometheus metrics at /metrics.
    otel: bool = False
    # Request bodies past these sizes are refused with a 413 before the rest is read: fine-tune
    # uploads (under /api/finetunes) get the larger one, every other path the smaller.
    max_body_bytes: int = Field(default=8 * 1024**2, gt=0)
    max_upload_body_bytes: int = Field(default=128 * 1024**2, gt=0)
    # Bytes of uploaded JSONL one tenant's queued and running fine-tuning jobs may hold on disk
    # at once (finetune/uploads.py); each job's files are deleted when it ends.
    finetune_upload_bytes: int = Field(default=64 * 1024**2, gt=0)
    # A fine-tuning job is admitted against its tenant's spending limit for this much compute,
    # and stopped (status cancelled, billed for it) if it runs longer.
    finetune_max_seconds: float = Field(default=3600.0, gt=0, le=7 * 24 * 3600)
    # One JSON line per HTTP request on the `constellation.access` logger (see api/access_log.py).
    access_log: bool = True
    # Upstream providers' keys are read at call time from the environment variable each names,
    # else from this file of `NAME=value` lines (e.g. a mounted secret); never from the database.
    provider_secrets_file: Path | None = None
    # The tokenizer (a tokenizer.json) that counts an upstream answer's tokens when it reports
    # no usage; unset: the packaged MiniLM's. Such usage is marked estimated.
    provider_tokenizer: Path | None = None

    @model_validator(mode="after")
    def _resolve(self) -> Settings:
        self.data_dir = self.data_dir.expanduser()
        return self

    @property
    def database_url(self) -> str:
        """The configured URL, or SQLite inside the data dir."""
        if self.db_url:
            return self.db_url
        return f"sqlite:///{(self.data_dir / 'constellation.db').resolve()}"

    @property
    def artifacts_dir(self) -> Path:
        return self.data_dir / "artifacts"
