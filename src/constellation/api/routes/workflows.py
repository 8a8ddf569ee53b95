"""Workflows over HTTP: register and read them (`/api/workflows`), run one with its declared
inputs (`POST /v1/workflows/{name}/runs`), and call a text or classification workflow as a
model on /v1/chat/completions, /v1/completions and /v1/classify (the routes' hooks land here)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request, status
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from constellation.api.deps import Admin, InferenceCaller, Principal, SessionDep
from constellation.api.errors import error_body
from constellation.api.pipeline import JSONBody
from constellation.api.protocol import errors
from constellation.errors import ConstellationError, InvalidInput, NotFound
from constellation.registry import workflows as repo
from constellation.workflows import service
from constellation.workflows.service import Loaded, Outcome, RunFailed
from constellation.workflows.validate import describe, register

admin_router = APIRouter(prefix="/api", tags=["workflows"], responses=errors(400, 401, 403, 404))
router = APIRouter(prefix="/v1", tags=["openai"], responses=errors(400, 401, 402, 403, 404, 429, 503, 504))


class WorkflowIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=128, description="a slug; registering it again makes a new version")
    document: str | dict[str, Any] = Field(description="the workflow: YAML or JSON text, or a JSON object")
    author: str = Field(description="the contributor who designed it (paid its per-run fee)")
    visibility: str = Field(default="public", description="public, or private to owner_tenant")
    owner_tenant: str | None = None
    fee_per_run_nanos: int | None = Field(
        default=None, ge=0, le=10**12, description="the author's fee per run (default: the document's terms)"
    )


class GraphOut(BaseModel):
    nodes: list[dict[str, Any]] = Field(description="steps: id, kind, models, workflow")
    edges: list[dict[str, Any]] = Field(description="from, to, kind: data (reads) or select (a switch)")
    output: str


class WorkflowOut(BaseModel):
    """A workflow version as registered (GET /api/workflows/{name})."""

    name: str
    version: int
    versions: list[int]
    description: str
    author: str
    fee_per_run_nanos: int
    visibility: str
    owner_tenant: str | None
    output_kind: str = Field(description="text, classification, embedding or json")
    inputs: dict[str, dict[str, Any]]
    output: str
    graph: GraphOut
    models: list[str] = Field(description="every model any branch can reach")
    effective_terms: dict[str, Any] = Field(description="the union of those models' effective licence terms")
    document: str
    created_at: str


class WorkflowList(BaseModel):
    object: str = "list"
    data: list[WorkflowOut]


class RunStepOut(BaseModel):
    step: str
    model: str
    request_id: str
    status: str
    price_nanos: int


class RunRecordOut(BaseModel):
    run_id: str
    workflow: str
    version: int
    tenant: str
    status: str
    price_nanos: int
    failed_step: str | None
    error: str | None
    started_us: int
    finished_us: int
    steps: list[RunStepOut]


class RunList(BaseModel):
    object: str = "list"
    data: list[RunRecordOut]


class WorkflowRunOut(BaseModel):
    """A run's answer: the output step's value, every executed step's output, and the bill."""

    id: str
    object: str = "workflow.run"
    workflow: str
    version: int
    output: Any
    steps: dict[str, Any] = Field(description="step name -> its output")
    selected: dict[str, str] = Field(description="switch (or cascade) -> the step (or tier) it chose")
    constellation: dict[str, Any] = Field(
        description="run_id, steps (model, usage, compute_ns, price_nanos, split), fee, price_nanos, "
        "split merged by account, notices"
    )


@admin_router.post(
    "/workflows",
    status_code=status.HTTP_201_CREATED,
    response_model=None,
    responses={201: {"model": WorkflowOut}},
)
def add_workflow(body: WorkflowIn, _: Admin, s: SessionDep, request: Request) -> dict[str, Any]:
    """Register a workflow (a new version when the name exists): every step, template, model and
    sub-workflow is checked first; an error names the step and the field."""
    source = body.document if isinstance(body.document, str) else json.dumps(body.document)
    wf = register(
        s,
        name=body.name,
        source=source,
        author_id=body.author,
        limits=request.app.state.settings.workflows,
        visibility=body.visibility,
        owner_tenant_id=body.owner_tenant,
        fee_per_run_nanos=body.fee_per_run_nanos,
    )
    return describe(s, wf)


