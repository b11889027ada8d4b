"""The client's models follow the schema the API serves: a field added, removed or retyped on
either side, a required field made optional, a nullable one, an enum's values, all fail here.
Regenerate the models (client/scripts/generate_models.py) and commit them."""

import copy

import pytest
from drf_spectacular.generators import SchemaGenerator
from gpubroker import models

from tests.client.drift import drift


@pytest.fixture(scope="module")
def served():
    """The schema as /api/v1/schema/ serves it (the same generator, without a request)."""
    return SchemaGenerator().get_schema(request=None, public=True)


def test_the_clients_models_match_the_served_schema(served):
    problems = drift(served, models)
    assert problems == [], (
        "The API's schema and the client's models differ. Regenerate the models and commit them:\n"
        "  .venv/bin/python manage.py spectacular --format openapi-json --file schema.json\n"
        "  .venv/bin/python client/scripts/generate_models.py schema.json\n" + "\n".join(problems)
    )


def test_every_component_has_its_model(served):
    assert {name for name in served["components"]["schemas"] if getattr(models, name, None) is None} == set()


def test_a_field_the_api_adds_is_reported(served):
    schema = copy.deepcopy(served)
    schema["components"]["schemas"]["Listing"]["properties"]["spot_price"] = {"type": "string", "format": "decimal"}
    assert drift(schema, models) == ["Listing.spot_price: in the schema (decimal), not in the client's model"]


def test_a_field_the_api_removes_is_reported(served):
    schema = copy.deepcopy(served)
    contract = schema["components"]["schemas"]["Contract"]
    del contract["properties"]["price_per_gpu_hour"]
    contract["required"].remove("price_per_gpu_hour")
    problems = drift(schema, models)
    # ContractDetail is Contract and more: it loses the field too.
    assert problems == [
        "Contract.price_per_gpu_hour: in the client's model, no longer in the schema",
        "ContractDetail.price_per_gpu_hour: in the client's model, no longer in the schema",
    ]


def test_a_field_the_api_retypes_is_reported(served):
    schema = copy.deepcopy(served)
    schema["components"]["schemas"]["ComputeRequest"]["properties"]["gpu_count"] = {"type": "string"}
    schema["components"]["schemas"]["Listing"]["properties"]["starts_at"]["format"] = "date"
    assert drift(schema, models) == [
        "ComputeRequest.gpu_count: the schema says str, the client's model int",
        "Listing.starts_at: the schema says date, the client's model datetime",
    ]


def test_a_field_of_an_inline_object_is_checked_too(served):
    schema = copy.deepcopy(served)
    item = schema["components"]["schemas"]["UsageBatchRequest"]["properties"]["records"]["items"]
    item["properties"]["gpu_seconds"] = {"type": "integer"}
    assert drift(schema, models) == [
        "UsageBatchRequest.records[].gpu_seconds: the schema says int, the client's model decimal"
    ]


def test_required_nullable_and_enum_changes_are_reported(served):
    schema = copy.deepcopy(served)
    components = schema["components"]["schemas"]
    components["Cluster"]["required"].remove("name")
    components["Contract"]["properties"]["gpu_count"]["nullable"] = True
    components["BillingModeEnum"]["enum"].append("spot")
    del components["PaginatedSshKeyList"]
    assert drift(schema, models) == [
        "BillingModeEnum: the schema's value 'spot' is not in the client's enum",
        "Cluster.name: optional in the schema, not in the client's model",
        "Contract.gpu_count: may be null in the schema, not in the client's model",
        "ContractDetail.gpu_count: may be null in the schema, not in the client's model",
        "PaginatedSshKeyList: a model in the client, no longer in the schema",
    ]


def test_a_body_that_may_take_another_shape_is_reported(served):
    schema = copy.deepcopy(served)
    schema["components"]["schemas"]["ListingCreateRequestRequest"]["oneOf"].pop()
    assert drift(schema, models) == [
        "ListingCreateRequestRequest: one of ['ListingCreateRequest'] in the schema, "
        "of ['ListingCreateRequest', 'ResaleCreateRequest'] in the client"
    ]
