"""A workflow called as a model: a text workflow on /v1/chat/completions and /v1/completions
(streamed: its earlier steps run, then its last step's tokens flow), a classification workflow
on /v1/classify, and every workflow in /v1/models. The routes reach here when no model has the
name they were given."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from constellation.api.deps import Principal
from constellation.api.errors import error_body
from constellation.api.pipeline import JSONBody
from constellation.errors import ConstellationError, InvalidInput, NotFound
from constellation.registry import workflows as repo
from constellation.workflows import service
from constellation.workflows.service import Loaded, Outcome, RunFailed


def failed(e: RunFailed) -> JSONResponse:
    """The usual error shape, plus what the run did: its id, the failed step, what was charged."""
    return JSONResponse(
        {**error_body(e.message, e.type, param=e.param, code=e.code), "constellation": e.extra}, e.status
    )


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
