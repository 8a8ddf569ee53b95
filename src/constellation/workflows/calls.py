"""Workflow steps through the API's request pipeline: each model call of a run is one `Call`
(resolve -> admit -> engine -> settle once), so a step is checked, held, metered and priced
exactly as the same request to /v1 would be, and enters the same engine batchers."""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fastapi import Request
from starlette.concurrency import run_in_threadpool

from constellation.api.deps import Principal
from constellation.api.pipeline import Call, Outcome
from constellation.api.protocol.requests import JsonSchemaFormat, ResponseFormat
from constellation.api.state import state_of
from constellation.api.structured import FREE, plan
from constellation.engine.decoder.sampling import DEFAULTABLE, SamplingParams
from constellation.errors import InvalidInput
from constellation.providers.call import complete, embed
from constellation.registry.workflows import get_workflow
from constellation.workflows.executor import Answer, Emit
from constellation.workflows.spec import Spec, parse

MAX_REQUEST_ID = 80  # usage_events.request_id


@dataclass(slots=True)
class StepRecord:
    """One executed model call of a run: its usage event, as the response reports it."""

    step: str
    model: str
    request_id: str
    input_tokens: int = 0
    output_tokens: int = 0
    compute_ns: int = 0
    price_nanos: int = 0
    split: list[dict[str, Any]] = field(default_factory=list)
    status: str = "failed"

    def as_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "model": self.model,
            "request_id": self.request_id,
            "status": self.status,
            "usage": {
                "prompt_tokens": self.input_tokens,
                "completion_tokens": self.output_tokens,
                "total_tokens": self.input_tokens + self.output_tokens,
            },
            "compute_ns": self.compute_ns,
            "price_nanos": self.price_nanos,
            "split": self.split,
        }


class StepCall(Call):
    """A step's request: the run's HTTP request, its own request id, and no idempotency key of
    its own (the run's key belongs to the run's fee event, which replays the whole run)."""

    @property
    def idempotency_key(self) -> str | None:
        return None


