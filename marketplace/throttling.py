"""The API's rate limits: requests per API key, and failed authentications per client address."""

from rest_framework.exceptions import Throttled
from rest_framework.request import Request

from core.throttling import FixedWindowRateThrottle, client_address
from marketplace.models import ApiKey


class ApiKeyRateThrottle(FixedWindowRateThrottle):
    """Requests per API key: ``API_RATE_LIMIT``. A request without a key is not counted here."""

    scope = "api_key"
    rate_setting = "API_RATE_LIMIT"

    def get_cache_key(self, request: Request, view) -> str | None:
        if not isinstance(request.auth, ApiKey):
            return None
        return self._key_of(request.auth)

    def allow_api_key(self, api_key: ApiKey) -> bool:
        """Count one request of ``api_key`` made outside DRF's views (an idempotent replay)."""
        return self.rate is None or self.hit(self._key_of(api_key)) <= self.num_requests

    def _key_of(self, api_key: ApiKey) -> str:
        return self.cache_format % {"scope": self.scope, "ident": api_key.pk}


class AuthFailureThrottle(FixedWindowRateThrottle):
    """Failed authentications (a bad or missing API key) per client address:
    ``API_AUTH_FAILURE_RATE_LIMIT``. Past it, the address's requests are refused before any
    key is looked up, so guessing keys costs the guesser its address for the window."""

    scope = "api_auth_failure"
    rate_setting = "API_AUTH_FAILURE_RATE_LIMIT"

    def get_cache_key(self, request: Request, view=None) -> str:
        return self.cache_format % {"scope": self.scope, "ident": client_address(request)}

    def refuse_if_exceeded(self, request: Request) -> None:
        if self.rate is not None and self.exceeded(self.get_cache_key(request)):
            raise Throttled(wait=self.wait(), detail="Too many failed authentications from this address.")

    def record_failure(self, request: Request) -> None:
        if self.rate is not None:
            self.hit(self.get_cache_key(request))
