from dataclasses import dataclass

from rest_framework.authentication import BaseAuthentication
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.request import Request

from core.models import AuditEvent
from marketplace.models import ApiKey, Organization
from marketplace.selectors import api_key_lookup
from marketplace.services import api_key_touch
from marketplace.throttling import AuthFailureThrottle


@dataclass(frozen=True)
class ApiPrincipal:
    """The caller of the API: an organization, through one of its keys."""

    organization: Organization
    api_key: ApiKey

    is_authenticated = True
    is_anonymous = False
    is_staff = False

    @property
    def pk(self) -> int:
        return self.api_key.pk

    def __str__(self) -> str:
        return f"{self.organization} ({self.api_key.prefix})"

    @property
    def audit_label(self) -> str:
        """Who acted, as the audit trail names a caller of the API."""
        label = f"api key {self.api_key.prefix} ({self.organization.name})"
        return label[: AuditEvent._meta.get_field("actor_label").max_length]


class ApiKeyAuthentication(BaseAuthentication):
    """``Authorization: Bearer <api key>``. An address that failed too often is refused (429)
    before its key is looked up; each 401 counts against it (``AuthFailureThrottle``)."""

    keyword = "bearer"

    def authenticate(self, request: Request):
        AuthFailureThrottle().refuse_if_exceeded(request)
        header = request.META.get("HTTP_AUTHORIZATION", "")
        if not header:
            return None
        scheme, _, token = header.partition(" ")
        if scheme.lower() != self.keyword or not token.strip():
            raise AuthenticationFailed("Use the header 'Authorization: Bearer <api key>'.")
        api_key = api_key_lookup(raw=token.strip())
        if api_key is None:
            raise AuthenticationFailed("Invalid, revoked or suspended API key.")
        api_key_touch(api_key=api_key)
        return ApiPrincipal(organization=api_key.organization, api_key=api_key), api_key

    def authenticate_header(self, request: Request) -> str:
        # DRF asks for this header exactly when it answers 401, for a bad key (raised above)
        # as for a missing one (refused by the view's permissions): the one place that sees
        # every failed authentication, once each.
        AuthFailureThrottle().record_failure(request)
        return 'Bearer realm="api"'
