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

CLUSTER = {"name": "c", "gpu_model": "h100-sxm-80gb", "region": "us-south-1", "interconnect": "infiniband",
           "gpus_per_node": 8, "node_count": 1}  # fmt: skip


def new_cluster(client) -> dict:
    return client.post("/api/v1/clusters", CLUSTER, format="json").json()


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
    cluster = new_cluster(provider_client)
    assert provider_client.get(f"/api/v1/clusters/{cluster['id']}").status_code == 200
    assert_error(provider_client.get(f"/api/v1/clusters/{spelling(cluster['id'])}"), 404, "not_found")


# Lists paged by DRF's own paginator (invoices, api-keys) and by a selector's page (listings).
PAGED_LISTS = ["/api/v1/listings", "/api/v1/invoices", "/api/v1/api-keys", "/api/v1/contracts"]


@pytest.mark.parametrize("page", ["²", "١", "０", "1.5", "-1", "0", "", "last", "1000001"])
@pytest.mark.parametrize("path", PAGED_LISTS)
def test_a_page_that_is_not_a_plain_number_is_400(lab_client, path, page):
    # ``page=`` had been the first page and ``page=last`` the last on DRF's paginator.
    error = assert_error(lab_client.get(path, {"page": page}), 400, "invalid")
    assert "page" in error["fields"]


@pytest.mark.parametrize(
    "query",
    ["page=1&page=2", "page=1&page=", "page_size=5&page_size=6", "status=void&status=void", "status=open&status="],
)
@pytest.mark.parametrize("path", ["/api/v1/invoices", "/api/v1/compute-requests"])
def test_a_parameter_given_twice_is_400_naming_it(lab_client, path, query):
    # The last value had been read, and a list the schema does not allow answered as if given once.
    error = assert_error(lab_client.get(f"{path}?{query}"), 400, "invalid")
    assert set(error["fields"]) == {query.split("=")[0]}


@pytest.mark.parametrize("query", ["cursor=", "cursor=&cursor=", "page_size=5&page_size=5"])
def test_an_event_page_parameter_empty_or_given_twice_is_400(lab_client, query):
    error = assert_error(lab_client.get(f"/api/v1/events?{query}"), 400, "invalid")
    assert set(error["fields"]) == {query.split("=")[0]}


@pytest.mark.parametrize("query", ["gpu_model=h100-sxm-80gb&gpu_model=a100-sxm-80gb", "min_gpus=8&min_gpus=16"])
def test_a_search_parameter_given_twice_is_400(lab_client, query):
    error = assert_error(lab_client.get(f"/api/v1/listings?{query}"), 400, "invalid")
    assert set(error["fields"]) == {query.split("=")[0]}


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


# Codecs Python knows that are no text encoding (hex, rot13, zlib, base64), or that fail other than
# with UnicodeDecodeError (punycode): Django takes any of them from the Content-Type's charset.
UNUSABLE_CHARSETS = ["hex", "rot13", "zlib", "base64", "punycode"]


@pytest.mark.parametrize("charset", UNUSABLE_CHARSETS)
def test_a_body_in_a_charset_that_is_no_text_encoding_is_400(provider_client, charset):
    response = provider_client.generic(
        "POST", "/api/v1/clusters", b'{"name": "c"}', content_type=f"application/json; charset={charset}"
    )
    assert_error(response, 400, "malformed_request")


def test_a_body_in_a_text_charset_is_still_read_in_it(provider_client):
    body = json.dumps({"name": "Zürich"}, ensure_ascii=False).encode("latin-1")
    response = provider_client.generic(
        "POST", "/api/v1/clusters", body, content_type="application/json; charset=latin-1"
    )
    error = assert_error(response, 400, "invalid")  # parsed: the other fields are missing
    assert "name" not in error["fields"]


def _served(method: str, path: str, query: str, content_type: str, application=None) -> tuple[str, dict, bytes]:
    """The answer of a WSGI application (by default the served one, config.wsgi, as gunicorn calls it)."""
    from wsgiref.util import setup_testing_defaults

    if application is None:
        from config.wsgi import application
    environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query, "CONTENT_TYPE": content_type}
    setup_testing_defaults(environ)
    answer = {}

    def start_response(status, headers, exc_info=None):
        answer["status"], answer["headers"] = status, dict(headers)

    body = b"".join(application(environ, start_response))
    return answer["status"], answer["headers"], body


