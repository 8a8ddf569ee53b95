"""A local causal LM's answer in OpenAI's wire format: whole (`collect`), as the pipeline's
`Stream` of chunks (`DecoderStream`), or replayed as a stream for an idempotent retry."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi.responses import StreamingResponse

from constellation.api.pipeline import DONE, Outcome, sse
from constellation.api.structured import FREE, Structure, tool_call
from constellation.engine.decoder.sequence import Delta, Prepared


@dataclass(slots=True)
class Shape:
    """What differs between chat and plain completions in the wire format, and between a
    content answer and a tool call."""

    chat: bool
    id: str
    created: int
    model: str
    structure: Structure = FREE
    call_id: str | None = None  # a streamed named call: its id once its first delta is out

    def chunks(self, text: str, finish: str | None, texts: list[str]) -> list[dict[str, Any]]:
        """The stream's chunks for one engine delta (`texts`: every piece so far, this one last);
        the last one carries `finish` when it is set. A call to a named function streams its
        arguments as they come; any other call is sent whole once it has parsed."""
        if not (self.chat and self.structure.calls_tools):
            return [self.chunk(text, finish)] if (text or finish) else []
        if self.structure.mode == "named":
            out = [self._call_delta(text)] if text else []
            return out + ([self.chunk(None, _call_finish(finish))] if finish else [])
        if finish is None:
            return []
        whole = "".join(texts)
        call = tool_call(self.structure, whole) if finish == "stop" else None
        if call is None:
            return [self.chunk(whole, finish)]
        return [self._tools_chunk([{"index": 0, **call}]), self.chunk(None, "tool_calls")]

    def _call_delta(self, text: str) -> dict[str, Any]:
        if self.call_id is not None:
            return self._tools_chunk([{"index": 0, "function": {"arguments": text}}])
        first = tool_call(self.structure, text)
        assert first is not None
        self.call_id = first["id"]
        return self._tools_chunk([{"index": 0, **first}])

    def _tools_chunk(self, calls: list[dict[str, Any]]) -> dict[str, Any]:
        chunk = self.chunk(None, None)
        chunk["choices"][0]["delta"]["tool_calls"] = calls
        return chunk

    def chunk(self, text: str | None, finish: str | None, *, first: bool = False) -> dict[str, Any]:
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant"} if first else {}
            if text:
                delta["content"] = text
            choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
            obj = "chat.completion.chunk"
        else:
            choice = {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}
            obj = "text_completion"
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        }

    def full(self, text: str, finish: str, usage: dict[str, int]) -> dict[str, Any]:
        if self.chat:
            message: dict[str, Any] = {"role": "assistant", "content": text}
            call = (
                tool_call(self.structure, text)
                if finish == "stop" or self.structure.mode == "named"
                else None
            )
            if call is not None:
                message = {"role": "assistant", "content": None, "tool_calls": [call]}
                finish = _call_finish(finish)
            choice: dict[str, Any] = {
                "index": 0,
                "message": message,
                "finish_reason": finish,
                "logprobs": None,
            }
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
            obj = "text_completion"
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": usage,
        }


def _call_finish(finish: str) -> str:
    """A call that closed is `tool_calls`; one cut short keeps `length`."""
    return "tool_calls" if finish == "stop" else finish


def usage(last: Delta) -> dict[str, int]:
    return {
        "prompt_tokens": last.prompt_tokens,
        "completion_tokens": last.completion_tokens,
        "total_tokens": last.prompt_tokens + last.completion_tokens,
    }


def outcome(shape: Shape, texts: list[str], last: Delta) -> Outcome:
    """A finished answer as one body, with what it used."""
    assert last.finish_reason is not None
    return Outcome(
        body=shape.full("".join(texts), last.finish_reason, usage(last)),
        input_tokens=last.prompt_tokens,
        output_tokens=last.completion_tokens,
        compute_ns=last.compute_ns or 0,
    )


async def collect(deltas: AsyncIterator[Delta], shape: Shape) -> Outcome:
    """The whole answer, once the engine has finished it."""
    texts: list[str] = []
    last: Delta | None = None
    async for d in deltas:
        texts.append(d.text)
        last = d
    assert last is not None
    return outcome(shape, texts, last)


class DecoderStream:
    """A decoder's deltas as the pipeline's `Stream`: the role chunk, then each delta's chunks;
    the finishing delta's chunks close the stream, once the usage is billed."""

    def __init__(
        self, deltas: AsyncIterator[Delta], prepared: Prepared, shape: Shape, *, include_usage: bool
    ) -> None:
        self.deltas, self.prepared, self.shape = deltas, prepared, shape
        self.include_usage = include_usage
        self.texts: list[str] = []
        self.last: Delta | None = None
        self.last_chunks: list[dict[str, Any]] = []

    async def chunks(self) -> AsyncIterator[dict[str, Any]]:
        yield self.shape.chunk("", None, first=True)
        async for d in self.deltas:
            self.texts.append(d.text)
            self.last = d
            chunks = self.shape.chunks(d.text, d.finish_reason, self.texts)
            if d.finish_reason is not None:
                self.last_chunks = chunks  # sent once the usage is committed
                continue
            for c in chunks:
                yield c

    def outcome(self) -> Outcome:
        assert self.last is not None and self.last_chunks, "the engine's stream ended without finishing"
        return outcome(self.shape, self.texts, self.last)

    def closing(self, ext: dict[str, Any]) -> list[dict[str, Any]]:
        assert self.last is not None
        *before, final = self.last_chunks
        if not self.include_usage:
            return [*before, {**final, "constellation": ext}]
        tail = {**self.shape.chunk(None, None), "choices": [], "usage": usage(self.last)}
        return [*before, final, {**tail, "constellation": ext}]

    def produced(self) -> Outcome:
        """What a dropped stream had produced when it was dropped: billed as `cancelled`."""
        last = self.last
        return Outcome(
            body={},
            input_tokens=len(self.prepared.prompt_ids) if last else 0,
            output_tokens=last.completion_tokens if last else 0,
            compute_ns=(last.compute_ns or 0) if last else 0,
        )

    async def aclose(self) -> None:
        await self.deltas.aclose()  # type: ignore[attr-defined]  # an async generator: frees the sequence at once


def replay_stream(stored: dict[str, Any], shape: Shape) -> StreamingResponse:
    """An idempotent retry of a streamed request: the stored answer as two chunks."""
    choice = stored["choices"][0]
    text = (choice["message"]["content"] or "") if shape.chat else choice["text"]
    calls = choice["message"].get("tool_calls") if shape.chat else None

    async def chunks() -> AsyncIterator[bytes]:
        first = shape.chunk(text, None, first=True) | {"id": stored["id"]}
        if calls:
            first["choices"][0]["delta"]["tool_calls"] = [{"index": i, **c} for i, c in enumerate(calls)]
        yield sse(first)
        yield sse(
            shape.chunk(None, choice["finish_reason"])
            | {"id": stored["id"], "usage": stored.get("usage"), "constellation": stored.get("constellation")}
        )
        yield DONE

    return StreamingResponse(chunks(), media_type="text/event-stream")
