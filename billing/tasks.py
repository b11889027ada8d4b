from celery import shared_task
from django.utils import timezone

from billing.rating import month_of, previous_month
from billing.services import billing_period_close


@shared_task
def close_previous_month() -> dict:
    """On the 1st: close the month that just ended. Closing twice creates nothing new."""
    period = previous_month(month_of(timezone.now()))
    result = billing_period_close(period=period)
    return {"period": f"{period:%Y-%m}", "created": result.created, "invoices": result.invoices}