@admin_router.get("/workflows", response_model=None, responses={200: {"model": WorkflowList}})
def list_workflows(_: Admin, s: SessionDep) -> dict[str, Any]:
    """The latest version of every workflow, with its graph."""
    return {"object": "list", "data": [describe(s, wf) for wf in repo.list_workflows(s)]}


@admin_router.get("/workflows/{name}", response_model=None, responses={200: {"model": WorkflowOut}})
def get_workflow(name: str, _: Admin, s: SessionDep) -> dict[str, Any]:
    """One workflow (`name` or `name@N`): its document, graph, reachable models and their
    effective licence terms (the union over every model any branch can reach)."""
    return describe(s, repo.get_workflow(s, ref=name))


@admin_router.get("/workflows/{name}/runs", response_model=None, responses={200: {"model": RunList}})
def workflow_runs(name: str, _: Admin, s: SessionDep, limit: int = 20) -> dict[str, Any]:
    """Recent runs of a workflow, newest first, each with its executed steps and their prices."""
    wf = repo.get_workflow(s, ref=name)
    return {"object": "list", "data": repo.recent_runs(s, workflow=wf.name, limit=max(1, min(limit, 200)))}


class RunIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: dict[str, Any] = Field(default_factory=dict, description="the workflow's declared inputs")
    seed: int | None = Field(
        default=None,
        ge=-(2**63),
        le=2**64 - 1,
        description="each step's seed derives from it and the step's name",
    )


@router.post("/workflows/{name}/runs", response_model=None, responses={200: {"model": WorkflowRunOut}})
async def run_workflow(name: str, body: RunIn, caller: InferenceCaller, request: Request) -> Any:
    """Run a workflow (`name` or `name@N`) with its declared inputs; the answer has every executed
    step's output and, in `constellation`, each step's model, usage, compute, price and split."""
    loaded = await service.load(request, caller, name)

    def shape(o: Outcome) -> dict[str, Any]:
        return {
            "id": o.run_id,
            "object": "workflow.run",
            "workflow": o.loaded.name,
            "version": o.loaded.version,
            "output": o.output,
            "steps": o.outputs,
            "selected": o.selected,
            "constellation": o.constellation,
        }

    try:
        out = await service.execute(
            request, caller, loaded, body.inputs, seed=body.seed, body=body.model_dump(), shape=shape
        )
    except RunFailed as e:
        return failed(e)
    return JSONBody(out if isinstance(out, dict) else shape(out))


def failed(e: RunFailed) -> JSONResponse:
    """The usual error shape, plus what the run did: its id, the failed step, what was charged."""
    return JSONResponse(
        {**error_body(e.message, e.type, param=e.param, code=e.code), "constellation": e.extra}, e.status
    )


# --- A workflow as a model ------------------------------------------------------------------


async def workflow_named(request: Request, caller: Principal, model: str) -> Loaded | None:
    """The workflow a model name means, when no model has that name (the routes ask after the
    resolver said 404), or None."""
    try:
        return await service.load(request, caller, model)
    except (NotFound, InvalidInput):
        return None


def _single_input(loaded: Loaded, endpoint: str) -> str:
    required = [d for d in loaded.spec.inputs.values() if d.required]
    if len(required) != 1 or required[0].type != "string":
        raise InvalidInput(
            f"the workflow '{loaded.name}' takes {', '.join(loaded.spec.inputs) or 'no inputs'}; "
            f"{endpoint} can call a workflow with exactly one required text input. "
            f"Use POST /v1/workflows/{loaded.name}/runs",
            param="model",
        )
    return required[0].name


