from celery import shared_task

from billing.services import billing_periods_close_due


@shared_task
def close_previous_month() -> dict:
    """Close every ended month not closed yet; beat may run it as often as it likes."""
    return billing_periods_close_due()
