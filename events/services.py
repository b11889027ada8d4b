"""Publishing events (one row per organization that must know, in the caller's transaction),
webhook endpoints, and sending their deliveries."""

import json
import logging
import random
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection, transaction
from django.utils import timezone

from core.errors import DomainError, InvalidInput
from core.services import audit_record
from events import signing, webhooks
from events.models import EventType, WebhookDelivery, WebhookEndpoint
from events.tasks import deliver_webhooks
from marketplace.models import Organization

logger = logging.getLogger(__name__)

# One statement for any number of events, and their webhook deliveries: the function
# ``events_event_publish`` (migration events/0003), whose plan PostgreSQL keeps per session.
# Every enabled endpoint of the event's organization that subscribes to its type (or to "*")
# gets a pending delivery, due at once: an event exists, and is sent, exactly when its change
# committed. A dedupe key already published is skipped; NULL keys never conflict.
# The data travel as one JSON array, split in SQL: psycopg escapes each element of a text[]
# parameter, which cost a second per 23,000 events, where one JSON document costs 0.02 s.
EVENTS_PUBLISH = """
SELECT event_id, delivery_count
FROM events_event_publish(
    %s, %s,
    ARRAY(SELECT n.notice::text FROM json_array_elements(%s::json) WITH ORDINALITY AS n(notice, position)
          ORDER BY n.position),
    %s, %s, %s, %s
)
"""


@dataclass(frozen=True)
class Notice:
    """One event to publish: its organization, its type (``EventType``), its data, and an
    optional key that makes publishing it twice publish it once."""

    organization_id: int
    type: str
    data: dict
    dedupe_key: str | None = None


def events_publish(notices: Iterable[Notice]) -> list[int]:
    """Write these events in the caller's transaction; returns the ids of those that were new.

    Their webhook deliveries are written by the same statement, and sent by the workers
    (``events.tasks.deliver_webhooks``, queued after commit only when there are some), so a
    change that rolls back sends nothing.
    """
    notices = list(notices)
    if not notices:
        return []
    with connection.cursor() as cursor:
        cursor.execute(
            EVENTS_PUBLISH,
            [
                [n.organization_id for n in notices],
                [n.type for n in notices],
                json.dumps([n.data for n in notices], cls=DjangoJSONEncoder),
                [n.dedupe_key for n in notices],
                WebhookDelivery.Status.PENDING.value,
                WebhookEndpoint.Status.ENABLED.value,
                WebhookEndpoint.ALL_TYPES,
            ],
        )
        rows = cursor.fetchall()
    webhooks_wake_after_commit(rows[0][1] if rows else 0)
    return [row[0] for row in rows]


def webhooks_wake_after_commit(deliveries: int | None) -> None:
    """Queue a sending run once the current transaction commits (at once outside one), when
    publishing wrote webhook deliveries: publishing with no endpoint costs no Redis round trip."""
    if deliveries:
        transaction.on_commit(_enqueue_delivery)


def event_publish(*, organization_id: int, type: str, data: dict, dedupe_key: str | None = None) -> list[int]:
    """Write one event; see ``events_publish``."""
    return events_publish([Notice(organization_id, type, data, dedupe_key)])


def _enqueue_delivery() -> None:
    try:
        deliver_webhooks.delay()
    except Exception:  # Redis down: the beat's run every few seconds sends them
        logger.exception("could not queue deliver_webhooks; the periodic run will send the deliveries")


# --- Webhook endpoints ---

MAX_ENDPOINTS_PER_ORGANIZATION = 16


@dataclass(frozen=True)
class IssuedEndpoint:
    endpoint: WebhookEndpoint
    secret: str  # shown once, stored nowhere


def webhook_endpoint_create(
    *,
    organization: Organization,
    url: str,
    event_types: list[str],
    description: str = "",
    actor_label: str = "",
) -> IssuedEndpoint:
    """Register a webhook endpoint; returns it with its signing secret, shown this once."""
    refusal = webhooks.url_refusal(url)
    if refusal:
        raise InvalidInput(refusal, fields={"url": [refusal]})
    event_types = _event_types_checked(event_types)
    with transaction.atomic():
        # The organization's row, held until commit, makes the count and the insert one step.
        Organization.objects.select_for_update(no_key=True).filter(pk=organization.pk).values_list("pk").get()
        count = WebhookEndpoint.objects.filter(organization=organization).count()
        if count >= MAX_ENDPOINTS_PER_ORGANIZATION:
            raise DomainError(
                f"An organization has at most {MAX_ENDPOINTS_PER_ORGANIZATION} webhook endpoints; delete one first.",
                code="webhook_endpoint_limit",
                fields={"limit": MAX_ENDPOINTS_PER_ORGANIZATION},
            )
        endpoint = WebhookEndpoint.objects.create(
            organization=organization,
            url=url,
            event_types=event_types,
            description=description,
            secret_salt=signing.new_salt(),
        )
        audit_record(action="webhook_endpoint_create", target=endpoint, actor_label=actor_label, message=url)
    return IssuedEndpoint(endpoint, signing.endpoint_secret(endpoint.secret_salt))


