"""The OpenAPI schema is complete: no generator warning, the errors and headers every operation
shares, integer ids, named enums, a description for every operation and field, valid examples."""

import re

import jsonschema
import pytest
from drf_spectacular.drainage import GENERATOR_STATS
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.validation import validate_schema

METHODS = ("get", "post", "put", "patch", "delete")
GENERATED_ENUM_NAME = re.compile(r"(\d{3}Enum|^BlankEnum|^NullEnum)$")


@pytest.fixture(scope="module")
def schema():
    GENERATOR_STATS.reset()
    GENERATOR_STATS.enable_color = False
    generated = SchemaGenerator().get_schema(request=None, public=True)
    assert not GENERATOR_STATS, f"schema warnings or errors: {GENERATOR_STATS}"
    return generated


def operations(schema):
    for path, item in schema["paths"].items():
        for method in METHODS:
            if method in item:
                yield method, path, item[method]


def test_schema_is_valid_openapi(schema):
    validate_schema(schema)


def test_every_operation_has_a_description(schema):
    assert [f"{m} {p}" for m, p, op in operations(schema) if not op.get("description")] == []


def test_authenticated_operations_answer_401_and_429_with_retry_after(schema):
    for method, path, op in operations(schema):
        if op["security"] != [{}]:
            assert {"401", "429"} <= set(op["responses"]), f"{method} {path}"
            assert "Retry-After" in op["responses"]["429"]["headers"], f"{method} {path}"


def test_every_error_response_is_the_one_error_shape(schema):
    for method, path, op in operations(schema):
        for code, response in op["responses"].items():
            if code == "414":  # answered by the HTTP server before the API: its own HTML
                assert set(response["content"]) == {"text/html"}, f"{method} {path}"
            elif code.startswith("4"):
                assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
                assert response["description"], f"{method} {path} {code}"


@pytest.mark.parametrize(
    ("method", "path", "codes"),
    [
        ("post", "/api/v1/listings/{id}/book", {"400", "401", "403", "404", "409", "413", "429"}),
        ("post", "/api/v1/listings", {"400", "401", "403", "409", "413", "429"}),
        ("get", "/api/v1/listings/{id}", {"401", "404", "429"}),
        ("get", "/api/v1/invoices/preview", {"400", "401", "403", "414", "429"}),
        ("get", "/api/v1/gpu-models/{slug}", {"404"}),
        ("post", "/api/v1/usage", {"400", "401", "403", "409", "413", "422", "429"}),
        ("get", "/api/v1/contracts/{id}/nodes", {"400", "401", "404", "414", "429"}),
        ("get", "/api/v1/contracts", {"400", "401", "404", "414", "429"}),
    ],
)
def test_operation_documents_its_errors(schema, method, path, codes):
    assert {code for code in schema["paths"][path][method]["responses"] if code >= "4"} == codes


@pytest.mark.parametrize(
    ("path", "codes"),
    [
        ("/api/v1/listings/{id}/book", ["capacity_unavailable", "credit_limit_exceeded", "idempotency_key_reused"]),
        ("/api/v1/compute-requests", ["credit_limit_exceeded", "idempotency_key_reused"]),
        ("/api/v1/contracts/{id}/terminate", ["committed_contract", "invalid_transition"]),
        ("/api/v1/api-keys", ["idempotent_replay_withheld"]),
        ("/api/v1/listings", ["capacity_unavailable"]),
        (
            "/api/v1/quotes/{id}/accept",
            ["quote_accepted", "quote_expired", "quote_price_changed", "capacity_unavailable", "credit_limit_exceeded"],
        ),
    ],
)
def test_conflicts_name_their_codes(schema, path, codes):
    description = schema["paths"][path]["post"]["responses"]["409"]["description"]
    assert [code for code in codes if f"`{code}`" not in description] == []


@pytest.mark.parametrize(
    ("method", "path", "status", "says"),
    [
        ("post", "/api/v1/usage", "422", "`all_rejected`"),
        ("get", "/api/v1/listings", "400", "an unknown `gpu_model`"),
        ("get", "/api/v1/listings", "400", "window has already begun or is over"),
        ("post", "/api/v1/clusters", "400", "an unknown `gpu_model`"),
        ("post", "/api/v1/compute-requests", "400", "an unknown `gpu_model`"),
        ("post", "/api/v1/quotes", "400", "an unknown `gpu_model`"),
        ("post", "/api/v1/listings", "400", "with `contract`: a contract that is not yours, metered"),
    ],
)
def test_refusals_say_what_they_refuse(schema, method, path, status, says):
    assert says in schema["paths"][path][method]["responses"][status]["description"]


def test_contract_lists_leave_the_nodes_to_a_single_contract(schema):
    def body(path, method="get", status="200"):
        return schema["paths"][path][method]["responses"][status]["content"]["application/json"]["schema"]

    components = schema["components"]["schemas"]
    assert "nodes" not in components["Contract"]["properties"]
    assert components["PaginatedContractList"]["properties"]["results"]["items"] == {
        "$ref": "#/components/schemas/Contract"
    }
    detail = {"$ref": "#/components/schemas/ContractDetail"}
    assert body("/api/v1/contracts/{id}") == body("/api/v1/listings/{id}/book", "post", "201") == detail
    assert "nodes" in components["ContractDetail"]["allOf"][1]["properties"]


def test_every_write_takes_an_idempotency_key(schema):
    writes = [(m, p, op) for m, p, op in operations(schema) if m in ("post", "put", "patch", "delete")]
    assert writes
    for method, path, op in writes:
        headers = [parameter["name"] for parameter in op["parameters"] if parameter["in"] == "header"]
        assert headers == ["Idempotency-Key"], f"{method} {path}"


