"""The API's errors as exceptions: each carries the error's ``code``, ``message`` and ``fields``.

The class follows the error's code where the code matters to a program (``CapacityUnavailable``
and ``CreditLimitExceeded`` are both 409s, and a caller handles them differently), else its status.
"""

from __future__ import annotations

from typing import Any


class GpubrokerError(Exception):
    """Anything this client raises."""


class ConfigurationError(GpubrokerError):
    """No API key, or a base URL that is not one."""


class TransportError(GpubrokerError):
    """The API could not be reached, and retrying did not help."""


class ApiError(GpubrokerError):
    """The API answered with an error: ``status``, and its body's ``code``, ``message`` and ``fields``."""

    def __init__(
        self,
        *,
        status: int,
        code: str,
        message: str,
        fields: dict[str, Any] | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
    ):
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.fields = fields or {}
        self.request_id = request_id
        self.retry_after = retry_after


class BadRequest(ApiError):
    """400: a value was refused (``fields`` names each), or the body was not JSON."""


class AuthenticationFailed(ApiError):
    """401: no API key, or one that is invalid or revoked."""


class PermissionDenied(ApiError):
    """403: the organization's role, or a read-only key, does not allow this."""


class NotFound(ApiError):
    """404."""


class Conflict(ApiError):
    """409: a business rule refused the operation (an invalid transition, say)."""


class CapacityUnavailable(Conflict):
    """409 ``capacity_unavailable``: not enough free nodes for the window."""


class CreditLimitExceeded(Conflict):
    """409 ``credit_limit_exceeded``: the sale would pass the lab's credit limit (``fields``: the figures)."""


class IdempotencyConflict(Conflict):
    """409: an Idempotency-Key reused for another request, or the replay of an answer that held a secret."""


class PayloadTooLarge(ApiError):
    """413."""


class AllRejected(ApiError):
    """422 ``all_rejected``: every usage record of a batch was refused (``fields["rejected"]`` says why)."""


class RateLimited(ApiError):
    """429: too many requests; ``retry_after`` is the seconds the API asked to wait."""


class ServerError(ApiError):
    """5xx."""


BY_CODE: dict[str, type[ApiError]] = {
    "capacity_unavailable": CapacityUnavailable,
    "credit_limit_exceeded": CreditLimitExceeded,
    "idempotency_key_reused": IdempotencyConflict,
    "idempotent_replay_withheld": IdempotencyConflict,
    "all_rejected": AllRejected,
}
BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest,
    401: AuthenticationFailed,
    403: PermissionDenied,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    422: AllRejected,
    429: RateLimited,
}


def error_class(status: int, code: str) -> type[ApiError]:
    if code in BY_CODE:
        return BY_CODE[code]
    if status >= 500:
        return ServerError
    return BY_STATUS.get(status, ApiError)
