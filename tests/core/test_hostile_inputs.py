"""Inputs that used to end in a 500 (or in the wrong object): each is a clear 4xx in the one error shape."""

import io
import json
from urllib.parse import quote

import pytest
from django.test import RequestFactory, override_settings

from core.middleware import ApiBodySizeLimitMiddleware
from tests.conftest import assert_error

# Path segments that are not an id: none may reach a lookup (they raised ValueError, a 500),
# and none may be read as id 1 (``+1``, a trailing newline, Arabic-Indic and full-width digits).
NOT_IDS = ["abc", "%C3%9F", "1e3", "%00", "null", "+1", "1%0A", "%D9%A1", "%EF%BC%91", "-1", "99999999999999999999"]

DETAIL_ROUTES = [
    ("get", "/api/v1/listings/{id}"),
    ("patch", "/api/v1/listings/{id}"),
    ("post", "/api/v1/listings/{id}/withdraw"),
    ("post", "/api/v1/listings/{id}/book"),
    ("post", "/api/v1/api-keys/{id}/revoke"),
    ("get", "/api/v1/clusters/{id}"),
    ("patch", "/api/v1/clusters/{id}"),
    ("get", "/api/v1/clusters/{id}/nodes"),
    ("patch", "/api/v1/clusters/1/nodes/{id}"),
    ("get", "/api/v1/compute-requests/{id}"),
    ("post", "/api/v1/compute-requests/{id}/cancel"),
    ("get", "/api/v1/contracts/{id}"),
    ("post", "/api/v1/contracts/{id}/terminate"),
    ("get", "/api/v1/invoices/{id}"),
    ("get", "/api/v1/payouts/{id}"),
]


@pytest.mark.parametrize("method,route", DETAIL_ROUTES)
@pytest.mark.parametrize("bad_id", NOT_IDS)
def test_a_path_id_that_is_not_ascii_digits_is_the_json_404(both_client, method, route, bad_id):
    response = getattr(both_client, method)(route.format(id=bad_id), {}, format="json")
    assert_error(response, 404, "not_found")


ARABIC_INDIC = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")
FULL_WIDTH = str.maketrans("0123456789", "０１２３４５６７８９")


@pytest.mark.parametrize(
    "spelling",
    [
        lambda id_: f"+{id_}",
        lambda id_: f"{id_}%0A",
        lambda id_: quote(str(id_).translate(ARABIC_INDIC)),
        lambda id_: quote(str(id_).translate(FULL_WIDTH)),
    ],
    ids=["plus", "newline", "arabic-indic", "full-width"],
)
def test_only_the_ascii_digits_of_an_id_find_its_object(provider_client, spelling):
    cluster = provider_client.post(
        "/api/v1/clusters",
        {"name": "c", "gpu_model": "h100-sxm-80gb", "region": "us-south-1", "interconnect": "infiniband",
         "gpus_per_node": 8, "node_count": 1},
        format="json",
    ).json()  # fmt: skip
    assert provider_client.get(f"/api/v1/clusters/{cluster['id']}").status_code == 200
    assert_error(provider_client.get(f"/api/v1/clusters/{spelling(cluster['id'])}"), 404, "not_found")


@pytest.mark.parametrize("page", ["²", "١", "０", "1.5", "-1", "0"])
def test_a_page_that_is_not_a_plain_number_is_400(lab_client, page):
    assert_error(lab_client.get("/api/v1/listings", {"page": page}), 400, "invalid")


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def test_json_nested_too_deep_is_400_even_with_an_idempotency_key(provider_client):
    body = '{"name": ' + _nested(950) + "}"  # under 2 KB; it once raised RecursionError twice
    response = provider_client.generic(
        "POST", "/api/v1/clusters", body, content_type="application/json", HTTP_IDEMPOTENCY_KEY="deep-1"
    )
    error = assert_error(response, 400, "malformed_request")
    assert "nested deeper" in error["message"]


def test_json_nested_within_the_bound_is_parsed(provider_client):
    body = json.dumps({"name": json.loads(_nested(20))})
    response = provider_client.generic("POST", "/api/v1/clusters", body, content_type="application/json")
    assert_error(response, 400, "invalid")  # parsed, then refused field by field


@pytest.mark.parametrize("path", ["/api/v1/listings/abc/book", "/api/v1/nothing-here", "/api/v2/listings"])
def test_a_post_to_an_unmatched_api_path_is_the_json_404_not_a_csrf_page(path):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    assert_error(client.post(path, {}, content_type="application/json"), 404, "not_found")


def _chunked_request(body: bytes):
    """A request as gunicorn hands over a chunked body: decoded input, no Content-Length."""
    request = RequestFactory().generic("POST", "/api/v1/usage", b"", content_type="application/json")
    request.META.pop("CONTENT_LENGTH", None)
    request.META["HTTP_TRANSFER_ENCODING"] = "chunked"
    request.META["wsgi.input_terminated"] = True
    request.META["wsgi.input"] = io.BytesIO(body)
    request._stream = None
    return request


def test_a_chunked_body_is_read_whole():
    seen = {}

    def view(request):
        seen["body"] = request.body
        from django.http import HttpResponse

        return HttpResponse(status=204)

    body = json.dumps({"records": [{"id": "e1"}]}).encode()
    response = ApiBodySizeLimitMiddleware(view)(_chunked_request(body))
    assert response.status_code == 204
    assert seen["body"] == body


@override_settings(API_MAX_BODY_BYTES=10)
def test_a_chunked_body_over_the_limit_is_413():
    response = ApiBodySizeLimitMiddleware(lambda request: None)(_chunked_request(b"x" * 11))
    assert response.status_code == 413
    assert json.loads(response.content)["error"]["code"] == "payload_too_large"


def test_the_schema_types_every_path_id_as_an_integer(anon_client):
    import yaml

    schema = yaml.safe_load(anon_client.get("/api/v1/schema/").content)
    path_ids = {
        (path, parameter["name"]): parameter["schema"]["type"]
        for path, operations in schema["paths"].items()
        for operation in operations.values()
        for parameter in operation.get("parameters", [])
        if parameter["in"] == "path" and parameter["name"] != "slug"
    }
    assert len(path_ids) >= 14
    assert set(path_ids.values()) == {"integer"}, path_ids
