"""GET /api/v1/events: an organization's own events, newest first, by cursor; retention."""

import base64
from datetime import timedelta

import pytest
import time_machine
from django.utils import timezone

from events.models import Event, EventType, WebhookDelivery
from events.services import RETENTION, Notice, events_publish
from tests.conftest import assert_error
from tests.events.conftest import register

pytestmark = pytest.mark.django_db


def publish(organization, count=1, type=EventType.CONTRACT_CREATED, **data):
    return events_publish(Notice(organization.pk, type, {"object": "contract", "id": n, **data}) for n in range(count))


def test_an_organization_reads_its_own_events_only(lab_client, provider_client):
    (own,) = publish(lab_client.organization, note="lab")
    (other,) = publish(provider_client.organization, note="provider")

    body = lab_client.get("/api/v1/events").json()
    assert [event["id"] for event in body["results"]] == [own]
    assert set(body["results"][0]) == {"id", "type", "created", "data"}
    assert body["results"][0]["type"] == "contract.created"
    assert body["results"][0]["data"] == {"object": "contract", "id": 0, "note": "lab"}
    assert lab_client.get(f"/api/v1/events/{own}").json()["id"] == own
    assert_error(lab_client.get(f"/api/v1/events/{other}"), 404, "not_found")


def test_type_filter(lab_client):
    created = publish(lab_client.organization, 2)
    (issued,) = publish(lab_client.organization, type=EventType.INVOICE_ISSUED)

    assert [e["id"] for e in lab_client.get("/api/v1/events?type=invoice.issued").json()["results"]] == [issued]
    ids = [e["id"] for e in lab_client.get("/api/v1/events?type=contract.created").json()["results"]]
    assert ids == sorted(created, reverse=True)


def test_an_unknown_type_is_refused_with_the_valid_ones(lab_client):
    error = assert_error(lab_client.get("/api/v1/events?type=contract.exploded"), 400, "invalid")
    assert "invoice.issued" in error["fields"]["type"][0]
    assert_error(lab_client.get("/api/v1/events?type="), 400, "invalid")


def test_cursor_pages_newest_first_and_stable_while_events_arrive(lab_client):
    ids = publish(lab_client.organization, 7)
    first = lab_client.get("/api/v1/events?page_size=3").json()
    assert [e["id"] for e in first["results"]] == sorted(ids, reverse=True)[:3]
    publish(lab_client.organization, 2)  # newer events do not shift the pages that follow
    second = lab_client.get(first["next"]).json()
    third = lab_client.get(second["next"]).json()
    seen = [e["id"] for page in (first, second, third) for e in page["results"]]
    assert seen == sorted(ids, reverse=True)
    assert third["next"] is None


@pytest.mark.parametrize(
    "cursor",
    [
        "garbage",
        base64.b64encode(b"p=abc").decode(),
        base64.b64encode(b"p=1;DROP").decode(),
        base64.b64encode(b"o=-1").decode(),
        base64.b64encode(b"p=" + b"9" * 19).decode(),
        "%FF%FE",
    ],
)
def test_a_malformed_cursor_is_a_400(lab_client, cursor):
    publish(lab_client.organization, 2)
    error = assert_error(lab_client.get(f"/api/v1/events?cursor={cursor}"), 400, "invalid")
    assert "cursor" in error["fields"]


@pytest.mark.parametrize("size", ["0", "501", "x", ""])
def test_page_size_is_bounded(lab_client, size):
    assert_error(lab_client.get(f"/api/v1/events?page_size={size}"), 400, "invalid")


def test_events_are_kept_at_least_30_days_and_purged_after_90_with_their_deliveries(lab_client, loopback_allowed):
    from events.services import events_purge

    register(lab_client, "http://127.0.0.1:9/hook")
    ids = publish(lab_client.organization, 5)
    assert WebhookDelivery.objects.filter(event_id__in=ids).count() == 5
    now = timezone.now()

    with time_machine.travel(now + timedelta(days=31), tick=False):
        assert events_purge(batch_size=2) == 0
    with time_machine.travel(now + RETENTION - timedelta(minutes=1), tick=False):
        assert events_purge(batch_size=2) == 0
    assert Event.objects.filter(pk__in=ids).count() == 5
    with time_machine.travel(now + RETENTION + timedelta(minutes=1), tick=False):
        assert events_purge(batch_size=2) == 5
    assert not Event.objects.filter(pk__in=ids).exists()
    assert not WebhookDelivery.objects.filter(event_id__in=ids).exists()
    assert timedelta(days=30) <= RETENTION
