"""Domain errors and the one JSON error shape of the API.

Services raise DomainError subclasses; ``core.exception_handler`` turns them, and every
DRF/Django error, into ``{"error": {"code", "message", "fields"}}``.
"""

from typing import Any

from rest_framework import status


class DomainError(Exception):
    """A business rule refused the operation."""

    status_code = status.HTTP_409_CONFLICT
    code = "conflict"

    def __init__(self, message: str, *, fields: dict[str, Any] | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.fields = fields or {}
        if code:
            self.code = code


class InvalidInput(DomainError):
    """The request is well-formed but breaks a rule about its own values."""

    status_code = status.HTTP_400_BAD_REQUEST
    code = "invalid"


class InvalidTransition(DomainError):
    code = "invalid_transition"


class CapacityUnavailable(DomainError):
    code = "capacity_unavailable"


class CreditLimitExceeded(DomainError):
    """A sale would take the lab's exposure past its credit limit."""

    code = "credit_limit_exceeded"


class NotAllowed(DomainError):
    """The caller may see the object but not do this to it (a provider terminating the
    contract it sold, say)."""

    status_code = status.HTTP_403_FORBIDDEN
    code = "permission_denied"


class NotFound(DomainError):
    status_code = status.HTTP_404_NOT_FOUND
    code = "not_found"


def error_body(code: str, message: str, fields: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "fields": fields or {}}}
