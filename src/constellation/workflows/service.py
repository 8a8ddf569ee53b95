"""One workflow run for the API: load the version, check every model any branch can reach for
the tenant (before any compute), admit the author's fee, run the steps, then record the fee,
the run and its steps, and answer with every step's bill and the run's merged split."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from fastapi import Request
from starlette.concurrency import run_in_threadpool

from constellation.api.cache import RefreshingCache
from constellation.api.deps import Principal
from constellation.api.pipeline import MAX_IDEMPOTENCY_KEY, fingerprint, new_request_id
from constellation.api.state import state_of
from constellation.economy.meter import Meter, UsageRecord
from constellation.economy.money import usd
from constellation.economy.workflow_fee import fee_model_name
from constellation.errors import ConstellationError, InvalidInput
from constellation.registry.workflow_tables import WorkflowRun, WorkflowRunStep
from constellation.registry.workflows import get_workflow
from constellation.workflows.calls import PipelineModels, StepRecord
from constellation.workflows.executor import Emit, Run, StepFailed
from constellation.workflows.records import RunRecorder
from constellation.workflows.spec import Spec, check_inputs, parse


@dataclass(slots=True)
class Runtime:
    """Per-app state: parsed workflow versions (immutable, so kept by id), what a name means
    to a tenant (for a couple of seconds, like the resolver's), the embedded texts of `nearest`
    steps, and the writer of run records."""

    recorder: RunRecorder
    specs: dict[int, Spec] = field(default_factory=dict)
    loaded: RefreshingCache[tuple[str, str], Loaded] = field(default_factory=lambda: RefreshingCache(2.0))
    vectors: dict[str, np.ndarray] = field(default_factory=dict)

    def close(self) -> None:
        self.recorder.close()


def runtime(request: Request) -> Runtime:
    """The app's workflow runtime (made on first use; app.py closes it with the app)."""
    state = state_of(request.app)
    rt = state.workflow_runtime
    if rt is None:
        rt = state.workflow_runtime = Runtime(RunRecorder(state.platform.db))
    return rt


@dataclass(frozen=True, slots=True)
class Loaded:
    id: int
    name: str
    version: int
    author: str
    fee: int
    output_kind: str
    spec: Spec


class RunFailed(ConstellationError):
    """A run that failed: the cause's status and code, plus what the body's `constellation` says
    (the run id, the failed step, the steps charged)."""

    def __init__(self, cause: ConstellationError, extra: dict[str, Any]) -> None:
        super().__init__(cause.message, param=cause.param, code=cause.code)
        self.status, self.type, self.extra = cause.status, cause.type, extra


class RunTimeout(ConstellationError):
    status = 504
    type = "server_error"
    code = "workflow_timeout"


async def load(request: Request, caller: Principal, ref: str) -> Loaded:
    """The workflow version `ref` names, as this tenant may see it (parsed once per version,
    looked up at most every couple of seconds)."""
    rt = runtime(request)
    key = (ref, caller.tenant_id)
    hit = rt.loaded.get(key)
    if hit is not None:
        return hit

    def read() -> Loaded:
        with state_of(request.app).platform.db.session() as s:
            wf = get_workflow(s, ref=ref, tenant_id=caller.tenant_id)
            spec = rt.specs.get(wf.id)
            if spec is None:
                spec = rt.specs[wf.id] = parse(wf.document)
            return Loaded(
                wf.id, wf.name, wf.version, wf.author_id, wf.fee_per_run_nanos, wf.output_kind, spec
            )

    return await run_in_threadpool(rt.loaded.load, key, read)


def replay(request: Request, caller: Principal, fp: str) -> dict[str, Any] | None:
    """The first answer of a run sent again under the same Idempotency-Key (the run's fee event
    keeps it), or None."""
    key = request.headers.get("idempotency-key")
    meter: Meter | None = state_of(request.app).meter
    if key is None or meter is None:
        return None
    if not 0 < len(key) <= MAX_IDEMPOTENCY_KEY:
        raise InvalidInput(
            f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} characters", param="Idempotency-Key"
        )
    return meter.replay(tenant_id=caller.tenant_id, idempotency_key=key, fingerprint=fp, with_bill=False)


async def reachable(
    models: PipelineModels, spec: Spec, prefix: str = "", depth: int = 1
) -> list[tuple[str, str]]:
    """(step path, model) for every model any branch of the run can call, sub-workflows included."""
    out = [(prefix + st.name, c.model) for st in spec.steps.values() for c in st.calls()]
    for st in spec.steps.values():
        if st.kind == "workflow" and st.workflow is not None and depth < 16:
            sub, _, _ = await models.load_workflow(st.workflow)
            out += await reachable(models, sub, f"{prefix}{st.name}/", depth + 1)
    return out