@dataclass(slots=True)
class PipelineModels:
    """`executor.Models` for one run, on the app's engines, resolver and meter."""

    request: Request
    caller: Principal
    run_id: str
    vectors: dict[str, np.ndarray]  # the app's cache of a document's embedded texts
    specs: dict[int, Spec]  # the app's cache of parsed workflow versions, by id
    records: list[StepRecord] = field(default_factory=list)
    sub_fees: list[tuple[str, str]] = field(default_factory=list)  # (step path, name@N) that ran
    notices: dict[str, None] = field(default_factory=dict)  # ordered set

    def request_id(self, path: str) -> str:
        """The usage event id of the run's step at `path`: the run's id, then the path."""
        rid = f"{self.run_id}.{path}"
        if len(rid) > MAX_REQUEST_ID:  # a deep sub-workflow path: hashed, still unique within the run
            room = MAX_REQUEST_ID - len(self.run_id) - 1
            rid = f"{self.run_id}.{hashlib.sha256(path.encode()).hexdigest()[:room]}"
        return rid

    def _call(self, path: str) -> StepCall:
        return StepCall(
            request=self.request, state=state_of(self.request.app), request_id=self.request_id(path)
        )

    async def _through(
        self, path: str, model: str, body: dict[str, Any], work: Any, **admit: int
    ) -> dict[str, Any]:
        """resolve -> admit -> work -> settle, recording the step whatever happens."""
        call = self._call(path)
        rec = StepRecord(path, model, call.request_id)
        self.records.append(rec)
        await call.resolve(self.caller, model, body)
        rec.model = call.resolved.name
        self.notices.update(dict.fromkeys(call.resolved.notices))
        prepared = None
        if isinstance(work, _Generate):  # tokenised first: the hold covers its real prompt
            prepared = await work.prepare(call)
            admit = work.estimate(prepared)
        await call.admit(**admit)
        outcome: Outcome = await call.guarded(work.run(call, prepared))
        ext = await call.settle(outcome)
        rec.status, rec.input_tokens, rec.output_tokens = (
            "succeeded",
            outcome.input_tokens,
            outcome.output_tokens,
        )
        rec.compute_ns, rec.price_nanos = outcome.compute_ns, int(ext.get("price_nanos", 0))
        rec.split = list(ext.get("split", []))
        return outcome.body

    async def classify(self, path: str, model: str, texts: list[str], *, truncate: bool) -> Answer:
        body = await self._through(
            path,
            model,
            {"input": texts},
            _Encode("classify", texts, truncate, self.caller),
            est_input_tokens=_estimate(texts),
            max_input_tokens=_worst(texts),
        )
        data = [
            {"label": d["label"], "probs": d["probs"], "confidence": max(d["probs"].values())}
            for d in body["data"]
        ]
        return Answer(data, body["usage"]["prompt_tokens"])

    async def embed(self, path: str, model: str, texts: list[str], *, truncate: bool) -> Answer:
        body = await self._through(
            path,
            model,
            {"input": texts},
            _Encode("embed", texts, truncate, self.caller),
            est_input_tokens=_estimate(texts),
            max_input_tokens=_worst(texts),
        )
        return Answer([{"embedding": d["embedding"]} for d in body["data"]], body["usage"]["prompt_tokens"])

    async def generate(
        self,
        path: str,
        model: str,
        *,
        prompt: str | None,
        messages: list[dict[str, str]] | None,
        sampling: dict[str, Any],
        schema: dict[str, Any] | None,
        emit: Emit | None,
    ) -> Answer:
        work = _Generate(prompt, messages, sampling, schema, emit, self.caller)
        raw = {"prompt": prompt, "messages": messages, **sampling, "schema": schema}
        body = await self._through(path, model, raw, work)
        text = body["text"]
        value: dict[str, Any] = {"text": text, "finish_reason": body["finish_reason"]}
        if schema is not None:
            try:
                value["data"] = json.loads(text)
            except ValueError:
                value["data"] = None  # cut short by max_tokens: finish_reason says "length"
        return Answer(value, body["usage"]["total_tokens"])

    async def load_workflow(self, ref: str) -> tuple[Spec, str, int]:
        """A sub-workflow as this tenant may see it: its spec, `name@N` and per-run fee."""

        def load() -> tuple[int, str, dict[str, Any], int]:
            with state_of(self.request.app).platform.db.session() as s:
                wf = get_workflow(s, ref=ref, tenant_id=self.caller.tenant_id)
                return wf.id, f"{wf.name}@{wf.version}", wf.document, wf.fee_per_run_nanos

        wf_id, name, doc, fee = await run_in_threadpool(load)
        spec = self.specs.get(wf_id)
        if spec is None:
            spec = self.specs[wf_id] = parse(doc)
        return spec, name, fee

    async def workflow(self, path: str, ref: str) -> tuple[Spec, str]:
        """The executor's call: the sub-workflow runs, so its author's fee is owed (`sub_fees`)."""
        spec, name, fee = await self.load_workflow(ref)
        if fee > 0:
            self.sub_fees.append((path, name))
        return spec, name

    def cached_vectors(self, key: str) -> np.ndarray | None:
        return self.vectors.get(key)

    def cache_vectors(self, key: str, vectors: np.ndarray) -> None:
        if len(self.vectors) > 256:  # documents' texts; a bound all the same
            self.vectors.clear()
        self.vectors[key] = vectors


@dataclass(slots=True)
class _Encode:
    """An encoder call, as /v1/classify and /v1/embeddings make it (local or upstream)."""

    kind: str
    texts: list[str]
    truncate: bool
    caller: Principal

    async def run(self, call: Call, _prepared: None) -> Outcome:
        res = call.resolved
        want = "classification" if self.kind == "classify" else "embedding"
        if res.task != want:
            raise InvalidInput(
                f"'{res.name}' is a {res.task} model, not {want}", param="model", code="wrong_task"
            )
        if res.upstream is not None:
            a = await embed(call.engines.upstreams, res.upstream, {"input": self.texts})
            data = [{"embedding": d.get("embedding")} for d in a.body["data"]]
            return Outcome(
                {"data": data, "usage": {"prompt_tokens": a.usage.input_tokens}},
                a.usage.input_tokens,
                0,
                a.compute_ns,
            )
        enc = call.engines.encoder
        tenant = self.caller.tenant_id
        if self.kind == "classify":
            if res.adapter is None:
                raise InvalidInput(
                    f"'{res.name}' has no classification head", param="model", code="wrong_task"
                )
            out = await enc.classify(res.base, res.adapter, self.texts, truncate=self.truncate, tenant=tenant)
            rows = [{"label": lb, "probs": p} for lb, p in zip(out.labels, out.probs, strict=True)]
            tokens, ns = out.tokens, out.compute_ns
        else:
            emb = await enc.embed(res.base, res.adapter, self.texts, truncate=self.truncate, tenant=tenant)
            rows = [{"embedding": v.tolist()} for v in emb.embeddings]  # a step's output is JSON
            tokens, ns = emb.tokens, emb.compute_ns
        n = int(sum(tokens))
        return Outcome({"data": rows, "usage": {"prompt_tokens": n}}, n, 0, ns)


