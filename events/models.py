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
