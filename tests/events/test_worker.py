"""Webhooks sent by a real Celery worker over the real Redis broker to a real receiver.

The worker runs on the real clock, so these tests do not freeze time.
"""

from collections import Counter

from django.db import transaction
from django.utils import timezone

from events.models import EventType, WebhookDelivery
from events.services import Notice, events_publish
from events.tasks import deliver_webhooks
from tests.conftest import requires_worker, wait_until
from tests.events.conftest import register


def publish(organization, count: int) -> list[int]:
    with transaction.atomic():
        return events_publish(
            Notice(organization.pk, EventType.CONTRACT_CREATED, {"object": "contract", "id": n}) for n in range(count)
        )


@requires_worker
def test_a_committed_event_is_delivered_by_the_worker_signed(real_worker, lab_client, receiver, loopback_allowed):
    endpoint = register(lab_client, receiver.url())
    (event_id,) = publish(lab_client.organization, 1)  # the commit queues the task

    wait_until(lambda: receiver.requests, timeout=30)
    (request,) = receiver.requests
    assert receiver.verified(endpoint["secret"], request)
    assert request["headers"]["Webhook-Id"] == str(event_id)
    wait_until(lambda: WebhookDelivery.objects.filter(status="succeeded").count() == 1)


@requires_worker
def test_runs_at_once_send_each_delivery_once(real_worker, lab_client, receiver, loopback_allowed):
    register(lab_client, receiver.url("/a"))
    register(lab_client, receiver.url("/b"))
    ids = publish(lab_client.organization, 150)
    for _ in range(4):  # more runs than the one the commit queued, on the worker's 4 threads
        deliver_webhooks.delay()

    # A generous bound: on a loaded machine an attempt may time out and wait its 30 s backoff.
    wait_until(lambda: WebhookDelivery.objects.filter(status="succeeded").count() == 300, timeout=180)
    for path in ("/a", "/b"):
        counts = Counter(receiver.event_ids(path))
        assert sorted(counts) == sorted(ids)
        assert set(counts.values()) == {1}, [i for i, n in counts.items() if n > 1][:10]


@requires_worker
def test_a_failure_is_retried_by_the_worker(real_worker, lab_client, receiver, loopback_allowed):
    register(lab_client, receiver.url())
    receiver.statuses = [503, 200]
    publish(lab_client.organization, 1)
    wait_until(lambda: WebhookDelivery.objects.filter(attempts=1, last_status_code=503).exists(), timeout=30)
    delivery = WebhookDelivery.objects.get()
    assert delivery.status == "pending" and delivery.next_attempt_at > timezone.now()

    WebhookDelivery.objects.update(next_attempt_at=timezone.now())  # rather than wait the 30 s backoff
    deliver_webhooks.delay()
    wait_until(lambda: WebhookDelivery.objects.filter(status="succeeded", attempts=2).exists(), timeout=30)
    assert len(receiver.requests) == 2
