"""OpenAPI schema hooks shared by every app."""

from drf_spectacular.extensions import OpenApiSerializerExtension
from drf_spectacular.utils import OpenApiResponse

from core.routers import ID_PATTERN
from core.serializers import ErrorSerializer, StrictSerializer

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


class StrictSerializerSchema(OpenApiSerializerExtension):
    """A StrictSerializer refuses fields it does not know: its schema says so
    (``additionalProperties: false``), so a client or a fuzzer knows that an extra field is a 400."""

    target_class = StrictSerializer
    match_subclasses = True

    def map_serializer(self, auto_schema, direction):
        schema = auto_schema._map_serializer(self.target, direction, bypass_extensions=True)
        return schema | {"additionalProperties": False}


def error_response(error_ref: dict, description: str) -> dict:
    """An OpenAPI response whose body is the API's one error shape."""
    return {"description": description, "content": {"application/json": {"schema": error_ref}}}


def documented_error(title: str, **codes: str):
    """A view's error response in the one error shape, documenting each error ``code`` it may
    answer with what it means."""
    return OpenApiResponse(
        ErrorSerializer,
        description=f"{title}. " + "; ".join(f"`{code}`: {meaning}" for code, meaning in codes.items()) + ".",
    )


def conflict(**codes: str):
    """A view's 409 response, documenting each error ``code`` it may answer with what it means."""
    return documented_error("Conflict", **codes)


def bad_request(invalid: str):
    """A view's 400 response, saying which of its own values it refuses (``invalid``); the
    refusals every operation shares are added to it (``marketplace.api.schema``)."""
    return documented_error("Bad request", invalid=invalid)


_PAGE_PROPERTIES = {
    "count": "How many objects the whole list has.",
    "next": "The URL of the next page; null on the last.",
    "previous": "The URL of the previous page; null on the first.",
    "results": "This page's objects.",
}


def describe_shared_components(result, generator, request, public):
    """Describe what every paginated list shares, and name the empty-string choice.

    drf-spectacular builds each ``Paginated...List`` itself, with bare properties; and it splits
    the empty string out of a choice set that allows it into a component it calls ``BlankEnum``.
    Here that component says what the empty string means: not set.
    """
    schemas = result.get("components", {}).get("schemas", {})
    for name, schema in schemas.items():
        if name.startswith("Paginated") and name.endswith("List"):
            for prop, description in _PAGE_PROPERTIES.items():
                schema["properties"][prop].setdefault("description", description)
    if "BlankEnum" in schemas:
        schemas["NotSetEnum"] = {**schemas.pop("BlankEnum"), "description": "The empty string: not set."}
        _replace_ref(result, "#/components/schemas/BlankEnum", "#/components/schemas/NotSetEnum")
    return result


# What a client can do next with an object it has just created: OpenAPI links from a creating
# operation's response to the operations on that object (by operationId), passing the new
# object's id. Clients and tools read them (the fuzz run's stateful phase creates a listing,
# then books it and reads the contract).
LINKS = {
    ("quotes_create", "201"): {
        "ReadTheQuote": "quotes_retrieve",
        "AcceptTheQuote": "quotes_accept_create",
    },
    ("api_keys_create", "201"): {
        "ReadTheKey": "api_keys_retrieve",
        "RevokeTheKey": "api_keys_revoke_create",
    },
    ("clusters_create", "201"): {
        "ReadTheCluster": "clusters_retrieve",
        "RenameTheCluster": "clusters_partial_update",
        "ListItsNodes": "clusters_nodes_list",
        "AddNodes": "clusters_nodes_create",
    },
    ("listings_create", "201"): {
        "ReadTheListing": "listings_retrieve",
        "BookTheListing": "listings_book_create",
        "RepriceOrPauseTheListing": "listings_partial_update",
        "WithdrawTheListing": "listings_withdraw_create",
    },
    ("listings_book_create", "201"): {
        "ReadTheContract": "contracts_retrieve",
        "ListItsNodes": "contracts_nodes_list",
        "TerminateTheContract": "contracts_terminate_create",
        "ReadItsAccessManifest": "contracts_access_retrieve",
        "AttachKeysAndANote": "contracts_access_update",
    },
    ("ssh_keys_create", "201"): {
        "ReadTheKey": "ssh_keys_retrieve",
        "DeleteTheKey": "ssh_keys_destroy",
    },
    ("clusters_nodes_incidents_create", "201"): {
        "ReadTheIncident": "incidents_retrieve",
        "ResolveTheIncident": "incidents_resolve_create",
    },
    ("webhook_endpoints_create", "201"): {
        "ReadTheEndpoint": "webhook_endpoints_retrieve",
        "ListItsDeliveries": "webhook_endpoints_deliveries_list",
        "DisableTheEndpoint": "webhook_endpoints_disable_create",
        "RollItsSecret": "webhook_endpoints_roll_secret_create",
        "DeleteTheEndpoint": "webhook_endpoints_destroy",
    },
    ("compute_requests_create", "201"): {
        "ReadTheRequest": "compute_requests_retrieve",
        "CancelTheRequest": "compute_requests_cancel_create",
    },
}


# And from a list's page to the operations on its first object: a client (and the fuzz run) that
# did not create an invoice, a payout statement or a contract itself reaches them from the list.
FIRST_OF_PAGE_LINKS = {
    ("contracts_list", "200"): {
        "ReadTheFirstContract": "contracts_retrieve",
        "ListItsNodes": "contracts_nodes_list",
        "ReadItsAccessManifest": "contracts_access_retrieve",
        "ReportItsDelivery": "contracts_delivered_create",
    },
    ("invoices_list", "200"): {"ReadTheFirstInvoice": "invoices_retrieve"},
    ("payouts_list", "200"): {"ReadTheFirstStatement": "payouts_retrieve"},
    ("events_list", "200"): {"ReadTheFirstEvent": "events_retrieve"},
    ("incidents_list", "200"): {
        "ReadTheFirstIncident": "incidents_retrieve",
        "ResolveTheFirstIncident": "incidents_resolve_create",
    },
    ("webhook_endpoints_list", "200"): {
        "ReadTheFirstEndpoint": "webhook_endpoints_retrieve",
        "ListItsDeliveries": "webhook_endpoints_deliveries_list",
        "EnableTheFirstEndpoint": "webhook_endpoints_enable_create",
    },
}


def response_links(result, generator, request, public):
    """Add ``LINKS`` and ``FIRST_OF_PAGE_LINKS`` to the responses they start from; each passes the
    object's ``id`` as the linked operation's ``id`` path parameter."""
    operations = {
        operation["operationId"]: operation
        for methods in result.get("paths", {}).values()
        for operation in methods.values()
        if isinstance(operation, dict) and "operationId" in operation
    }
    tables = (
        (LINKS, "$response.body#/id", "the object just created"),
        (FIRST_OF_PAGE_LINKS, "$response.body#/results/0/id", "the first object of the page"),
    )
    for table, pointer, which in tables:
        for (source, status), links in table.items():
            if source not in operations:  # not in this (partial) schema
                continue
            operations[source]["responses"][status]["links"] = {
                name: {
                    "operationId": target,
                    "parameters": {"id": pointer},
                    "description": f"{target} on {which}: its `id` is the path's `id`.",
                }
                for name, target in links.items()
                if target in operations
            }
    return result


def _replace_ref(node, old: str, new: str) -> None:
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if item.get("$ref") == old:
                item["$ref"] = new
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
