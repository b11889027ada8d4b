"""Celery tasks of events: the outer layer (each imports its service inside its body)."""

from celery import shared_task


@shared_task
def deliver_webhooks() -> int:
    """Send the webhook deliveries that are due; returns how many were attempted."""
    from events.services import webhook_deliveries_send

    return webhook_deliveries_send()


@shared_task
def purge_events() -> int:
    """Delete events past their retention; returns how many."""
    from events.services import events_purge

    return events_purge()