async def check_licences(request: Request, caller: Principal, pairs: list[tuple[str, str]]) -> None:
    """Resolve every reachable model for the tenant (visibility, residency, licences) before any
    step runs; a refusal keeps its status and code and names the step."""
    resolver = state_of(request.app).resolver
    for path, model in dict.fromkeys(pairs):
        if resolver.cached(model, tenant_id=caller.tenant_id) is not None:
            continue
        try:
            await run_in_threadpool(resolver.resolve, model, tenant_id=caller.tenant_id)
        except ConstellationError as e:
            e.message = f"step '{path}' uses the model '{model}': {e.message}"
            e.param = f"steps.{path}"
            raise


@dataclass(slots=True)
class Outcome:
    """A finished run, for the route to shape into its answer."""

    run_id: str
    loaded: Loaded
    output: Any
    outputs: dict[str, Any]
    selected: dict[str, str]
    constellation: dict[str, Any]


async def execute(
    request: Request,
    caller: Principal,
    loaded: Loaded,
    raw_inputs: Any,
    *,
    seed: int | None,
    body: dict[str, Any],
    emit: Emit | None = None,
    shape: Any = None,
) -> Outcome | dict[str, Any]:
    """Run `loaded` once (or replay its first answer: then the stored dict is returned). `shape`
    turns the outcome into the body the idempotency record keeps (the route's answer)."""
    state = state_of(request.app)
    inputs = check_inputs(loaded.spec, raw_inputs)
    fp = fingerprint(request.url.path, body)
    key = request.headers.get("idempotency-key")
    stored = await run_in_threadpool(replay, request, caller, fp) if key is not None else None
    if stored is not None:
        return stored
    run_id = getattr(request.state, "request_id", None) or new_request_id()
    rt = runtime(request)
    models = PipelineModels(request, caller, run_id, rt.vectors, rt.specs)
    await check_licences(request, caller, await reachable(models, loaded.spec))
    meter: Meter | None = state.meter
    fee_name = fee_model_name(loaded.name, loaded.version)
    held = await _admit_fee(meter, caller, fee_name, run_id, state.device_class)
    limits = state.settings.workflows
    run = Run(loaded.spec, inputs, models, limits, seed)
    started = datetime.now(UTC)
    try:
        async with asyncio.timeout(limits.run_timeout_s):
            output = await run.execute(emit)
    except TimeoutError:
        await run.cancel()
        cause: ConstellationError = RunTimeout(
            f"the run took longer than {limits.run_timeout_s:g} s (CONSTELLATION_WORKFLOWS__RUN_TIMEOUT_S)"
        )
        raise await _fail(
            request, caller, loaded, run_id, models, cause, None, started, held, fee_name
        ) from None
    except ConstellationError as e:
        step = e.step if isinstance(e, StepFailed) else None
        raise await _fail(request, caller, loaded, run_id, models, e, step, started, held, fee_name) from None
    if meter is not None:
        await _charge_sub_fees(caller, meter, models, state.device_class, started)
    ext = _extension(run_id, loaded, models.records, list(models.notices), started)
    out = Outcome(run_id, loaded, output, dict(run.outputs), dict(run.selected), ext)
    # The fee's event: the author's charge, and the record an Idempotency-Key replays.
    if meter is not None and (loaded.fee > 0 or key is not None or held):
        await _charge_fee(request, caller, meter, out, fee_name, fp, key, held, started, shape)
    await _write_run(request, caller, loaded, run_id, models.records, ext, started, None, None)
    return out


async def _charge_sub_fees(
    caller: Principal, meter: Meter, models: PipelineModels, device: str, started: datetime
) -> None:
    """The fee of each sub-workflow that ran, to its author: one event each, listed as a step."""
    for path, name in models.sub_fees:
        rec = StepRecord(
            path, fee_model_name(*_split_ref(name)), f"{models.run_id}.{path}", status="succeeded"
        )
        bill = await meter.record(
            UsageRecord(
                request_id=rec.request_id,
                tenant_id=caller.tenant_id,
                model_name=rec.model,
                idempotency_key=None,
                fingerprint="",
                input_tokens=0,
                output_tokens=0,
                compute_ns=0,
                device_class=device,
                status="succeeded",
                started_at=started,
                finished_at=datetime.now(UTC),
                response=None,
            )
        )
        rec.price_nanos, rec.split = bill.price_nanos, bill.split
        models.records.append(rec)


def _split_ref(ref: str) -> tuple[str, int]:
    name, _, version = ref.rpartition("@")
    return name, int(version)


async def _charge_fee(
    request: Request,
    caller: Principal,
    meter: Meter,
    out: Outcome,
    fee_name: str,
    fp: str,
    key: str | None,
    held: bool,
    started: datetime,
    shape: Any,
) -> None:
    """Record the author's fee, keeping the run's answer (as the route shapes it) for a replay."""
    ext, device = out.constellation, state_of(request.app).device_class
    total, legs = meter.price(model_name=fee_name, device_class=device)  # the kept answer carries it too
    ext["fee"] = {"request_id": out.run_id, "price_nanos": total, "split": [g.as_dict() for g in legs]}
    _total(ext)
    record = UsageRecord(
        request_id=out.run_id,
        tenant_id=caller.tenant_id,
        model_name=fee_name,
        idempotency_key=key,
        fingerprint=fp,
        input_tokens=0,
        output_tokens=0,
        compute_ns=0,
        device_class=device,
        status="succeeded",
        started_at=started,
        finished_at=datetime.now(UTC),
        response=shape(out) if shape is not None else None,
        hold=held,
    )
    bill = await meter.record(record)
    ext["fee"] = {"request_id": out.run_id, "price_nanos": bill.price_nanos, "split": bill.split}
    _total(ext)  # as charged: a balance that could not cover it all is capped (and said so)


