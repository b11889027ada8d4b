"""The GPU compute brokerage's Python client: typed models, sync and async, retries that are safe."""

__version__ = "0.1.0"

from gpubroker._http import Retry  # noqa: E402
from gpubroker.client import AsyncClient, Client  # noqa: E402
from gpubroker.errors import (  # noqa: E402
    AllRejected,
    ApiError,
    AuthenticationFailed,
    BadRequest,
    CapacityUnavailable,
    ConfigurationError,
    Conflict,
    CreditLimitExceeded,
    GpubrokerError,
    IdempotencyConflict,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    RateLimited,
    ServerError,
    TransportError,
)

__all__ = [
    "AllRejected",
    "ApiError",
    "AsyncClient",
    "AuthenticationFailed",
    "BadRequest",
    "CapacityUnavailable",
    "Client",
    "ConfigurationError",
    "Conflict",
    "CreditLimitExceeded",
    "GpubrokerError",
    "IdempotencyConflict",
    "NotFound",
    "PayloadTooLarge",
    "PermissionDenied",
    "RateLimited",
    "Retry",
    "ServerError",
    "TransportError",
    "__version__",
]
