"""The admin's events, endpoints and deliveries: pages render with no secret on them, operators
disable and enable endpoints and retry deliveries through the same services as the API."""

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse

from events import signing
from events.models import EventType, WebhookDelivery, WebhookEndpoint
from events.services import event_publish
from tests.events.conftest import register

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator_client() -> Client:
    client = Client()
    client.force_login(get_user_model().objects.create_superuser("ops-events", "ops@example.com", None))
    return client


@pytest.fixture
def endpoint(lab_client) -> dict:
    endpoint = register(lab_client, "https://hooks.example.com/gpubroker")
    event_publish(organization_id=lab_client.organization.pk, type=EventType.CONTRACT_CREATED, data={"id": 1})
    return endpoint


@pytest.mark.parametrize("model", ["event", "webhookendpoint", "webhookdelivery"])
def test_pages_render_without_a_secret(operator_client, endpoint, model):
    listing = operator_client.get(reverse(f"admin:events_{model}_changelist"))
    assert listing.status_code == 200 and listing.context["cl"].result_count == 1
    obj = listing.context["cl"].result_list[0]
    page = operator_client.get(reverse(f"admin:events_{model}_change", args=[obj.pk]))
    assert page.status_code == 200
    salt = WebhookEndpoint.objects.get().secret_salt
    for response in (listing, page):
        assert endpoint["secret"].encode() not in response.content
        assert salt.encode() not in response.content
    assert signing.endpoint_secret(salt) == endpoint["secret"]


def test_operators_disable_and_enable_an_endpoint(operator_client, endpoint, lab_client):
    url = reverse("admin:events_webhookendpoint_changelist")
    operator_client.post(url, {"action": "disable", "_selected_action": [endpoint["id"]]})
    disabled = WebhookEndpoint.objects.get()
    assert disabled.status == "disabled" and "operators" in disabled.disabled_reason
    events = lab_client.get("/api/v1/events?type=webhook_endpoint.disabled").json()["results"]
    assert [event["data"]["id"] for event in events] == [endpoint["id"]]

    operator_client.post(url, {"action": "enable", "_selected_action": [endpoint["id"]]})
    assert WebhookEndpoint.objects.get().status == "enabled"


def test_retry_now(operator_client, endpoint):
    WebhookDelivery.objects.update(status="failed", next_attempt_at=None, attempts=40)
    delivery = WebhookDelivery.objects.get()
    operator_client.post(
        reverse("admin:events_webhookdelivery_changelist"), {"action": "retry_now", "_selected_action": [delivery.pk]}
    )
    delivery.refresh_from_db()
    assert delivery.status == "pending" and delivery.next_attempt_at is not None