@pytest.mark.parametrize("charset", UNUSABLE_CHARSETS)
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_a_request_in_a_charset_django_cannot_build_it_with_is_400_not_500(charset, method):
    # Django decodes the query string with the charset while it builds the request, before any
    # middleware: this was a bare 500 from the server, on every path.
    status, headers, body = _served(method, "/api/v1/listings", "region=x", f"application/json; charset={charset}")
    assert status.startswith("400"), (status, body)
    assert headers["Content-Type"] == "application/json"
    error = json.loads(body)["error"]
    assert set(error) == {"code", "message", "fields"}
    assert error["code"] == "malformed_request"
    assert repr(charset) in error["message"]


def test_outside_the_api_such_a_request_is_a_plain_400():
    status, headers, _ = _served("GET", "/admin/login/", "next=/admin/", "text/plain; charset=hex")
    assert status.startswith("400")
    assert headers["Content-Type"].startswith("text/plain")


@pytest.mark.parametrize("charset", ["utf-8", "latin-1", "utf-16", "no-such-charset"])
def test_a_charset_django_can_use_or_ignores_goes_on_to_django(charset):
    from core.wsgi import refuse_unusable_charsets

    def django_stand_in(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"reached"]

    guarded = refuse_unusable_charsets(django_stand_in)
    _, _, body = _served("GET", "/api/v1/listings", "region=x", f"application/json; charset={charset}", guarded)
    assert body == b"reached"


BOOLEAN_SPELLINGS = ["1", "0", "yes", "on", "True", "t", "", "null"]


@pytest.mark.parametrize("spelling", BOOLEAN_SPELLINGS)
def test_a_boolean_query_parameter_is_true_or_false_only(lab_client, spelling):
    # DRF alone took 1, yes, on, True and t for true: the schema's boolean is the word.
    error = assert_error(lab_client.get(f"/api/v1/listings?mine={spelling}"), 400, "invalid")
    assert set(error["fields"]) == {"mine"}
    assert lab_client.get("/api/v1/listings?mine=true").status_code == 200


def test_every_boolean_query_parameter_is_read_alike():
    from django.http import QueryDict

    from broker.api.serializers import ContractNodesQuerySerializer

    for spelling in BOOLEAN_SPELLINGS:
        query = ContractNodesQuerySerializer(data=QueryDict(f"history={spelling}"))
        assert not query.is_valid() and set(query.errors) == {"history"}
    for spelling, meaning in (("true", True), ("false", False)):
        query = ContractNodesQuerySerializer(data=QueryDict(f"history={spelling}"))
        assert query.is_valid() and query.validated_data["history"] is meaning


@pytest.mark.parametrize("spelling", [1, 0, "yes", "true", "on", None])
def test_a_boolean_in_a_body_is_a_json_boolean_only(lab_client, spelling):
    request = {"gpu_count": 8, "duration_hours": 2, "max_price_per_gpu_hour": "2.00", "colocated": spelling}
    error = assert_error(lab_client.post("/api/v1/compute-requests", request, format="json"), 400, "invalid")
    assert "colocated" in error["fields"]


@pytest.mark.parametrize("price", [2.5, "2.1e0", " 2.10", "2.10 ", "2.505", "2.", ".5", "1,5", "NaN", "Infinity"])
def test_a_price_is_the_whole_cents_string_the_schema_documents(lab_client, price):
    # DRF's DecimalField alone took a JSON number, an exponent and spaces around the digits.
    request = {"gpu_model": "h100-sxm-80gb", "gpu_count": 8, "starts_at": "2099-01-01T00:00:00Z",
               "duration_hours": 2, "billing_mode": "committed", "max_price_per_gpu_hour": price}  # fmt: skip
    error = assert_error(lab_client.post("/api/v1/compute-requests", request, format="json"), 400, "invalid")
    assert set(error["fields"]) == {"max_price_per_gpu_hour"}
    assert lab_client.post(
        "/api/v1/compute-requests", request | {"max_price_per_gpu_hour": "2.1000"}, format="json"
    ).status_code == 201  # as answers write prices


