"""The daily price index: per GPU model and UTC day, the open, high, low and close prices of
the contracts signed that day (not cancelled), their GPU-hours and their notional, from which
the volume-weighted price is read (market.selectors.vwap).

A day is computed once, for every model at once: the run that inserts the day's
``PriceIndexDay`` row writes its figures in the same transaction, and a run that finds the row
(committed, or waits for the run that holds it) writes nothing. So the hourly job catches up
on every completed day not computed yet, never computes one twice, and two runs at once split
the days between them. ``force`` computes the days again (after a cancellation, say).
"""

from datetime import UTC, date, datetime, timedelta

from django.db import connection, transaction
from django.utils import timezone

from core.errors import InvalidInput
from core.timeutils import EARLIEST
from market.selectors import TRADES, trades_parameters

# Claim the days of [first, last] not computed yet, returning them: the days this run computes.
# A day another run is computing waits for it, then counts as computed.
CLAIM_NEW_DAYS = """
    INSERT INTO market_priceindexday (day, computed_at)
    SELECT d::date, %(now)s FROM generate_series(%(first)s::date, %(last)s::date, INTERVAL '1 day') d
    ON CONFLICT (day) DO NOTHING
    RETURNING day
"""
# With force: every day of [first, last], those computed already locked until this run ends.
CLAIM_ALL_DAYS = """
    INSERT INTO market_priceindexday (day, computed_at)
    SELECT d::date, %(now)s FROM generate_series(%(first)s::date, %(last)s::date, INTERVAL '1 day') d
    ON CONFLICT (day) DO UPDATE SET computed_at = EXCLUDED.computed_at
    RETURNING day
"""

FORGET_DAYS = "DELETE FROM market_priceindex WHERE day = ANY (%(days)s::date[])"

# The figures of the claimed days, per GPU model with a trade that day. Open and close: the
# first and last trade by signing time, then id; days are UTC days of the signing time.
WRITE_DAYS = "".join(
    (
        "WITH trades AS (",
        TRADES,
        """), dated AS (
        SELECT t.*, (t.signed_at AT TIME ZONE 'UTC')::date AS day, t.gpu_count * t.hours AS gpu_hours
        FROM trades t
        WHERE t.signed_at >= %(from_moment)s AND t.signed_at < %(to_moment)s
    )
    INSERT INTO market_priceindex
        (gpu_model_id, day, open, high, low, close, notional, volume_gpu_hours, trades)
    SELECT t.gpu_model_id, t.day,
           (array_agg(t.price_per_gpu_hour ORDER BY t.signed_at, t.id))[1],
           MAX(t.price_per_gpu_hour), MIN(t.price_per_gpu_hour),
           (array_agg(t.price_per_gpu_hour ORDER BY t.signed_at DESC, t.id DESC))[1],
           SUM(t.price_per_gpu_hour * t.gpu_hours), SUM(t.gpu_hours), COUNT(*)
    FROM dated t
    WHERE t.day = ANY (%(days)s::date[])
    GROUP BY t.gpu_model_id, t.day
""",
    )
)

FIRST_TRADE = "".join(("WITH trades AS (", TRADES, ") SELECT MIN(t.signed_at) FROM trades t"))


def last_completed_day() -> date:
    """Yesterday, in UTC: the last day whose trades are all signed."""
    return timezone.now().astimezone(UTC).date() - timedelta(days=1)


def _start_of(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def price_index_compute(*, first: date, last: date, force: bool = False) -> list[date]:
    """Compute the index of each completed UTC day of [first, last] not computed yet (every one
    of them with ``force``), for every GPU model; return the days computed, in order."""
    if last > last_completed_day():
        raise InvalidInput(
            f"Only completed UTC days have an index: the last is {last_completed_day():%Y-%m-%d}.",
            fields={"to": [f"At most {last_completed_day():%Y-%m-%d}."]},
        )
    if first < EARLIEST.date():
        raise InvalidInput(
            f"The index starts at {EARLIEST:%Y-%m-%d}.", fields={"from": [f"At least {EARLIEST:%Y-%m-%d}."]}
        )
    if first > last:
        raise InvalidInput("The first day is after the last.", fields={"from": ["Must be on or before to."]})
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            CLAIM_ALL_DAYS if force else CLAIM_NEW_DAYS, {"first": first, "last": last, "now": timezone.now()}
        )
        days = sorted(day for (day,) in cursor.fetchall())
        if not days:
            return []
        if force:
            cursor.execute(FORGET_DAYS, {"days": days})
        cursor.execute(
            WRITE_DAYS,
            trades_parameters()
            | {"days": days, "from_moment": _start_of(days[0]), "to_moment": _start_of(days[-1] + timedelta(days=1))},
        )
    return days


def price_index_catch_up() -> list[date]:
    """Compute every completed day from the first trade's not computed yet (the hourly job)."""
    with connection.cursor() as cursor:
        cursor.execute(FIRST_TRADE, trades_parameters())
        (first_trade,) = cursor.fetchone()
    if first_trade is None or first_trade.astimezone(UTC).date() > last_completed_day():
        return []
    return price_index_compute(first=first_trade.astimezone(UTC).date(), last=last_completed_day())
