"""OpenAPI schema hooks shared by every app."""

from core.routers import ID_PATTERN

_ID_SCHEMA = {"type": "integer", "minimum": 0, "maximum": 10**18 - 1}


def integer_path_ids(result, generator, request, public):
    """Type every path id the router matches with ``ID_PATTERN`` as the integer it is.

    drf-spectacular reads a regex path parameter as a string with a pattern; these are ids.
    """
    pattern = f"^{ID_PATTERN}$"
    for operations in result.get("paths", {}).values():
        for operation in operations.values():
            for parameter in operation.get("parameters", []) if isinstance(operation, dict) else []:
                schema = parameter.get("schema", {})
                if parameter.get("in") == "path" and schema.get("pattern") == pattern:
                    parameter["schema"] = dict(_ID_SCHEMA)
    return result
