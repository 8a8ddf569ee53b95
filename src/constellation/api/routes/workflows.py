"""Workflows over HTTP: register and read them (`/api/workflows`, the operator's) and run one
with its declared inputs (`POST /v1/workflows/{name}/runs`); api/workflow_models.py calls one
as a model."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request, status
from pydantic import BaseModel, ConfigDict, Field

from constellation.api.deps import Admin, InferenceCaller, SessionDep
from constellation.api.pipeline import JSONBody
from constellation.api.protocol.responses import errors
from constellation.api.state import state_of
from constellation.api.workflow_models import failed
from constellation.registry import workflows as repo
from constellation.workflows import service
from constellation.workflows.service import Outcome, RunFailed
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
        limits=state_of(request.app).settings.workflows,
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
