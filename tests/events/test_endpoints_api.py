"""Webhook endpoints: registration and its URL rules, the secret shown once, disable, enable,
delete, roll the secret, the deliveries list."""

import pytest

from events import signing
from events.models import EventType, WebhookDelivery, WebhookEndpoint
from events.services import MAX_ENDPOINTS_PER_ORGANIZATION, event_publish
from tests.conftest import assert_error
from tests.events.conftest import register

pytestmark = pytest.mark.django_db

URL = "https://hooks.example.com/gpubroker"


def test_the_secret_is_shown_once_and_never_stored(lab_client):
    response = lab_client.post(
        "/api/v1/webhook-endpoints", {"url": URL, "event_types": ["contract.created"]}, format="json"
    )
    assert response.status_code == 201
    assert "no-store" in response["Cache-Control"]
    body = response.json()
    assert body["secret"].startswith("whsec_")
    assert body["status"] == "enabled" and body["event_types"] == ["contract.created"]
    endpoint = WebhookEndpoint.objects.get(pk=body["id"])
    assert body["secret"] == signing.endpoint_secret(endpoint.secret_salt)
    stored = [str(value) for value in WebhookEndpoint.objects.filter(pk=endpoint.pk).values().get().values()]
    assert body["secret"] not in stored
    assert endpoint.secret_salt not in response.content.decode()

    listed = lab_client.get("/api/v1/webhook-endpoints").json()["results"]
    assert [item["id"] for item in listed] == [endpoint.pk]
    assert "secret" not in listed[0]
    assert "secret" not in lab_client.get(f"/api/v1/webhook-endpoints/{endpoint.pk}").json()


def test_the_secret_depends_on_secret_key(settings):
    salt = signing.new_salt()
    before = signing.endpoint_secret(salt)
    settings.SECRET_KEY = "another-secret-key-" * 4
    assert signing.endpoint_secret(salt) != before


def test_an_idempotent_retry_does_not_replay_the_secret(lab_client):
    payload = {"url": URL, "event_types": ["*"]}
    first = lab_client.post("/api/v1/webhook-endpoints", payload, format="json", HTTP_IDEMPOTENCY_KEY="hook-1")
    assert first.status_code == 201
    retry = lab_client.post("/api/v1/webhook-endpoints", payload, format="json", HTTP_IDEMPOTENCY_KEY="hook-1")
    assert_error(retry, 409, "idempotent_replay_withheld")
    assert first.json()["secret"] not in retry.content.decode()
    assert WebhookEndpoint.objects.filter(organization=lab_client.organization).count() == 1


REFUSED = [
    "http://hooks.example.com/x",  # plain http
    "ftp://hooks.example.com/x",
    "https://user:pw@hooks.example.com/x",  # credentials
    "https://user@hooks.example.com/x",
    "https://10.0.0.1/x",  # private
    "https://192.168.1.10/x",
    "https://172.16.0.1/x",
    "https://127.0.0.1/x",  # loopback
    "https://[::1]/x",
    "https://169.254.169.254/latest/meta-data",  # link-local (cloud metadata)
    "https://[fe80::1]/x",
    "https://[::ffff:10.0.0.1]/x",  # a private address mapped into IPv6
    "https://0.0.0.0/x",  # unspecified
    "https://224.0.0.1/x",  # multicast
    "https://100.64.0.1/x",  # shared address space
    "https://240.0.0.1/x",  # reserved
    "https://localhost/x",
    "https://127.0.0.1./x",  # loopback, as resolvers read a trailing dot and the legacy forms
    "https://2130706433/x",
    "https://0x7f.1/x",
    "https://10.1/x",  # 10.0.0.1
    "https://",
    "https://hooks example.com/x",
    "https://bad_host!.example.com/x",
    "https://hooks.example.com/x#fragment",
    "https://hooks.example.com:0/x",
    "https://hooks.exämple.com/x",
]


@pytest.mark.parametrize("url", REFUSED)
def test_urls_refused_at_registration(lab_client, url):
    error = assert_error(
        lab_client.post("/api/v1/webhook-endpoints", {"url": url, "event_types": ["*"]}, format="json"), 400, "invalid"
    )
    assert error["fields"]["url"], error
    assert not WebhookEndpoint.objects.exists()


@pytest.mark.parametrize("url", [URL, "https://93.184.216.34:8443/hooks?x=1", "https://[2606:4700::1111]/x"])
def test_public_https_urls_are_accepted(lab_client, url):
    assert register(lab_client, url)["url"] == url


@pytest.mark.parametrize(
    ("url", "accepted"),
    [
        ("http://127.0.0.1:8080/hook", True),
        ("http://localhost:8080/hook", True),
        ("http://[::1]:8080/hook", True),
        ("https://127.0.0.1/hook", True),
        ("http://10.0.0.1/hook", False),  # private stays refused
        ("https://192.168.0.1/hook", False),
        ("http://169.254.169.254/hook", False),
        ("http://hooks.example.com/hook", False),  # plain http only to loopback
    ],
)
def test_the_loopback_allowance(lab_client, loopback_allowed, url, accepted):
    response = lab_client.post("/api/v1/webhook-endpoints", {"url": url, "event_types": ["*"]}, format="json")
    assert response.status_code == (201 if accepted else 400), response.content


@pytest.mark.parametrize(
    ("event_types", "field_message"),
    [([], "event_types"), (["contract.exploded"], "event_types"), (["*", "invoice.issued"], "event_types")],
)
def test_event_types_are_checked(lab_client, event_types, field_message):
    response = lab_client.post("/api/v1/webhook-endpoints", {"url": URL, "event_types": event_types}, format="json")
    assert field_message in assert_error(response, 400, "invalid")["fields"]


