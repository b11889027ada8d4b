from django.contrib.postgres.fields import ArrayField
from django.db import models

from marketplace.models import Organization


class EventType(models.TextChoices):
    """Every change a party must act on. The name is the API's ``type``."""

    CONTRACT_CREATED = "contract.created", "Contract created"
    CONTRACT_ACTIVATED = "contract.activated", "Contract activated"
    CONTRACT_DELIVERED = "contract.delivered", "Contract delivered"
    CONTRACT_DELIVERY_LATE = "contract.delivery_late", "Contract delivery late"
    CONTRACT_NODE_REPLACED = "contract.node_replaced", "Contract node replaced"
    CONTRACT_ENDING = "contract.ending", "Contract ending within 24 hours"
    CONTRACT_COMPLETED = "contract.completed", "Contract completed"
    CONTRACT_TERMINATED = "contract.terminated", "Contract terminated"
    CONTRACT_CANCELLED = "contract.cancelled", "Contract cancelled"
    COMPUTE_REQUEST_FILLED = "compute_request.filled", "Compute request filled"
    COMPUTE_REQUEST_EXPIRED = "compute_request.expired", "Compute request expired"
    INCIDENT_OPENED = "incident.opened", "Incident opened"
    INCIDENT_RESOLVED = "incident.resolved", "Incident resolved"
    INVOICE_ISSUED = "invoice.issued", "Invoice issued"
    CREDIT_NOTE_ISSUED = "credit_note.issued", "Credit note issued"
    PAYOUT_STATEMENT_ISSUED = "payout_statement.issued", "Payout statement issued"
    WEBHOOK_ENDPOINT_DISABLED = "webhook_endpoint.disabled", "Webhook endpoint disabled"


class Event(models.Model):
    """Something one organization must know of, Stripe-style: a type and a snapshot of what
    changed (``data``). Written in the transaction that made the change, so an event exists
    exactly when its change committed; ``dedupe_key`` makes a retried or twice-delivered job
    publish it once. Read by its organization at /api/v1/events and sent to its webhooks."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+", db_index=False)
    type = models.CharField(max_length=64, choices=EventType.choices)
    data = models.JSONField()
    dedupe_key = models.CharField(max_length=128, null=True, blank=True, unique=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-id"]
        indexes = [
            models.Index(fields=["organization", "-id"], name="event_org_newest"),
            models.Index(fields=["organization", "type", "-id"], name="event_org_type_newest"),
        ]

    def __str__(self) -> str:
        return f"{self.public_id} {self.type}"

    @property
    def public_id(self) -> str:
        return f"evt_{self.pk}"


class WebhookEndpoint(models.Model):
    """A URL an organization asked us to POST its events to, signed with a secret only it holds.

    The secret is never stored: it is derived from ``SECRET_KEY`` and ``secret_salt``
    (``events.signing.endpoint_secret``), so rotating ``SECRET_KEY`` changes every endpoint's
    secret, and rolling the salt changes one's."""

    class Status(models.TextChoices):
        ENABLED = "enabled", "Enabled"  # receives the events it subscribes to
        DISABLED = "disabled", "Disabled"  # by its owner, or by us after a delivery failed for 3 days

    ALL_TYPES = "*"

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    url = models.CharField(max_length=2048)
    event_types = ArrayField(models.CharField(max_length=64))
    description = models.CharField(max_length=200, blank=True, default="")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ENABLED)
    disabled_reason = models.CharField(max_length=500, blank=True, default="")
    disabled_at = models.DateTimeField(null=True, blank=True)
    secret_salt = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.CheckConstraint(condition=models.Q(event_types__len__gt=0), name="webhook_endpoint_has_event_types"),
        ]

    def __str__(self) -> str:
        return f"we_{self.pk} {self.url}"


class WebhookDelivery(models.Model):
    """One event to send to one endpoint, until it answers 2xx or 3 days have passed.

    Created with its event, in the same statement (``events.services.EVENTS_INSERT``); sent by
    ``events.tasks.deliver_webhooks``, which claims it by moving ``next_attempt_at`` forward
    (a lease), so a worker that dies mid-send leaves it to be sent again."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"  # to be sent at next_attempt_at (again, after a failure)
        SUCCEEDED = "succeeded", "Succeeded"  # the endpoint answered 2xx
        FAILED = "failed", "Failed"  # still failing 3 days on, or its endpoint was disabled

    event = models.ForeignKey(Event, on_delete=models.CASCADE, related_name="+")
    endpoint = models.ForeignKey(WebhookEndpoint, on_delete=models.CASCADE, related_name="+", db_index=False)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    last_status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True, default="")
    succeeded_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField()

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(fields=["endpoint", "event"], name="webhook_delivery_once_per_endpoint"),
        ]
        indexes = [
            models.Index(fields=["endpoint", "-id"], name="webhook_delivery_endpoint"),
            models.Index(
                fields=["next_attempt_at", "id"],
                name="webhook_delivery_due",
                condition=models.Q(status="pending"),
            ),
        ]
        verbose_name_plural = "webhook deliveries"

    def __str__(self) -> str:
        return f"delivery {self.pk} of evt_{self.event_id} to we_{self.endpoint_id}"
