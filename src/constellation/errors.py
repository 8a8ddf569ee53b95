"""One exception hierarchy for the whole platform; `api` maps each class to an HTTP status.

Every message says what to change, not only what went wrong.
"""

from __future__ import annotations


class ConstellationError(Exception):
    """Base error. `status` is the HTTP status, `type` and `code` follow OpenAI's error shape."""

    status = 500
    type = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code


class InvalidInput(ConstellationError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_input"


class Unauthenticated(ConstellationError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PaymentRequired(ConstellationError):
    status = 402
    type = "billing_error"
    code = "insufficient_balance"


class Forbidden(ConstellationError):
    status = 403
    type = "permission_error"
    code = "forbidden"


class LicenseRefused(Forbidden):
    code = "license_refused"


class NotFound(ConstellationError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class Conflict(ConstellationError):
    status = 409
    type = "invalid_request_error"
    code = "conflict"


class TooLarge(ConstellationError):
    status = 413
    type = "invalid_request_error"
    code = "too_large"


class RateLimited(ConstellationError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(
        self, message: str, *, retry_after_s: int = 1, headers: dict[str, str] | None = None, **kw: str | None
    ) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.retry_after_s = retry_after_s
        self.headers = headers or {}  # e.g. OpenAI's x-ratelimit-* fields


class Overloaded(ConstellationError):
    status = 503
    type = "server_error"
    code = "overloaded"

    def __init__(self, message: str, *, retry_after_s: int = 1, **kw: str | None) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.retry_after_s = retry_after_s


class EngineUnavailable(Overloaded):
    """An engine worker died under this request or is being restarted: retry it shortly."""

    code = "engine_unavailable"


class UpstreamError(ConstellationError):
    """An upstream provider failed this request: 502 (it answered wrongly), 503 (it is overloaded
    or down; `Retry-After` says when to retry) or 504 (it did not answer in time). The code names
    what happened upstream, e.g. `upstream_status_500`, `upstream_timeout`."""

    status = 502
    type = "server_error"
    code = "upstream_error"

    def __init__(
        self, message: str, *, status: int = 502, retry_after_s: int | None = None, **kw: str | None
    ) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.status = status
        self.retry_after_s = retry_after_s


class IntegrityError(ConstellationError):
    """Stored bytes do not match their recorded sha256, or a ledger invariant is broken."""

    status = 500
    type = "server_error"
    code = "integrity_error"
