"""What a request must pass before its body is read: a known API key on authenticated paths,
then a body within the configured size (413 at its Content-Length, or as a chunked body grows)."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from constellation.api.deps import principal_of
from constellation.api.errors import error_response
from constellation.api.state import state_of
from constellation.config import Settings
from constellation.errors import ConstellationError, TooLarge

# Every route under these prefixes takes a principal (tests/integration/test_gate.py checks it).
AUTHENTICATED = ("/v1/", "/api/")
UPLOADS = "/api/finetunes"


class Gate:
    """Pure ASGI: a refusal here is sent without a single `receive()`, so a client that declared a
    huge body gets its 401 or 413 at once and the connection is closed behind it."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.max_body = settings.max_body_bytes
        self.max_upload = settings.max_upload_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        limit = self.max_upload if path.startswith(UPLOADS) else self.max_body
        try:
            if path.startswith(AUTHENTICATED):
                header = _header(scope, b"authorization")
                principal = await principal_of(state_of(scope["app"]), header.decode("latin-1"))
                scope.setdefault("state", {})["principal"] = principal
            declared = _header(scope, b"content-length")
            if declared.isdigit() and int(declared) > limit:
                raise _too_large(limit, path)
        except ConstellationError as exc:
            await _refuse(exc, scope, receive, send)
            return
        if declared or not _header(scope, b"transfer-encoding"):
            await self.app(scope, receive, send)  # the server holds a body to its Content-Length
            return
        await Bounded(self.app, limit, path)(scope, receive, send)


class Bounded:
    """A body without a Content-Length (chunked), counted as it arrives: past `limit`, the 413 goes
    out and the app reads a disconnect; whatever it answers then is dropped."""

    def __init__(self, app: ASGIApp, limit: int, path: str) -> None:
        self.app, self.limit, self.path = app, limit, path
        self.received = 0
        self.started = self.refused = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def counted() -> Message:
            message = await receive()
            if message["type"] == "http.request" and not self.refused:
                self.received += len(message.get("body", b""))
                if self.received > self.limit:
                    self.refused = True
                    if not self.started:
                        await _refuse(_too_large(self.limit, self.path), scope, receive, send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded(message: Message) -> None:
            if self.refused:
                return
            self.started = True
            await send(message)

        await self.app(scope, counted, guarded)


def _header(scope: Scope, name: bytes) -> bytes:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return b""


def _too_large(limit: int, path: str) -> TooLarge:
    where = "fine-tune uploads" if path.startswith(UPLOADS) else "requests"
    setting = "max_upload_body_bytes" if path.startswith(UPLOADS) else "max_body_bytes"
    return TooLarge(
        f"the request body exceeds {limit} bytes, the limit for {where}; send less per request "
        f"(an operator can raise CONSTELLATION_{setting.upper()})",
        code="request_too_large",
    )


async def _refuse(exc: ConstellationError, scope: Scope, receive: Receive, send: Send) -> None:
    """The error in OpenAI's shape; a connection whose body stays unread closes after it."""
    response = error_response(exc)
    if _header(scope, b"transfer-encoding") or _header(scope, b"content-length") not in (b"", b"0"):
        response.headers["connection"] = "close"
    await response(scope, receive, send)