async def _admit_fee(meter: Meter | None, caller: Principal, fee_name: str, run_id: str, device: str) -> bool:
    """Hold the author's fee before any step: a tenant that cannot pay it is refused (402) first."""
    if meter is None or meter.unlimited(caller.tenant_id):
        return False
    total, _ = meter.price(model_name=fee_name, device_class=device)
    if total <= 0:
        return False
    return await run_in_threadpool(
        meter.admit, tenant_id=caller.tenant_id, estimate_nanos=total, hold_id=run_id
    )


async def _fail(
    request: Request,
    caller: Principal,
    loaded: Loaded,
    run_id: str,
    models: PipelineModels,
    cause: ConstellationError,
    step: str | None,
    started: datetime,
    held: bool,
    fee_name: str,
) -> RunFailed:
    """Record the failed run (its completed steps stay charged; the fee is not): the error to raise."""
    meter: Meter | None = state_of(request.app).meter
    if meter is not None and held:  # releases the fee's hold; a failed event is never charged
        await meter.record(
            UsageRecord(
                request_id=run_id,
                tenant_id=caller.tenant_id,
                model_name=fee_name,
                idempotency_key=None,
                fingerprint="",
                input_tokens=0,
                output_tokens=0,
                compute_ns=0,
                device_class=state_of(request.app).device_class,
                status="failed",
                started_at=started,
                finished_at=datetime.now(UTC),
                response=None,
                hold=True,
            )
        )
    ext = _extension(run_id, loaded, models.records, list(models.notices), started)
    ext["failed_step"] = step
    charged = [r for r in models.records if r.status == "succeeded"]
    note = (
        f"; the {len(charged)} step(s) that completed were charged ({usd(ext['price_nanos'])} USD: "
        f"{', '.join(r.step for r in charged)}), the others were not"
        if charged
        else "; nothing was charged"
    )
    await _write_run(request, caller, loaded, run_id, models.records, ext, started, step, cause.message)
    cause.message += note
    return RunFailed(cause, ext)


def _extension(
    run_id: str, loaded: Loaded, records: list[StepRecord], notices: list[str], started: datetime
) -> dict[str, Any]:
    """The run's `constellation` object: each step's bill, the fee (filled in once charged), the
    run's price and split merged by account, and its wall time."""
    ext: dict[str, Any] = {
        "request_id": run_id,
        "run_id": run_id,
        "workflow": loaded.name,
        "version": loaded.version,
        "steps": [r.as_dict() for r in records],
        "compute_ns": sum(r.compute_ns for r in records),
        "wall_ms": round((datetime.now(UTC) - started).total_seconds() * 1000, 3),
        "notices": notices,
        "fee": {"request_id": run_id, "price_nanos": 0, "split": []},
    }
    _total(ext)
    return ext


def _total(ext: dict[str, Any]) -> None:
    """The run's price and its split merged by account: the steps' legs and the fee's, summed."""
    merged: dict[str, int] = {}
    for split in [*(s["split"] for s in ext["steps"]), ext["fee"]["split"]]:
        for leg in split:
            merged[leg["account"]] = merged.get(leg["account"], 0) + int(leg["amount_nanos"])
    price = sum(s["price_nanos"] for s in ext["steps"]) + ext["fee"]["price_nanos"]
    ext["price_nanos"], ext["price_usd"] = price, usd(price)
    ext["split"] = [
        {"account": a, "amount_nanos": x} for a, x in sorted(merged.items(), key=lambda kv: (-kv[1], kv[0]))
    ]


async def _write_run(
    request: Request,
    caller: Principal,
    loaded: Loaded,
    run_id: str,
    records: list[StepRecord],
    ext: dict[str, Any],
    started: datetime,
    failed_step: str | None,
    error: str | None,
) -> None:
    """The run and the usage event of each executed step, for invoices and the dashboard."""
    run = WorkflowRun(
        id=run_id,
        tenant_id=caller.tenant_id,
        workflow_id=loaded.id,
        workflow=loaded.name,
        version=loaded.version,
        status="failed" if error else "succeeded",
        price_nanos=ext["price_nanos"],
        failed_step=failed_step,
        error=error,
        started_us=_us(started),
        finished_us=_us(datetime.now(UTC)),
    )
    steps = [
        WorkflowRunStep(
            request_id=r.request_id,
            run_id=run_id,
            step=r.step,
            model=r.model,
            status=r.status,
            price_nanos=r.price_nanos,
        )
        for r in records
    ]
    await runtime(request).recorder.write(run, steps)


def _us(t: datetime) -> int:
    return int(t.timestamp() * 1_000_000)
