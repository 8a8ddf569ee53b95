"""A call to an exposed upstream model, as the API pipeline (or a workflow step) makes it:
`complete` and `embed` return the answer with its usage; `open_stream` yields the upstream's
chunks one by one. Usage is the upstream's own `usage`; where it has none, tokens are counted
with a tokenizer and the usage is marked estimated. `compute_ns` is the time this process spent
on the call itself (building, parsing and rewriting), not the time spent waiting upstream."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
import pydantic_core

from constellation.errors import UpstreamError
from constellation.providers.client import Upstream, UpstreamConfig
from constellation.providers.pool import Upstreams
from constellation.providers.tokens import prompt_texts

Kind = Literal["chat", "completion", "embedding"]
PATHS: dict[Kind, str] = {"chat": "chat/completions", "completion": "completions", "embedding": "embeddings"}


@dataclass(frozen=True, slots=True)
class Target:
    """An exposed model: the name our clients use, the upstream's id for it, and its provider."""

    model: str
    upstream_model: str
    config: UpstreamConfig


@dataclass(slots=True)
class Usage:
    input_tokens: int
    output_tokens: int
    estimated: bool = False

    def as_openai(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "prompt_tokens": self.input_tokens,
            "completion_tokens": self.output_tokens,
            "total_tokens": self.input_tokens + self.output_tokens,
        }
        if self.estimated:
            out["estimated"] = True
        return out


@dataclass(slots=True)
class Answer:
    """A whole upstream answer, rewritten to our model name, with its usage."""

    body: dict[str, Any]
    usage: Usage
    compute_ns: int


def payload(target: Target, kind: Kind, body: dict[str, Any], *, stream: bool = False) -> bytes:
    """The upstream request: what the client sent, under the upstream's model id; a stream asks
    for usage in its last chunk."""
    out = {**body, "model": target.upstream_model}
    out.pop("stream_options", None)
    if kind != "embedding":
        out["stream"] = stream
        if stream:
            out["stream_options"] = {"include_usage": True}
    return pydantic_core.to_json(out)


async def complete(upstreams: Upstreams, target: Target, kind: Kind, body: dict[str, Any]) -> Answer:
    """A chat or text completion, not streamed (retried upstream where safe)."""
    return await _post(upstreams, target, kind, body)


async def embed(upstreams: Upstreams, target: Target, body: dict[str, Any]) -> Answer:
    """Embeddings of `body["input"]`."""
    return await _post(upstreams, target, "embedding", body)


async def _post(upstreams: Upstreams, target: Target, kind: Kind, body: dict[str, Any]) -> Answer:
    t0 = time.perf_counter_ns()
    data = payload(target, kind, body)
    own = time.perf_counter_ns() - t0
    raw = await upstreams.get(target.config).post(PATHS[kind], data)
    t1 = time.perf_counter_ns()
    doc = _parse(target, raw)
    if not isinstance(doc.get("data" if kind == "embedding" else "choices"), list):
        raise _malformed(target, "it has no 'data' list" if kind == "embedding" else "it has no 'choices'")
    doc["model"] = target.model
    doc.pop("constellation", None)  # an upstream Constellation's own bill is not our client's
    usage = _usage(doc.get("usage"), kind)
    if usage is None:
        out_texts = [] if kind == "embedding" else [_text(c, kind, delta=False) for c in doc["choices"]]
        usage = Usage(upstreams.tokens.count(prompt_texts(body)), upstreams.tokens.count(out_texts), True)
    doc["usage"] = _openai_usage(usage, kind)
    return Answer(doc, usage, own + time.perf_counter_ns() - t1)


