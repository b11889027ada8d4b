"""The API's OpenAPI schema: how callers authenticate, and the errors and headers every
operation shares, derived from each view's authentication, permissions and inputs.

It lives with the API keys, the permissions and the idempotency middleware it describes.
"""

from django.conf import settings
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema
from rest_framework.permissions import SAFE_METHODS

from core.schema import error_response
from core.serializers import ErrorSerializer
from marketplace.idempotency import MUTATING_METHODS
from marketplace.permissions import IsOrganizationMember

IDEMPOTENCY_CONFLICTS = {
    "idempotency_key_reused": "this Idempotency-Key was used before with a different request",
    "idempotent_replay_withheld": "the first request with this Idempotency-Key succeeded and its response "
    "carried a secret, which is never stored; list what it created instead",
}


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "marketplace.authentication.ApiKeyAuthentication"
    name = "ApiKey"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "API key",
            "description": "An organization's API key: `Authorization: Bearer gpb_...`.",
        }


class ApiSchema(AutoSchema):
    """drf-spectacular's AutoSchema, plus the API's shared conventions on every operation:
    the error responses that can apply, the ``Idempotency-Key`` header, ``Retry-After``."""

    def get_operation(self, path, path_regex, path_prefix, method, registry):
        operation = super().get_operation(path, path_regex, path_prefix, method, registry)
        if operation is None:
            return None
        error_ref = self.resolve_serializer(ErrorSerializer(), "response").ref
        authenticated = bool(self.view.get_authenticators()) and self._requires_key()
        idempotent = authenticated and self.method in MUTATING_METHODS
        if idempotent:
            operation.setdefault("parameters", []).append(_IDEMPOTENCY_KEY_PARAMETER)
            for code, response in operation["responses"].items():
                if code.startswith("2"):
                    response.setdefault("headers", {})["Idempotent-Replayed"] = _REPLAYED_HEADER
        responses = operation["responses"]
        for code, description in self._errors(operation, authenticated=authenticated, idempotent=idempotent):
            if code in responses:  # the view documented this status itself: keep its codes first
                own = responses[code]["description"]
                title, _, rest = description.partition(". ")
                responses[code]["description"] = f"{own} {rest if own.startswith(f'{title}. ') else description}"
            elif isinstance(description, dict):
                responses[code] = description
            else:
                responses[code] = error_response(error_ref, description)
        if "429" in responses:
            responses["429"].setdefault("headers", {})["Retry-After"] = _RETRY_AFTER_HEADER
        operation["responses"] = dict(sorted(responses.items()))
        return operation

    def _requires_key(self) -> bool:
        return any(isinstance(permission, IsOrganizationMember) for permission in self.view.get_permissions())

    def _errors(self, operation, *, authenticated: bool, idempotent: bool):
        parameters = operation.get("parameters", [])
        has_body = "requestBody" in operation
        # A bad `page` is a 404 (below); every other query parameter, `page_size` included, is checked.
        has_query = any(parameter["in"] == "query" and parameter["name"] != "page" for parameter in parameters)
        invalid = []
        if has_body:
            invalid.append("`invalid`: a value of the body was refused (`fields` names each, with why)")
            invalid.append("`malformed_request`: the body is not JSON (or nests deeper than 32 levels)")
        if has_query:
            invalid.append("`invalid`: a query parameter was refused (`fields` names it, with why)")
        if idempotent:
            invalid.append("`invalid`: an `Idempotency-Key` that is blank or longer than 255 characters")
        if invalid:
            yield "400", "Bad request. " + "; ".join(invalid) + "."
        if authenticated:
            yield (
                "401",
                "`not_authenticated`: no API key, or one that is invalid or revoked, or whose organization "
                "is suspended. Send `Authorization: Bearer <api key>`.",
            )
            refusals = [
                f"`permission_denied`: {permission.message.rstrip('.')}"
                for permission in self.view.get_permissions()
                if isinstance(permission, IsOrganizationMember) and type(permission) is not IsOrganizationMember
            ]
            if self.method not in SAFE_METHODS:
                refusals.append("`permission_denied`: the API key is read-only; use a full key to change anything")
            if refusals:
                yield "403", "Forbidden. " + "; ".join(refusals) + "."
        missing = []
        if any(parameter["in"] == "path" for parameter in parameters):
            missing.append("no such object, or not one you may see")
        if any(parameter["name"] == "page" and parameter["in"] == "query" for parameter in parameters):
            missing.append("a `page` past the last one")
        if missing:
            yield "404", "`not_found`: " + "; or ".join(missing) + "."
        if idempotent:
            conflicts = "; ".join(f"`{code}`: {meaning}" for code, meaning in IDEMPOTENCY_CONFLICTS.items())
            yield "409", f"Idempotency conflicts. {conflicts}."
        if has_body:
            yield "413", f"`payload_too_large`: the body is over {settings.API_MAX_BODY_BYTES} bytes."
        if any(parameter["in"] == "query" for parameter in parameters):
            yield "414", _URI_TOO_LONG
        if authenticated:
            yield (
                "429",
                "`throttled`: the API key is over its rate limit, or this address sent too many requests that "
                "failed to authenticate. Retry after the `Retry-After` seconds.",
            )


# A request line past the HTTP server's limit (gunicorn's 4,094 bytes, or the proxy's) never
# reaches the API: the server answers it, in its own HTML.
_URI_TOO_LONG = {
    "description": "URI too long: the request line is over 4,094 bytes. Answered by the HTTP server, before the "
    "API, as an HTML page; shorten the query.",
    "content": {"text/html": {"schema": {"type": "string"}}},
}

_IDEMPOTENCY_KEY_PARAMETER = {
    "in": "header",
    "name": "Idempotency-Key",
    "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
    "description": (
        "Makes a retry safe: the first request with a key is done once, and a retry with the same key and "
        "the same body answers the first (successful) response again, with `Idempotent-Replayed: true`. The "
        "same key with another body answers 409 `idempotency_key_reused`. Only successful responses are kept, "
        "for 48 hours; a failed request may be retried with its key. A response that carries a secret (a new "
        "API key) is never stored: its retry answers 409 `idempotent_replay_withheld`."
    ),
    "example": "book-2030-01-07-a",
}
_REPLAYED_HEADER = {
    "schema": {"type": "string", "enum": ["true"]},
    "description": "Present when this is the stored response of an earlier request with the same Idempotency-Key.",
}
_RETRY_AFTER_HEADER = {
    "schema": {"type": "integer", "minimum": 0, "maximum": 86400},
    "description": "Seconds to wait before trying again.",
}