def _event_types_checked(event_types: list[str]) -> list[str]:
    valid = set(EventType.values)
    if not event_types:
        message = 'Name at least one event type, or ["*"] for all.'
        raise InvalidInput(message, fields={"event_types": [message]})
    if WebhookEndpoint.ALL_TYPES in event_types:
        if len(set(event_types)) > 1:
            message = '"*" means every type: send it alone.'
            raise InvalidInput(message, fields={"event_types": [message]})
        return [WebhookEndpoint.ALL_TYPES]
    unknown = sorted(set(event_types) - valid)
    if unknown:
        message = f'Unknown event types: {", ".join(unknown)}. Valid: {", ".join(EventType.values)}, or "*".'
        raise InvalidInput(message, fields={"event_types": [message]})
    return sorted(set(event_types))


def webhook_endpoint_roll_secret(*, endpoint: WebhookEndpoint, actor_label: str = "") -> IssuedEndpoint:
    """Give the endpoint a new signing secret (shown this once); the old one stops signing at once."""
    with transaction.atomic():
        endpoint = WebhookEndpoint.objects.select_for_update().get(pk=endpoint.pk)
        endpoint.secret_salt = signing.new_salt()
        endpoint.save(update_fields=["secret_salt"])
        audit_record(action="webhook_endpoint_roll_secret", target=endpoint, actor_label=actor_label)
    return IssuedEndpoint(endpoint, signing.endpoint_secret(endpoint.secret_salt))


def webhook_endpoint_disable(
    *, endpoint: WebhookEndpoint, reason: str, actor_label: str = "", notify: bool = False
) -> WebhookEndpoint:
    """Stop sending to an endpoint: its pending deliveries fail. With ``notify`` (disabled by the
    broker, not by its owner), a ``webhook_endpoint.disabled`` event tells its organization,
    through its other endpoints. Disabling a disabled endpoint changes nothing."""
    with transaction.atomic():
        endpoint = WebhookEndpoint.objects.select_for_update().get(pk=endpoint.pk)
        if endpoint.status == WebhookEndpoint.Status.DISABLED:
            return endpoint
        endpoint.status = WebhookEndpoint.Status.DISABLED
        endpoint.disabled_reason = reason[:500]
        endpoint.disabled_at = timezone.now()
        endpoint.save(update_fields=["status", "disabled_reason", "disabled_at"])
        WebhookDelivery.objects.filter(endpoint=endpoint, status=WebhookDelivery.Status.PENDING).update(
            status=WebhookDelivery.Status.FAILED, next_attempt_at=None, last_error="endpoint disabled"
        )
        audit_record(action="webhook_endpoint_disable", target=endpoint, actor_label=actor_label, message=reason)
        if notify:
            event_publish(
                organization_id=endpoint.organization_id,
                type=EventType.WEBHOOK_ENDPOINT_DISABLED,
                data={"object": "webhook_endpoint", **webhook_endpoint_snapshot(endpoint)},
            )
    return endpoint


def webhook_endpoint_snapshot(endpoint: WebhookEndpoint) -> dict:
    """An endpoint as events show it (never its secret)."""
    return {
        "id": endpoint.pk,
        "url": endpoint.url,
        "event_types": list(endpoint.event_types),
        "status": endpoint.status,
        "disabled_reason": endpoint.disabled_reason,
        "disabled_at": endpoint.disabled_at.isoformat() if endpoint.disabled_at else None,
    }


def webhook_endpoint_enable(*, endpoint: WebhookEndpoint, actor_label: str = "") -> WebhookEndpoint:
    """Send to the endpoint again, from the next event on. Enabling an enabled endpoint changes nothing."""
    with transaction.atomic():
        endpoint = WebhookEndpoint.objects.select_for_update().get(pk=endpoint.pk)
        if endpoint.status == WebhookEndpoint.Status.ENABLED:
            return endpoint
        endpoint.status = WebhookEndpoint.Status.ENABLED
        endpoint.disabled_reason, endpoint.disabled_at = "", None
        endpoint.save(update_fields=["status", "disabled_reason", "disabled_at"])
        audit_record(action="webhook_endpoint_enable", target=endpoint, actor_label=actor_label)
    return endpoint


