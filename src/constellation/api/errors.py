"""Maps the platform's one exception hierarchy (and FastAPI's validation errors) to OpenAI's
error shape `{"error": {"message", "type", "param", "code"}}` with the right status."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from constellation.errors import ConstellationError, Overloaded, RateLimited, UpstreamError

log = logging.getLogger("constellation.api")


def error_body(
    message: str, type_: str, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_response(exc: ConstellationError) -> JSONResponse:
    headers = {}
    if isinstance(exc, Overloaded | RateLimited):
        headers["Retry-After"] = str(exc.retry_after_s)
    if isinstance(exc, UpstreamError) and exc.retry_after_s is not None:
        headers["Retry-After"] = str(exc.retry_after_s)
    if isinstance(exc, RateLimited):
        headers.update(exc.headers)
    if exc.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(
        error_body(exc.message, exc.type, param=exc.param, code=exc.code), exc.status, headers=headers
    )


async def _platform_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ConstellationError)
    if exc.status >= 500:
        log.error("%s: %s", type(exc).__name__, exc.message)
    return error_response(exc)


def _describe(err: dict[str, Any]) -> tuple[str, str | None]:
    if err.get("type") == "json_invalid":  # its loc is the byte offset, not a field
        detail = (err.get("ctx") or {}).get("error", "")
        return (
            f"the request body is not valid JSON ({detail} at byte {err['loc'][-1]}); send a JSON object",
            None,
        )
    loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "header")]
    param = ".".join(loc) or None
    msg = err.get("msg", "invalid value")
    return (f"invalid '{param}': {msg}" if param else msg), param


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first, param = _describe(errors[0]) if errors else ("invalid request body", None)
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return JSONResponse(
        error_body(first + more, "invalid_request_error", param=param, code="invalid_request"), 400
    )


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    type_ = "invalid_request_error" if exc.status_code < 500 else "server_error"
    msg = str(exc.detail)
    if exc.status_code == 404:
        msg = f"no such route: {msg}; the API is under /v1 (OpenAI) and /api (admin); docs at /docs"
    return JSONResponse(error_body(msg, type_, code=str(exc.status_code)), exc.status_code)


def internal_error() -> JSONResponse:
    """The answer to a bug: OpenAI's shape, no internals (they go to the log)."""
    return JSONResponse(
        error_body("internal error; it has been logged", "server_error", code="internal_error"), 500
    )


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return internal_error()


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ConstellationError, _platform_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