def test_path_ids_are_integers(schema):
    for method, path, op in operations(schema):
        for parameter in op.get("parameters", []):
            if parameter["in"] == "path" and parameter["name"] != "slug":
                assert parameter["schema"]["type"] == "integer", f"{method} {path} {parameter['name']}"


def test_enums_are_named(schema):
    names = list(schema["components"]["schemas"])
    assert [name for name in names if GENERATED_ENUM_NAME.search(name)] == []


def test_every_property_has_a_description(schema):
    missing = [
        f"{name}.{prop}"
        for name, component in schema["components"]["schemas"].items()
        for prop, definition in component.get("properties", {}).items()
        if not definition.get("description")
    ]
    assert missing == []


def test_request_integers_are_bounded(schema):
    for name, component in schema["components"]["schemas"].items():
        if name.endswith("Request"):
            for prop, definition in component.get("properties", {}).items():
                if definition.get("type") == "integer" and not definition.get("readOnly"):
                    assert "maximum" in definition, f"{name}.{prop}"


def test_examples_validate_against_their_schemas(schema):
    checked = 0
    for _method, _path, op in operations(schema):
        content = op.get("requestBody", {}).get("content", {}).get("application/json", {})
        for example in content.get("examples", {}).values():
            body_schema = {**content["schema"], "components": schema["components"]}
            jsonschema.validate(example["value"], body_schema, format_checker=jsonschema.FormatChecker())
            checked += 1
    assert checked >= 4


def test_creating_operations_link_to_what_can_be_done_next(schema):
    by_id = {op["operationId"]: (method, path, op) for method, path, op in operations(schema)}
    links = by_id["listings_create"][2]["responses"]["201"]["links"]
    assert links["BookTheListing"] == {
        "operationId": "listings_book_create",
        "parameters": {"id": "$response.body#/id"},
        "description": "listings_book_create on the object just created: its `id` is the path's `id`.",
    }
    assert by_id["listings_book_create"][2]["responses"]["201"]["links"]["ReadTheContract"]["operationId"] == (
        "contracts_retrieve"
    )
    for method, path, op in operations(schema):
        for response in op["responses"].values():
            for link in response.get("links", {}).values():
                _, target_path, _ = by_id[link["operationId"]]
                assert "{id}" in target_path, f"{method} {path} links to {target_path}"
                assert "id" in response["content"]["application/json"]["schema"].get("properties", {}) or (
                    "$ref" in response["content"]["application/json"]["schema"]
                )


def test_no_component_is_described_by_a_mixin_of_the_code(schema):
    """drf-spectacular describes a serializer without a docstring of its own by its nearest
    base class's: a base or mixin of core.serializers (StrictSerializer, FieldsBuiltOnce) must
    not speak to API users, so it carries no docstring, and none shows in the schema."""
    from rest_framework.fields import Field
    from rest_framework.serializers import BaseSerializer

    from core import serializers as helpers

    def words(text: str) -> str:
        return " ".join(text.split())

    mixins = [
        cls
        for cls in vars(helpers).values()
        if isinstance(cls, type)
        and cls.__module__ == helpers.__name__
        and (issubclass(cls, BaseSerializer) or not issubclass(cls, Field))
        # a serializer that is a component of its own (Error) describes itself
        and cls.__name__.removesuffix("Serializer") not in schema["components"]["schemas"]
    ]
    assert {helpers.FieldsBuiltOnce, helpers.StrictSerializer, helpers.QuerySerializer} <= set(mixins)
    docstrings = {words(cls.__doc__) for cls in mixins if cls.__doc__}
    assert docstrings == set()
    described = {words(component.get("description", "")) for component in schema["components"]["schemas"].values()}
    assert not described & docstrings


def test_lists_link_from_their_first_object_to_the_operations_on_it(schema):
    from core.schema import FIRST_OF_PAGE_LINKS, LINKS

    by_id = {op["operationId"]: op for _method, _path, op in operations(schema)}
    for table in (LINKS, FIRST_OF_PAGE_LINKS):
        for (source, status), links in table.items():  # no link is lost to a misspelt operation
            assert set(by_id[source]["responses"][status]["links"]) == set(links), source
    link = by_id["invoices_list"]["responses"]["200"]["links"]["ReadTheFirstInvoice"]
    assert link["operationId"] == "invoices_retrieve"
    assert link["parameters"] == {"id": "$response.body#/results/0/id"}
    page = by_id["contracts_list"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert "results" in schema["components"]["schemas"][page["$ref"].rsplit("/", 1)[1]]["properties"]


def test_every_request_body_is_read_by_a_strict_serializer(schema):
    """Each request body's component comes from a serializer that derives from StrictSerializer,
    whose fields the strict-field test checks: a body read by another would escape both."""
    from tests.core.test_serializers import _input_serializers

    strict = {cls.__name__.removesuffix("Serializer") for cls in _input_serializers()}
    components = schema["components"]["schemas"]

    def names(component: str) -> list[str]:  # a oneOf of bodies stands for each of them
        one_of = components[component].get("oneOf")
        return [name for ref in one_of for name in names(ref["$ref"].rsplit("/", 1)[1])] if one_of else [component]

    def body(op) -> str | None:
        ref = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {}).get("$ref")
        return ref and ref.rsplit("/", 1)[1]

    bodies = {body(op) for _method, _path, op in operations(schema)} - {None}
    assert len(bodies) >= 15
    loose = [name for body in sorted(bodies) for name in names(body)
             if name.removeprefix("Patched").removesuffix("Request") not in strict]  # fmt: skip
    assert loose == []
