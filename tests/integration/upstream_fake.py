"""Real HTTP servers for the provider tests, each in a thread of its own: `serve` runs any ASGI
app under uvicorn on a free port; `FaultyUpstream` is an OpenAI-compatible upstream whose
behaviour the model id picks (slow, 500s, 429 with Retry-After, a stream cut midway, malformed
JSON, no usage, ...), recording what it received."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.types import Receive, Scope, Send


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve(app: Any, *, log_config: dict[str, Any] | None = None) -> Iterator[str]:
    """`app` served on 127.0.0.1 in a thread (lifespan included); yields its base URL."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", log_config=log_config)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


WORDS = ["Ahoy", " there", ",", " matey", "!", " The", " sea", " is", " calm", "."]


@dataclass
class FaultyUpstream:
    """An ASGI OpenAI-compatible upstream. The request's `model` picks the behaviour:

    ok, no-usage, slow (sleeps `slow_s`), fail (500 always), flaky (500 then 200), limited (429
    with Retry-After: 1, then 200), malformed (200, not JSON), cut (a stream broken off midway),
    drip (a long stream, a chunk every 20 ms), refuse (400 whose message quotes the key),
    hold (sleeps 0.2 s: for the concurrency cap)."""

    slow_s: float = 2.0
    calls: Counter[str] = field(default_factory=Counter)
    auth: list[str] = field(default_factory=list)
    bodies: list[dict[str, Any]] = field(default_factory=list)
    in_flight: int = 0
    peak: int = 0
    disconnected: list[str] = field(default_factory=list)  # models whose stream the client dropped
    finished: list[str] = field(default_factory=list)  # models whose stream ran to the end

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        doc = json.loads(body or b"{}")
        headers = dict(scope["headers"])
        self.auth.append(headers.get(b"authorization", b"").decode())
        self.bodies.append(doc)
        model = str(doc.get("model", "ok"))
        self.calls[model] += 1
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await self._answer(scope, receive, send, model, doc)
        finally:
            self.in_flight -= 1

    async def _answer(
        self, scope: Scope, receive: Receive, send: Send, model: str, doc: dict[str, Any]
    ) -> None:
        path = scope["path"]
        if model == "slow":
            await asyncio.sleep(self.slow_s)
        if model == "hold":
            await asyncio.sleep(0.2)
        if model == "fail" or (model == "flaky" and self.calls[model] % 3 != 0):
            return await _json(send, 500, {"error": {"message": "upstream exploded"}})
        if model == "limited" and self.calls[model] % 2 == 1:
            return await _json(send, 429, {"error": {"message": "slow down"}}, {"retry-after": "1"})
        if model == "refuse":
            key = self.auth[-1].removeprefix("Bearer ")
            return await _json(send, 400, {"error": {"message": f"bad request for key {key}"}})
        if model == "malformed":
            return await _raw(send, 200, b"{not json", "application/json")
        if path.endswith("/embeddings"):
            return await _json(send, 200, _embeddings(doc, usage=model != "no-usage"))
        chat = path.endswith("/chat/completions")
        if doc.get("stream"):
            return await self._stream(send, receive, model, doc, chat)
        return await _json(send, 200, _completion(doc, chat, usage=model != "no-usage"))

    async def _stream(
        self, send: Send, receive: Receive, model: str, doc: dict[str, Any], chat: bool
    ) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        words = WORDS * (30 if model == "drip" else 1)
        include = (doc.get("stream_options") or {}).get("include_usage") and model != "no-usage"
        for i, w in enumerate(words):
            if model == "cut" and i == 4:
                raise RuntimeError("cut")  # uvicorn drops the connection mid-body
            if model == "drip":
                await asyncio.sleep(0.02)
            chunk = _chunk(w, None, chat, first=i == 0)
            if include:
                chunk["usage"] = None
            try:
                await send({"type": "http.response.body", "body": _sse(chunk), "more_body": True})
            except OSError:
                self.disconnected.append(model)
                return
            if model == "drip" and await _gone(receive):
                self.disconnected.append(model)
                return
        await send(
            {"type": "http.response.body", "body": _sse(_chunk(None, "stop", chat)), "more_body": True}
        )
        if include:
            usage = {"prompt_tokens": 7, "completion_tokens": len(words), "total_tokens": 7 + len(words)}
            tail = {**_chunk(None, None, chat), "choices": [], "usage": usage}
            await send({"type": "http.response.body", "body": _sse(tail), "more_body": True})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
        self.finished.append(model)


async def _gone(receive: Receive) -> bool:
    """Whether the client has gone (a disconnect message is waiting)."""
    try:
        msg = await asyncio.wait_for(receive(), timeout=0.001)
    except TimeoutError:
        return False
    return msg["type"] == "http.disconnect"


def _sse(obj: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(obj)}\n\n".encode()


def _chunk(text: str | None, finish: str | None, chat: bool, *, first: bool = False) -> dict[str, Any]:
    if chat:
        delta: dict[str, Any] = {"role": "assistant"} if first else {}
        if text:
            delta["content"] = text
        choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
    else:
        choice = {"index": 0, "text": text or "", "finish_reason": finish}
    obj = "chat.completion.chunk" if chat else "text_completion"
    return {"id": "up-1", "object": obj, "created": 1700000000, "model": "upstream-id", "choices": [choice]}


def _completion(doc: dict[str, Any], chat: bool, *, usage: bool) -> dict[str, Any]:
    text = "".join(WORDS)
    if chat:
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": "stop",
        }
    else:
        choice = {"index": 0, "text": text, "finish_reason": "stop"}
    out: dict[str, Any] = {
        "id": "up-1",
        "object": "chat.completion" if chat else "text_completion",
        "created": 1700000000,
        "model": "upstream-id",
        "choices": [choice],
    }
    if usage:
        out["usage"] = {"prompt_tokens": 7, "completion_tokens": 10, "total_tokens": 17}
    return out


def _embeddings(doc: dict[str, Any], *, usage: bool) -> dict[str, Any]:
    inputs = doc["input"] if isinstance(doc["input"], list) else [doc["input"]]
    data = [
        {"object": "embedding", "index": i, "embedding": [0.25, -0.5, float(len(t))]}
        for i, t in enumerate(inputs)
    ]
    out: dict[str, Any] = {"object": "list", "data": data, "model": "upstream-id"}
    if usage:
        n = 3 * len(inputs)
        out["usage"] = {"prompt_tokens": n, "total_tokens": n}
    return out


async def _json(send: Send, status: int, doc: dict[str, Any], headers: dict[str, str] | None = None) -> None:
    await _raw(send, status, json.dumps(doc).encode(), "application/json", headers)


async def _raw(
    send: Send, status: int, body: bytes, ctype: str, headers: dict[str, str] | None = None
) -> None:
    hs = [(b"content-type", ctype.encode()), *[(k.encode(), v.encode()) for k, v in (headers or {}).items()]]
    await send({"type": "http.response.start", "status": status, "headers": hs})
    await send({"type": "http.response.body", "body": body})