def webhook_endpoint_delete(*, endpoint: WebhookEndpoint, actor_label: str = "") -> None:
    """Delete an endpoint and its deliveries; nothing more is sent to it."""
    with transaction.atomic():
        audit_record(action="webhook_endpoint_delete", target=endpoint, actor_label=actor_label, message=endpoint.url)
        WebhookDelivery.objects.filter(endpoint_id=endpoint.pk).delete()
        WebhookEndpoint.objects.filter(pk=endpoint.pk).delete()


def webhook_deliveries_retry_now(*, delivery_ids: list[int], actor_label: str = "") -> int:
    """Make these pending or failed deliveries due at once (an operator's retry); returns how many.
    A failed delivery of a disabled endpoint stays failed: enable the endpoint first."""
    with transaction.atomic():
        count = (
            WebhookDelivery.objects.filter(pk__in=delivery_ids)
            .exclude(status=WebhookDelivery.Status.SUCCEEDED)
            .filter(endpoint__status=WebhookEndpoint.Status.ENABLED)
            .update(status=WebhookDelivery.Status.PENDING, next_attempt_at=timezone.now(), created_at=timezone.now())
        )
    if count:
        transaction.on_commit(_enqueue_delivery)
    return count


# --- Sending ---

GIVE_UP_AFTER = timedelta(days=3)  # a delivery is retried this long after its event
FIRST_RETRY_SECONDS = 30
MAX_RETRY_SECONDS = 3600
LEASE = timedelta(minutes=5)  # a claimed delivery is sent again after this if its worker died
BATCH_SIZE = 128
SEND_THREADS = 16
RUN_BUDGET_SECONDS = 50.0

# Claim the due deliveries: rows another worker holds are skipped, and those taken are moved
# past the lease, so no other run sends them while this one does; a run that dies leaves them
# due again when the lease ends (at least once).
DELIVERIES_CLAIM = """
WITH due AS (
    SELECT id
      FROM events_webhookdelivery
     WHERE status = %(pending)s AND next_attempt_at <= %(now)s
     ORDER BY next_attempt_at, id
     LIMIT %(batch)s
       FOR UPDATE SKIP LOCKED
)
UPDATE events_webhookdelivery delivery
   SET next_attempt_at = %(lease_until)s, attempts = delivery.attempts + 1, last_attempt_at = %(now)s
  FROM due, events_event event, events_webhookendpoint endpoint
 WHERE delivery.id = due.id AND event.id = delivery.event_id AND endpoint.id = delivery.endpoint_id
RETURNING delivery.id, delivery.attempts, delivery.created_at, delivery.endpoint_id,
          event.id, event.type, event.created_at, event.data::text, endpoint.url, endpoint.secret_salt
"""

# The outcomes of a batch, set-wise. A row whose attempt count moved on (its lease ended and
# another run claimed it) or that is no longer pending (its endpoint was disabled) keeps what
# it has.
DELIVERIES_RECORD = """
UPDATE events_webhookdelivery delivery
   SET status = outcome.status, next_attempt_at = outcome.next_attempt_at, last_status_code = outcome.code,
       last_error = outcome.error, succeeded_at = outcome.succeeded_at
  FROM unnest(%(ids)s::bigint[], %(attempts)s::int[], %(statuses)s::text[], %(next)s::timestamptz[],
              %(codes)s::int[], %(errors)s::text[], %(succeeded)s::timestamptz[])
       AS outcome(id, attempts, status, next_attempt_at, code, error, succeeded_at)
 WHERE delivery.id = outcome.id AND delivery.attempts = outcome.attempts AND delivery.status = %(pending)s
RETURNING delivery.id, delivery.endpoint_id, delivery.status
"""


@dataclass(frozen=True)
class _Claimed:
    id: int
    attempts: int
    created_at: datetime
    endpoint_id: int
    event_id: int
    event_type: str
    event_created_at: datetime
    event_data: str
    url: str
    secret_salt: str


def event_body(*, id: int, type: str, created: datetime, data: str | dict) -> bytes:
    """An event as a webhook's body: the API's shape of it, ``{"id", "type", "created", "data"}``."""
    payload = {
        "id": id,
        "type": type,
        "created": created.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "data": json.loads(data) if isinstance(data, str) else data,
    }
    return json.dumps(payload, separators=(",", ":"), cls=DjangoJSONEncoder).encode()


def retry_delay_seconds(attempts: int) -> float:
    """How long after its ``attempts``-th failure a delivery is tried again: from 30 s doubling,
    at most an hour, less up to a fifth at random so that retries of a burst spread out."""
    base = min(FIRST_RETRY_SECONDS * 2 ** min(attempts - 1, 20), MAX_RETRY_SECONDS)
    return base * random.uniform(0.8, 1.0)


