import logging

from celery import shared_task
from django.utils import timezone

from billing.models import BillingPeriod
from billing.rating import month_of, next_month, previous_month
from billing.services import billing_period_close

logger = logging.getLogger(__name__)


@shared_task
def close_previous_month() -> dict:
    """Close every ended month not closed yet, oldest first (a missed run is caught up).

    Closing twice creates nothing new, so beat may run it as often as it likes.
    """
    last_ended = previous_month(month_of(timezone.now()))
    latest = BillingPeriod.objects.order_by("-period").first()
    period = next_month(latest.period) if latest else last_ended
    outcome = {"period": f"{last_ended:%Y-%m}", "created": False, "invoices": 0}
    while period <= last_ended:
        result = billing_period_close(period=period)
        logger.info("closed %s: %s invoice(s)", f"{period:%Y-%m}", result.invoices)
        outcome = {"period": f"{period:%Y-%m}", "created": result.created, "invoices": result.invoices}
        period = next_month(period)
    return outcome
