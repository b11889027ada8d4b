"""Celery tasks of events: the outer layer (each imports its service inside its body)."""

from celery import shared_task


@shared_task
def deliver_webhooks() -> int:
    """Send the webhook deliveries that are due; returns how many were attempted."""
    return 0


@shared_task
def purge_events() -> int:
    """Delete events past their retention; returns how many."""
    return 0
