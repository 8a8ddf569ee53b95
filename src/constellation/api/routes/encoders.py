"""`POST /v1/embeddings` (OpenAI-compatible) and `POST /v1/classify`: encoder models, with or
without a LoRA adapter, micro-batched across concurrent requests by the engine."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import numpy as np
import pydantic_core
from fastapi import APIRouter
from fastapi.responses import Response

from constellation.api import upstream, workflow_models
from constellation.api.deps import InferenceCaller
from constellation.api.pipeline import Call, CallDep, JSONBody, Outcome
from constellation.api.protocol.requests import ClassifyIn, EmbeddingsIn
from constellation.api.protocol.responses import ClassificationList, EmbeddingList, errors
from constellation.api.resolver import require_task
from constellation.errors import InvalidInput, NotFound

router = APIRouter(
    prefix="/v1", tags=["openai"], responses=errors(400, 401, 402, 403, 404, 413, 429, 502, 503, 504)
)


def _vector(v: np.ndarray, fmt: str) -> list[float] | str:
    if fmt == "base64":
        return base64.b64encode(np.ascontiguousarray(v, dtype="<f4").tobytes()).decode()
    return v.tolist()  # type: ignore[no-any-return]  # float32 -> Python floats, in C


# The answers are documented, not validated: `responses=` changes only the OpenAPI document.
@router.post(
    "/embeddings", response_class=JSONBody, response_model=None, responses={200: {"model": EmbeddingList}}
)
async def embeddings(body: EmbeddingsIn, caller: InferenceCaller, call: CallDep) -> Response:
    """Embed text with an embedding model or adapter; OpenAI's response shape plus `constellation`."""
    texts = body.texts(call.limits.max_items_per_request)
    answer = await call.run(
        caller, body.model, body.model_dump(), lambda: _embed(call, body, texts), **_admission(texts)
    )
    if len(answer["data"]) <= RENDER_INLINE_ROWS:
        return Response(_render(answer), media_type="application/json")
    return Response(await asyncio.to_thread(_render, answer), media_type="application/json")


@router.post("/classify", response_model=None, responses={200: {"model": ClassificationList}})
async def classify(body: ClassifyIn, caller: InferenceCaller, call: CallDep) -> dict[str, Any]:
    """Classify text with a classification adapter (or a workflow whose answer is a
    classification): the label and every label's probability per input."""
    texts = body.texts(call.limits.max_items_per_request)
    try:
        return await call.run(
            caller, body.model, body.model_dump(), lambda: _classify(call, body, texts), **_admission(texts)
        )
    except NotFound as e:  # no model of that name: perhaps a workflow (api/workflow_models.py)
        wf = await workflow_models.or_workflow(call.request, caller, e, body.model)
        return await workflow_models.as_classification(call.request, caller, wf, body.model_dump())


async def _embed(call: Call, body: EmbeddingsIn, texts: list[str]) -> Outcome:
    """The engine call of an embeddings request (or the upstream's, for a provider model)."""
    res = call.resolved
    require_task(res, "embedding")
    if res.upstream is not None:
        return await upstream.embeddings(call, body.model_dump(exclude_unset=True))
    out = await call.engines.encoder.embed(
        res.base, res.adapter, texts, truncate=body.truncate, tenant=call.caller.tenant_id
    )
    # Vectors stay arrays until the answer is rendered (see `_render`).
    fmt, rows = body.encoding_format, out.embeddings
    data = [{"object": "embedding", "index": i, "embedding": _vector(v, fmt) if fmt == "base64" else v}
            for i, v in enumerate(rows)]  # fmt: skip
    return _outcome(res.name, data, out.tokens, out.compute_ns)


async def _classify(call: Call, body: ClassifyIn, texts: list[str]) -> Outcome:
    """The engine call of a classification request."""
    res = call.resolved
    require_task(res, "classification")
    if res.adapter is None:
        raise InvalidInput(
            f"'{res.name}' has no classification head; use a classification adapter", param="model"
        )
    out = await call.engines.encoder.classify(
        res.base, res.adapter, texts, truncate=body.truncate, tenant=call.caller.tenant_id
    )
    data = [
        {"index": i, "label": label, "probs": probs}
        for i, (label, probs) in enumerate(zip(out.labels, out.probs, strict=True))
    ]
    return _outcome(res.name, data, out.tokens, out.compute_ns)


# Past this many vectors an answer is rendered in a thread: a large answer's JSON would hold the
# event loop -- and every other tenant's answer -- while it is written. Rendered row by row, the
# thread gives the GIL back between rows, so the loop keeps serving (docs/decisions.md).
RENDER_INLINE_ROWS = 64


def _render(answer: dict[str, Any]) -> bytes:
    """The embeddings answer as JSON, one row at a time (arrays become lists of floats here)."""
    rows = [pydantic_core.to_json({**row, "embedding": _plain(row["embedding"])}) for row in answer["data"]]
    head = pydantic_core.to_json({k: v for k, v in answer.items() if k != "data"})
    return head[:-1] + b',"data":[' + b",".join(rows) + b"]}"


def _plain(v: Any) -> Any:
    return v.tolist() if isinstance(v, np.ndarray) else v


def _outcome(model: str, data: list[dict[str, Any]], tokens: list[int], compute_ns: int) -> Outcome:
    """An encoder answer in OpenAI's list shape; encoders read tokens and write none."""
    n = int(sum(tokens))
    body = {"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": n, "total_tokens": n}}
    return Outcome(body=body, input_tokens=n, output_tokens=0, compute_ns=compute_ns)


# No encoder served here reads more positions per item; bounds the worst case of a truncated item.
ENCODER_MAX_POSITIONS = 8192


def _worst(texts: list[str]) -> int:
    """At most one token per character (WordPiece) plus the two special tokens: what a spending
    hold reserves for."""
    return sum(min(len(t), ENCODER_MAX_POSITIONS) + 2 for t in texts)


def _admission(texts: list[str]) -> dict[str, int]:
    """The token estimates a spending hold and the rate limits take."""
    return {"est_input_tokens": _estimate(texts), "max_input_tokens": _worst(texts)}


def _estimate(texts: list[str]) -> int:
    """A cheap upper-bound token estimate for admission (the engine counts exactly)."""
    return sum(len(t) // 3 + 2 for t in texts)