def _check_kind(loaded: Loaded, kind: str, endpoint: str) -> None:
    if loaded.output_kind != kind:
        other = {"text": "/v1/chat/completions", "classification": "/v1/classify"}.get(
            loaded.output_kind, f"/v1/workflows/{loaded.name}/runs"
        )
        raise InvalidInput(
            f"the workflow '{loaded.name}' answers with {loaded.output_kind}, not {kind}; call it on {other} "
            f"instead of {endpoint}",
            param="model",
            code="wrong_task",
        )


async def as_generation(
    request: Request, caller: Principal, loaded: Loaded, raw: dict[str, Any], *, text: str, chat: bool
) -> Any:
    """A text workflow answering /v1/chat/completions or /v1/completions (`text`: the last user
    message or the prompt); streamed, the earlier steps run first, then the last step's tokens flow."""
    endpoint = "/v1/chat/completions" if chat else "/v1/completions"
    _check_kind(loaded, "text", endpoint)
    for f in ("tools", "response_format"):
        if raw.get(f):
            raise InvalidInput(f"'{f}' is not supported on a workflow; its steps set their own", param=f)
    name = _single_input(loaded, endpoint)
    prefix = "chatcmpl-" if chat else "cmpl-"
    run_id = request.state.request_id
    created = int(time.time())

    def shape(o: Outcome) -> dict[str, Any]:
        usage = _usage(o.constellation)
        content = o.output.get("text", "") if isinstance(o.output, dict) else str(o.output)
        finish = o.output.get("finish_reason", "stop") if isinstance(o.output, dict) else "stop"
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
        if chat:
            choice["message"] = {"role": "assistant", "content": content}
        else:
            choice["text"] = content
        return {
            "id": prefix + o.run_id[4:],
            "object": "chat.completion" if chat else "text_completion",
            "created": created,
            "model": raw["model"],
            "choices": [choice],
            "usage": usage,
            "constellation": o.constellation,
        }

    seed = raw.get("seed")
    if not raw.get("stream"):
        try:
            out = await service.execute(
                request, caller, loaded, {name: text}, seed=seed, body=raw, shape=shape
            )
        except RunFailed as e:
            return failed(e)
        return JSONBody(out if isinstance(out, dict) else shape(out))
    include = bool((raw.get("stream_options") or {}).get("include_usage"))
    return StreamingResponse(
        _stream(
            request, caller, loaded, raw, {name: text}, shape, chat=chat, include_usage=include, run_id=run_id
        ),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Request-Id": run_id},
    )


def _usage(ext: dict[str, Any]) -> dict[str, int]:
    p = sum(s["usage"]["prompt_tokens"] for s in ext["steps"])
    c = sum(s["usage"]["completion_tokens"] for s in ext["steps"])
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def _sse(obj: dict[str, Any] | str) -> bytes:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj)}\n\n".encode()


async def _stream(
    request: Request,
    caller: Principal,
    loaded: Loaded,
    raw: dict[str, Any],
    inputs: dict[str, Any],
    shape: Any,
    *,
    chat: bool,
    include_usage: bool,
    run_id: str,
) -> AsyncIterator[bytes]:
    """The SSE body: a role chunk, the output step's text as it is generated, then the finish
    chunk carrying the run's `constellation` (committed before it leaves)."""
    pieces: asyncio.Queue[str | None] = asyncio.Queue()
    head = {
        "id": ("chatcmpl-" if chat else "cmpl-") + run_id[4:],
        "created": int(time.time()),
        "model": raw["model"],
        "object": "chat.completion.chunk" if chat else "text_completion",
    }

    def chunk(text: str | None, finish: str | None, first: bool = False) -> dict[str, Any]:
        if chat:
            delta: dict[str, Any] = {"role": "assistant"} if first else {}
            if text:
                delta["content"] = text
            choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        else:
            choice = {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}
        return {**head, "choices": [choice]}

    async def emit(text: str) -> None:
        await pieces.put(text)

    async def work() -> Any:
        try:
            return await service.execute(
                request, caller, loaded, inputs, seed=raw.get("seed"), body=raw, emit=emit, shape=shape
            )
        finally:
            await pieces.put(None)

    task = asyncio.ensure_future(work())
    try:
        yield _sse(chunk("", None, first=True))
        streamed = False
        while (piece := await pieces.get()) is not None:
            streamed = True
            yield _sse(chunk(piece, None))
        try:
            out = await task
        except ConstellationError as e:
            extra = e.extra if isinstance(e, RunFailed) else {}
            yield _sse({**error_body(e.message, e.type, param=e.param, code=e.code), "constellation": extra})
            return
        body = out if isinstance(out, dict) else shape(out)
        choice = body["choices"][0]
        text = choice["message"]["content"] if chat else choice["text"]
        if not streamed and text:  # a replayed run, or an answer that came whole (a cascade's tier)
            yield _sse(chunk(text, None))
        final = chunk(None, choice["finish_reason"])
        if include_usage:
            yield _sse(final)
            yield _sse(
                {**head, "choices": [], "usage": body["usage"], "constellation": body["constellation"]}
            )
        else:
            yield _sse({**final, "constellation": body["constellation"]})
        yield _sse("[DONE]")
    finally:
        if not task.done():  # the client went away: stop the run (steps in flight are not charged)
            task.cancel()