_pools = webhooks.Pools(maxsize=SEND_THREADS)


def webhook_deliveries_send(*, budget_seconds: float = RUN_BUDGET_SECONDS, batch_size: int = BATCH_SIZE) -> int:
    """Send the deliveries that are due, a batch at a time, until none is due or the budget is
    spent; returns how many were attempted. Safe to run in several workers at once."""
    started, attempted = time.monotonic(), 0
    with ThreadPoolExecutor(max_workers=SEND_THREADS, thread_name_prefix="webhook") as executor:
        while time.monotonic() - started < budget_seconds:
            claimed = _claim(batch_size)
            if not claimed:
                break
            outcomes = list(executor.map(_send, claimed))
            _record(claimed, outcomes)
            attempted += len(claimed)
    return attempted


def _claim(batch_size: int) -> list[_Claimed]:
    now = timezone.now()
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            DELIVERIES_CLAIM,
            {
                "pending": WebhookDelivery.Status.PENDING,
                "now": now,
                "lease_until": now + LEASE,
                "batch": batch_size,
            },
        )
        return [_Claimed(*row) for row in cursor.fetchall()]


def _send(claimed: _Claimed) -> webhooks.Outcome:
    body = event_body(
        id=claimed.event_id, type=claimed.event_type, created=claimed.event_created_at, data=claimed.event_data
    )
    secret = signing.endpoint_secret(claimed.secret_salt)
    headers = {
        "Content-Type": "application/json",
        "Webhook-Id": str(claimed.event_id),
        "Webhook-Signature": signing.sign(secret, body, int(time.time())),
    }
    try:
        return webhooks.post(_pools, claimed.url, body, headers)
    except Exception as exc:  # a bug must not lose the batch's other outcomes
        logger.exception("webhook delivery %s failed unexpectedly", claimed.id)
        return webhooks.Outcome(None, f"internal error: {type(exc).__name__}")


def _record(claimed: list[_Claimed], outcomes: list[webhooks.Outcome]) -> None:
    now = timezone.now()
    statuses, next_attempts, succeeded = [], [], []
    for delivery, outcome in zip(claimed, outcomes, strict=True):
        deadline = delivery.created_at + GIVE_UP_AFTER
        if outcome.succeeded:
            statuses.append(WebhookDelivery.Status.SUCCEEDED)
            next_attempts.append(None)
            succeeded.append(now)
        elif now >= deadline:
            statuses.append(WebhookDelivery.Status.FAILED)
            next_attempts.append(None)
            succeeded.append(None)
        else:
            statuses.append(WebhookDelivery.Status.PENDING)
            # The last try is at the deadline itself.
            next_attempts.append(min(now + timedelta(seconds=retry_delay_seconds(delivery.attempts)), deadline))
            succeeded.append(None)
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(
                DELIVERIES_RECORD,
                {
                    "ids": [d.id for d in claimed],
                    "attempts": [d.attempts for d in claimed],
                    "statuses": [str(s) for s in statuses],
                    "next": next_attempts,
                    "codes": [o.status_code for o in outcomes],
                    "errors": [o.error[:500] for o in outcomes],
                    "succeeded": succeeded,
                    "pending": WebhookDelivery.Status.PENDING,
                },
            )
            rows = cursor.fetchall()
        exhausted = sorted({endpoint_id for _, endpoint_id, status in rows if status == WebhookDelivery.Status.FAILED})
        for endpoint in WebhookEndpoint.objects.filter(pk__in=exhausted).order_by("pk"):
            webhook_endpoint_disable(
                endpoint=endpoint,
                reason=f"A delivery kept failing for {GIVE_UP_AFTER.days} days.",
                actor_label="system",
                notify=True,
            )


# --- Retention ---

RETENTION = timedelta(days=90)  # the API promises at least 30
PURGE_BATCH = 5000

# One bounded batch of events past retention, with their deliveries (in the same statement,
# before the foreign keys are checked at commit).
EVENTS_PURGE = """
WITH doomed AS (
    SELECT id FROM events_event WHERE created_at < %(before)s ORDER BY id LIMIT %(batch)s
), gone AS (
    DELETE FROM events_webhookdelivery WHERE event_id IN (SELECT id FROM doomed)
)
DELETE FROM events_event WHERE id IN (SELECT id FROM doomed)
"""


def events_purge(*, batch_size: int = PURGE_BATCH) -> int:
    """Delete events older than ``RETENTION`` and their deliveries, a bounded batch per
    transaction; returns how many events."""
    before, total = timezone.now() - RETENTION, 0
    while True:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(EVENTS_PURGE, {"before": before, "batch": batch_size})
            deleted = cursor.rowcount
        total += deleted
        if deleted < batch_size:
            return total