@dataclass(slots=True)
class _Generate:
    """A chat or completion call, as /v1/chat/completions makes it; `emit` streams its text."""

    prompt: str | None
    messages: list[dict[str, str]] | None
    sampling: dict[str, Any]
    schema: dict[str, Any] | None
    emit: Emit | None
    caller: Principal

    async def prepare(self, call: Call) -> Any:
        res = call.resolved
        if res.task != "causal-lm":
            raise InvalidInput(
                f"'{res.name}' is a {res.task} model, not a causal-lm", param="model", code="wrong_task"
            )
        if res.upstream is not None:
            return None
        structure = FREE
        if self.schema is not None:
            structure = plan(
                ResponseFormat(
                    type="json_schema", json_schema=JsonSchemaFormat(name="extract", schema_=self.schema)
                )
            )
        stop = self.sampling.get("stop")
        params = SamplingParams(
            max_tokens=self.sampling.get("max_tokens"),
            temperature=self.sampling.get("temperature", 1.0),
            top_p=self.sampling.get("top_p", 1.0),
            top_k=self.sampling.get("top_k", 0),
            seed=self.sampling.get("seed"),
            stop=tuple([stop] if isinstance(stop, str) else stop or ()),
            unset=frozenset(f for f in DEFAULTABLE if f not in self.sampling),
        )
        return await asyncio.to_thread(
            call.engines.decoder.prepare,
            res.base,
            res.adapter,
            prompt=self.prompt,
            messages=self.messages,
            params=params,
            tenant=self.caller.tenant_id,
            constraint=structure.constraint,
        )

    def estimate(self, prepared: Any) -> dict[str, int]:
        if prepared is None:  # an upstream model: characters bound its tokens
            chars = len(self.prompt or "") + sum(len(m["content"]) for m in self.messages or [])
            return {
                "est_input_tokens": chars // 3 + 1,
                "est_output_tokens": self.sampling.get("max_tokens", 4096),
                "max_input_tokens": chars + 1,
            }
        return {"est_input_tokens": len(prepared.prompt_ids), "est_output_tokens": prepared.max_new}

    async def run(self, call: Call, prepared: Any) -> Outcome:
        if prepared is None:
            return await self._upstream(call)
        texts: list[str] = []
        last = None
        gen = call.engines.decoder.generate(prepared)
        try:
            async for d in gen:
                texts.append(d.text)
                last = d
                if self.emit is not None and d.text:
                    await self.emit(d.text)
        except asyncio.CancelledError:  # a dropped stream pays for what it produced, as on /v1
            if last is not None:
                produced = Outcome({}, last.prompt_tokens, last.completion_tokens, last.compute_ns or 0)
                call.settle_later(produced, "cancelled")
            raise
        finally:
            await gen.aclose()  # type: ignore[attr-defined]  # an async generator: frees the sequence now
        assert last is not None
        body = {
            "text": "".join(texts),
            "finish_reason": last.finish_reason,
            "usage": {"total_tokens": last.prompt_tokens + last.completion_tokens},
        }
        return Outcome(body, last.prompt_tokens, last.completion_tokens, last.compute_ns or 0)

    async def _upstream(self, call: Call) -> Outcome:
        res = call.resolved
        assert res.upstream is not None
        sent: dict[str, Any] = {k: v for k, v in self.sampling.items() if k != "seed"}
        if self.messages is not None:
            sent["messages"] = self.messages
        else:
            sent["prompt"] = self.prompt
        a = await complete(
            call.engines.upstreams, res.upstream, "chat" if self.messages is not None else "completion", sent
        )
        choice = (a.body.get("choices") or [{}])[0]
        text = (
            (choice.get("message") or {}).get("content") if self.messages is not None else choice.get("text")
        )
        text = text or ""
        if self.emit is not None and text:
            await self.emit(text)
        u = a.usage
        body = {
            "text": text,
            "finish_reason": choice.get("finish_reason") or "stop",
            "usage": {"total_tokens": u.input_tokens + u.output_tokens},
        }
        return Outcome(body, u.input_tokens, u.output_tokens, a.compute_ns)


def _estimate(texts: list[str]) -> int:
    return sum(len(t) // 3 + 2 for t in texts)


def _worst(texts: list[str]) -> int:
    return sum(min(len(t), 8192) + 2 for t in texts)
