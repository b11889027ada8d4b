from celery import shared_task


@shared_task
def compute_price_index() -> None:
    """The daily price index: filled in by market.index."""