def test_unknown_fields_are_refused(lab_client):
    response = lab_client.post(
        "/api/v1/webhook-endpoints", {"url": URL, "event_types": ["*"], "secret": "mine"}, format="json"
    )
    assert "secret" in assert_error(response, 400, "invalid")["fields"]


def test_an_organization_has_at_most_so_many_endpoints(lab_client, provider_client):
    for n in range(MAX_ENDPOINTS_PER_ORGANIZATION):
        register(lab_client, f"{URL}/{n}")
    response = lab_client.post("/api/v1/webhook-endpoints", {"url": URL, "event_types": ["*"]}, format="json")
    assert assert_error(response, 409, "webhook_endpoint_limit")["fields"] == {"limit": MAX_ENDPOINTS_PER_ORGANIZATION}
    register(provider_client, URL)  # the limit is per organization


def test_disable_enable_delete(lab_client):
    endpoint = register(lab_client, URL)
    path = f"/api/v1/webhook-endpoints/{endpoint['id']}"
    event_publish(organization_id=lab_client.organization.pk, type=EventType.CONTRACT_CREATED, data={})

    disabled = lab_client.post(f"{path}/disable").json()
    assert disabled["status"] == "disabled" and disabled["disabled_reason"] and disabled["disabled_at"]
    assert list(WebhookDelivery.objects.values_list("status", flat=True)) == ["failed"]
    event_publish(organization_id=lab_client.organization.pk, type=EventType.CONTRACT_CREATED, data={})
    assert WebhookDelivery.objects.count() == 1  # nothing for a disabled endpoint
    assert lab_client.post(f"{path}/disable").json()["disabled_at"] == disabled["disabled_at"]

    enabled = lab_client.post(f"{path}/enable").json()
    assert (enabled["status"], enabled["disabled_reason"], enabled["disabled_at"]) == ("enabled", "", None)
    event_publish(organization_id=lab_client.organization.pk, type=EventType.CONTRACT_CREATED, data={})
    assert WebhookDelivery.objects.filter(status="pending").count() == 1

    assert lab_client.delete(path).status_code == 204
    assert_error(lab_client.get(path), 404, "not_found")
    assert not WebhookDelivery.objects.exists()


def test_roll_secret(lab_client):
    endpoint = register(lab_client, URL)
    response = lab_client.post(f"/api/v1/webhook-endpoints/{endpoint['id']}/roll-secret")
    assert response.status_code == 200 and "no-store" in response["Cache-Control"]
    rolled = response.json()["secret"]
    assert rolled.startswith("whsec_") and rolled != endpoint["secret"]
    assert rolled == signing.endpoint_secret(WebhookEndpoint.objects.get(pk=endpoint["id"]).secret_salt)


def test_another_organizations_endpoint_is_not_found(lab_client, provider_client):
    endpoint = register(provider_client, URL)
    path = f"/api/v1/webhook-endpoints/{endpoint['id']}"
    assert_error(lab_client.get(path), 404, "not_found")
    assert_error(lab_client.get(f"{path}/deliveries"), 404, "not_found")
    assert_error(lab_client.post(f"{path}/disable"), 404, "not_found")
    assert_error(lab_client.post(f"{path}/roll-secret"), 404, "not_found")
    assert_error(lab_client.delete(path), 404, "not_found")
    assert WebhookEndpoint.objects.get(pk=endpoint["id"]).status == "enabled"


def test_deliveries_list_and_status_filter(lab_client):
    endpoint = register(lab_client, URL, event_types=["contract.created"])
    path = f"/api/v1/webhook-endpoints/{endpoint['id']}/deliveries"
    org = lab_client.organization.pk
    created = event_publish(organization_id=org, type=EventType.CONTRACT_CREATED, data={"object": "contract"})
    event_publish(organization_id=org, type=EventType.INVOICE_ISSUED, data={})  # not subscribed
    second = event_publish(organization_id=org, type=EventType.CONTRACT_CREATED, data={"object": "contract"})
    WebhookDelivery.objects.filter(event_id=created[0]).update(status="succeeded")

    rows = lab_client.get(path).json()["results"]
    assert [(row["event"], row["event_type"], row["status"]) for row in rows] == [
        (second[0], "contract.created", "pending"),
        (created[0], "contract.created", "succeeded"),
    ]
    assert [row["event"] for row in lab_client.get(f"{path}?status=succeeded").json()["results"]] == created
    assert_error(lab_client.get(f"{path}?status=lost"), 400, "invalid")
    assert_error(lab_client.get(f"{path}?status="), 400, "invalid")


def test_a_delete_under_an_idempotency_key_is_done_once_and_replayed_empty(lab_client):
    """A 204 has no body and, from DRF, no content type: the key keeps it (and the deletion is
    committed, not rolled back with the record); the retry answers the same empty 204."""
    path = f"/api/v1/webhook-endpoints/{register(lab_client, URL)['id']}"
    first = lab_client.delete(path, HTTP_IDEMPOTENCY_KEY="delete-once")
    assert (first.status_code, first.content) == (204, b"")
    assert not WebhookEndpoint.objects.exists()
    again = lab_client.delete(path, HTTP_IDEMPOTENCY_KEY="delete-once")
    assert (again.status_code, again.content, again["Idempotent-Replayed"]) == (204, b"", "true")
    assert "Content-Type" not in again
    assert_error(lab_client.delete(path, HTTP_IDEMPOTENCY_KEY="delete-twice"), 404, "not_found")
