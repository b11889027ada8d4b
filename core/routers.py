"""The API's router."""

from rest_framework.routers import SimpleRouter

# An object id in a path: ASCII digits only (``\d`` would take any script's digits, and
# ``int()`` would then read them), at most 18, so every id fits a PostgreSQL bigint. Anything
# else matches no route and is the JSON 404.
ID_PATTERN = "[0-9]{1,18}"


class ApiRouter(SimpleRouter):
    """No trailing slash; a detail route's id matches ``ID_PATTERN`` unless its view says otherwise."""

    def __init__(self):
        super().__init__(trailing_slash=False)

    def get_lookup_regex(self, viewset, lookup_prefix: str = "") -> str:
        lookup_field = getattr(viewset, "lookup_field", "pk")
        lookup_url_kwarg = getattr(viewset, "lookup_url_kwarg", None) or lookup_field
        default = ID_PATTERN if lookup_field in ("pk", "id") else "[^/.]+"
        value = getattr(viewset, "lookup_value_regex", default)
        return f"(?P<{lookup_prefix}{lookup_url_kwarg}>{value})"