async def as_classification(request: Request, caller: Principal, loaded: Loaded, raw: dict[str, Any]) -> Any:
    """A classification workflow answering /v1/classify (one input per request)."""
    _check_kind(loaded, "classification", "/v1/classify")
    name = _single_input(loaded, "/v1/classify")
    value = raw.get("input")
    texts = [value] if isinstance(value, str) else list(value or [])
    if len(texts) != 1:
        raise InvalidInput("a workflow classifies one input per request; send a string", param="input")

    def shape(o: Outcome) -> dict[str, Any]:
        out = o.output if isinstance(o.output, dict) else {}
        data = [{"index": 0, "label": out.get("label"), "probs": out.get("probs")}]
        usage = _usage(o.constellation)
        return {
            "object": "list",
            "data": data,
            "model": raw["model"],
            "usage": {"prompt_tokens": usage["prompt_tokens"], "total_tokens": usage["total_tokens"]},
            "constellation": o.constellation,
        }

    try:
        out = await service.execute(
            request, caller, loaded, {name: texts[0]}, seed=None, body=raw, shape=shape
        )
    except RunFailed as e:
        return failed(e)
    return JSONBody(out if isinstance(out, dict) else shape(out))


async def or_workflow(request: Request, caller: Principal, exc: NotFound, model: str) -> Loaded:
    """The workflow behind a model name the resolver did not know, or the resolver's 404 again."""
    loaded = await workflow_named(request, caller, model)
    if loaded is None:
        raise exc
    return loaded


def models_entries(s: Any, tenant_id: str, verdicts: dict[str, Any]) -> list[dict[str, Any]]:
    """/v1/models entries for the workflows a tenant can see (`constellation.kind` = workflow),
    permitted when every model any branch can reach is (`verdicts`: /v1/models' own)."""
    out = []
    tasks = {"text": "causal-lm", "classification": "classification", "embedding": "embedding"}
    for wf in repo.list_workflows(s, tenant_id=tenant_id):
        refusal = next(
            (v[1] for m in wf.models if (v := verdicts.get(m)) is not None and v[1] is not None), None
        )
        hidden = next((m for m in wf.models if m not in verdicts), None)
        why = {"code": refusal.code, "message": refusal.message} if refusal else None
        if hidden is not None and why is None:
            why = {"code": "model_not_found", "message": f"it reaches '{hidden}', which you cannot use"}
        notices = list(dict.fromkeys(n for m in wf.models if m in verdicts for n in verdicts[m][0].notices))
        out.append(
            {
                "id": wf.name,
                "object": "model",
                "created": int(wf.created_at.timestamp()),
                "owned_by": wf.author_id,
                "constellation": {
                    "task": tasks.get(wf.output_kind, "workflow"),
                    "kind": "workflow",
                    "base": None,
                    "license": None,
                    "labels": None,
                    "provider": None,
                    "on_platform": None,
                    "lineage": {"base": None, "base_license": None, "datasets": []},
                    "permitted": why is None,
                    "refusal": why,
                    "notices": notices,
                },
            }
        )
    return out
