from django.db.models import QuerySet

from events.models import Event, WebhookDelivery, WebhookEndpoint
from marketplace.models import Organization


def event_list(*, organization: Organization, type: str | None = None) -> QuerySet[Event]:
    """The organization's events, newest first, of one type if given."""
    events = Event.objects.filter(organization=organization).only("id", "type", "created_at", "data")
    return events.filter(type=type) if type else events


def webhook_endpoint_list(*, organization: Organization) -> QuerySet[WebhookEndpoint]:
    return WebhookEndpoint.objects.filter(organization=organization).order_by("-id")


def webhook_delivery_list(*, endpoint: WebhookEndpoint, status: str | None = None) -> QuerySet[WebhookDelivery]:
    """The endpoint's deliveries, newest first, with their event's type."""
    deliveries = WebhookDelivery.objects.filter(endpoint=endpoint).select_related("event").defer("event__data")
    deliveries = deliveries.filter(status=status) if status else deliveries
    return deliveries.order_by("-id")
