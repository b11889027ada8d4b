from celery import shared_task


@shared_task
def compute_price_index() -> list[str]:
    """The daily price index of every completed day not computed yet; safe to run at any time,
    twice, or twice at once."""
    from market.index import price_index_catch_up

    return [f"{day:%Y-%m-%d}" for day in price_index_catch_up()]
