"""What the three market data operations share: a key, a known GPU model, and a schema that
documents them and their errors."""

import pytest
from drf_spectacular.generators import SchemaGenerator

from tests.conftest import assert_error

pytestmark = pytest.mark.django_db

OPERATIONS = ["book", "trades", "index"]


@pytest.mark.parametrize("operation", OPERATIONS)
def test_no_key_is_401(anon_client, operation):
    assert_error(anon_client.get(f"/api/v1/market/h100-sxm-80gb/{operation}"), 401, "not_authenticated")


@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize("slug", ["h100", "no-such-gpu", "H100-SXM-80GB", "h100%20sxm", "x" * 65])
def test_an_unknown_gpu_model_is_404(lab_client, operation, slug):
    assert_error(lab_client.get(f"/api/v1/market/{slug}/{operation}"), 404, "not_found")


@pytest.mark.parametrize("operation", OPERATIONS)
def test_the_market_is_read_only(lab_client, operation):
    assert_error(lab_client.post(f"/api/v1/market/h100-sxm-80gb/{operation}", {}, format="json"), 405)


@pytest.fixture(scope="module")
def schema():
    return SchemaGenerator().get_schema(request=None, public=True)


@pytest.mark.parametrize("operation", OPERATIONS)
def test_the_schema_documents_each_operation_and_its_errors(schema, operation):
    documented = schema["paths"][f"/api/v1/market/{{slug}}/{operation}"]["get"]
    assert documented["operationId"] == f"market_{operation}"
    assert {code for code in documented["responses"] if code >= "4"} == {"400", "401", "404", "414", "429"}
    assert "an unknown GPU model" in documented["responses"]["404"]["description"]
    assert "Anonymous" in documented["description"]
    slug = next(parameter for parameter in documented["parameters"] if parameter["name"] == "slug")
    assert slug["in"] == "path" and slug["schema"]["pattern"] == "^[-a-zA-Z0-9_]{1,64}$"


def test_the_trades_are_a_paginated_list(schema):
    documented = schema["paths"]["/api/v1/market/{slug}/trades"]["get"]
    assert {parameter["name"] for parameter in documented["parameters"]} == {"slug", "since", "page", "page_size"}
    page = documented["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    assert page == "#/components/schemas/PaginatedTradeList"