@dataclass(slots=True)
class Relay:
    """An upstream stream being relayed: its chunks in order, what they said so far, and its usage."""

    target: Target
    kind: Kind
    body: dict[str, Any]
    upstreams: Upstreams
    response: httpx.Response
    texts: list[str] = field(default_factory=list)
    reported: Usage | None = None  # the upstream's own usage, from its last chunk
    done: bool = False  # the upstream sent [DONE]
    compute_ns: int = 0

    async def chunks(self) -> AsyncIterator[dict[str, Any]]:
        """Each chunk, its `model` rewritten to ours; UpstreamError if the stream breaks off,
        carries an error or is not JSON."""
        lines: list[str] = []
        try:
            async for line in self.response.aiter_lines():
                if line:
                    if line.startswith("data:"):
                        lines.append(line[5:].removeprefix(" "))
                    continue  # comments (":") and other fields carry nothing we relay
                if lines:
                    chunk = self._chunk("\n".join(lines))
                    lines = []
                    if chunk is not None:
                        yield chunk
        except httpx.TimeoutException:
            raise UpstreamError(
                f"provider '{self.target.config.name}' stopped sending for longer than its timeout",
                status=504,
                code="upstream_timeout",
            ) from None
        except httpx.TransportError:
            pass  # reported below as a stream cut short
        if lines:
            chunk = self._chunk("\n".join(lines))
            if chunk is not None:
                yield chunk
        if not self.done:
            raise UpstreamError(
                f"provider '{self.target.config.name}' ended the stream before it was complete; "
                "retry the request",
                code="upstream_stream_cut",
            )

    def _chunk(self, data: str) -> dict[str, Any] | None:
        t0 = time.perf_counter_ns()
        if data.strip() == "[DONE]":
            self.done = True
            return None
        doc = _parse(self.target, data.encode())
        if "error" in doc:
            raise UpstreamError(
                f"provider '{self.target.config.name}' failed mid-stream; retry the request",
                code="upstream_stream_error",
            )
        doc["model"] = self.target.model
        doc.pop("constellation", None)
        for choice in doc.get("choices") or []:
            self.texts.append(_text(choice, self.kind, delta=True))
        usage = _usage(doc.get("usage"), self.kind)
        if usage is not None:
            self.reported = usage
        self.compute_ns += time.perf_counter_ns() - t0
        return doc

    def usage(self) -> Usage:
        """The upstream's usage, or (none reported, or the stream cut short) a tokenizer's count."""
        if self.reported is not None:
            return self.reported
        tokens = self.upstreams.tokens
        return Usage(tokens.count(prompt_texts(self.body)), tokens.count(["".join(self.texts)]), True)


@asynccontextmanager
async def open_stream(
    upstreams: Upstreams, target: Target, kind: Kind, body: dict[str, Any]
) -> AsyncIterator[Relay]:
    """Open the upstream stream (errors before its first byte raise here, in our shape); leaving
    the context closes the connection, which cancels the upstream request if still running."""
    upstream: Upstream = upstreams.get(target.config)
    t0 = time.perf_counter_ns()
    data = payload(target, kind, body, stream=True)
    own = time.perf_counter_ns() - t0
    async with upstream.stream(PATHS[kind], data) as response:
        yield Relay(target, kind, body, upstreams, response, compute_ns=own)


def _parse(target: Target, raw: bytes) -> dict[str, Any]:
    try:
        doc = pydantic_core.from_json(raw)
    except ValueError:
        raise _malformed(target, "it is not JSON") from None
    if not isinstance(doc, dict):
        raise _malformed(target, "it is not a JSON object")
    return doc


def _malformed(target: Target, why: str) -> UpstreamError:
    return UpstreamError(
        f"provider '{target.config.name}' sent an answer this server cannot read ({why}); retry, "
        "or report it to the operator",
        code="upstream_malformed_response",
    )


def _usage(raw: Any, kind: Kind) -> Usage | None:
    if not isinstance(raw, dict):
        return None
    prompt, completion = (
        raw.get("prompt_tokens"),
        raw.get("completion_tokens", 0 if kind == "embedding" else None),
    )
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    if not _count(prompt) or not _count(completion):
        return None
    return Usage(prompt, completion)


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**40


def _openai_usage(usage: Usage, kind: Kind) -> dict[str, Any]:
    out = usage.as_openai()
    if kind == "embedding":
        del out["completion_tokens"]
    return out


def _text(choice: Any, kind: Kind, *, delta: bool) -> str:
    if not isinstance(choice, dict):
        return ""
    if kind == "completion":
        text = choice.get("text")
    else:
        msg = choice.get("delta" if delta else "message")
        text = msg.get("content") if isinstance(msg, dict) else None
    return text if isinstance(text, str) else ""