@pytest.mark.parametrize(
    "field, value",
    [("cluster", "{id}"), ("cluster", "{id}.5"), ("cluster", True), ("sla_availability", 99.5),
     ("sla_availability", "9.95e1"), ("sla_breach_credit_rate", " 2.00"), ("sla_breach_credit_rate", 2)],
)  # fmt: skip
def test_a_listing_s_id_and_decimals_are_read_as_the_schema_documents_them(provider_client, field, value):
    # DRF alone looked up cluster "5" (and 5.5 as cluster 5) and took numbers and exponents for decimals.
    from tests.marketplace.factories import hour, iso

    cluster = new_cluster(provider_client)
    listing = {"cluster": cluster["id"], "node_count": 1, "starts_at": iso(hour(1)), "ends_at": iso(hour(25)),
               "price_per_gpu_hour": "2.00", "min_duration_hours": 1, "billing_mode": "committed",
               "sla_availability": "99.50", "sla_breach_credit_rate": "2.00"}  # fmt: skip
    if isinstance(value, str) and "{id}" in value:
        value = value.format(id=cluster["id"]) if "." not in value else float(value.format(id=cluster["id"]))
    error = assert_error(provider_client.post("/api/v1/listings", listing | {field: value}, format="json"), 400)
    assert set(error["fields"]) == {field}
    assert provider_client.post("/api/v1/listings", listing, format="json").status_code == 201


@pytest.mark.parametrize("value", ["1e2", " 99", ".", "+99", "９９", "99.5.", "-"])
def test_a_query_decimal_is_plain_digits(lab_client, value):
    error = assert_error(lab_client.get("/api/v1/listings", {"min_availability": value}), 400, "invalid")
    assert set(error["fields"]) == {"min_availability"}


@pytest.mark.parametrize(
    "moment",
    ["2099-01-01T10:00:00", "20990101T100000Z", "2099-W01-4T10:00:00Z", "2099-01-01T10:00Z",
     "2099-01-01 10:00:00Z", "2099-01-01T10Z", "2099-001T10:00:00Z", "2099-01-01T10:00:00+0000",
     "2099-02-30T10:00:00Z", " 2099-01-01T10:00:00Z"],
)  # fmt: skip
def test_a_time_is_rfc_3339_with_a_zone(lab_client, moment):
    # DRF alone read a time without a zone as UTC, and Python's parser takes the basic format and week dates.
    query = {"starts_at": moment, "ends_at": "2099-01-02T10:00:00Z"}
    error = assert_error(lab_client.get("/api/v1/listings", query), 400, "invalid")
    assert set(error["fields"]) == {"starts_at"}


@pytest.mark.parametrize("moment", ["2099-01-01T10:00:00Z", "2099-01-01t10:00:00z", "2099-01-01T11:30:00+01:30"])
def test_rfc_3339_times_are_read_in_either_case_and_any_offset(lab_client, moment):
    query = {"starts_at": moment, "ends_at": "2099-01-02T10:00:00Z"}
    assert lab_client.get("/api/v1/listings", query).status_code == 200


@pytest.mark.parametrize("day", ["20261201", "2026-W49-2", "2026-335", "2026-12-1", "2026-12-01T00:00:00Z"])
def test_a_day_is_yyyy_mm_dd(lab_client, day):
    error = assert_error(lab_client.get("/api/v1/market/h100-sxm-80gb/index", {"from": day}), 400, "invalid")
    assert set(error["fields"]) == {"from"}


@pytest.mark.parametrize("region", [" us-south-1", "us-south-1\n", "us-south-1 "])
def test_a_patterned_value_is_matched_as_sent(provider_client, region):
    # DRF trimmed the whitespace first, so a value the schema's pattern refuses was accepted.
    cluster = CLUSTER | {"region": region}
    error = assert_error(provider_client.post("/api/v1/clusters", cluster, format="json"), 400, "invalid")
    assert set(error["fields"]) == {"region"}
    named = cluster | {"hostnames": ["h-1\n"], "region": "us-south-1"}
    error = assert_error(provider_client.post("/api/v1/clusters", named, format="json"), 400, "invalid")
    assert set(error["fields"]) == {"hostnames"}


@pytest.mark.parametrize("period", ["2026-11%0A", "%202026-11", "2026-11%20"])
def test_a_preview_period_is_matched_as_sent(lab_client, period):
    error = assert_error(lab_client.get(f"/api/v1/invoices/preview?period={period}"), 400, "invalid")
    assert set(error["fields"]) == {"period"}


@pytest.mark.parametrize("name", [123, 1.5, True, ["a"], {"a": 1}])
def test_text_is_a_json_string(lab_client, name):
    # DRF alone stored a JSON number as its text ("123").
    error = assert_error(lab_client.post("/api/v1/api-keys", {"name": name}, format="json"), 400, "invalid")
    assert set(error["fields"]) == {"name"}
