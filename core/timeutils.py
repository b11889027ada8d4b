"""Hour and month arithmetic. The unit of trade is a node-hour on whole UTC hours; the
billing period is a calendar month in UTC, named by its first day."""

from datetime import UTC, date, datetime, timedelta

from django.utils import timezone

from core.errors import InvalidInput

HOUR = timedelta(hours=1)

# The dates the market deals in. Every time an API client gives must fall inside this
# horizon, so no date arithmetic can overflow and nothing is listed to the year 9999.
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
HORIZON = datetime(2100, 1, 1, tzinfo=UTC)
HORIZON_TEXT = "2000-01-01T00:00:00Z to 2100-01-01T00:00:00Z"


def within_horizon(value: datetime) -> bool:
    return EARLIEST <= value <= HORIZON


def is_whole_hour(value: datetime) -> bool:
    return value.minute == 0 and value.second == 0 and value.microsecond == 0


def to_utc(value: datetime) -> datetime:
    if timezone.is_naive(value):
        raise ValueError("naive datetime")
    return value.astimezone(UTC)


def floor_hour(value: datetime) -> datetime:
    return to_utc(value).replace(minute=0, second=0, microsecond=0)


def ceil_hour(value: datetime) -> datetime:
    floored = floor_hour(value)
    return floored if floored == to_utc(value) else floored + HOUR


def current_hour() -> datetime:
    return floor_hour(timezone.now())


def next_hour() -> datetime:
    return current_hour() + HOUR


def hours_between(start: datetime, end: datetime) -> int:
    return int((end - start) // HOUR)


# --- Months: a billing period is a calendar month in UTC, named by its first day -------------


def parse_period(value: str) -> date:
    """'2026-11' -> date(2026, 11, 1)."""
    try:
        year, month = value.split("-")
        if len(year) != 4 or len(month) != 2 or not value.isascii():
            raise ValueError
        period = date(int(year), int(month), 1)
        period_bounds(period)  # its end must exist too: 9999-12 has none
        return period
    except (ValueError, AttributeError):
        raise InvalidInput("A period is a month, YYYY-MM.", fields={"period": ["Use YYYY-MM, e.g. 2026-11."]})


def month_of(moment: datetime) -> date:
    moment = moment.astimezone(UTC)
    return date(moment.year, moment.month, 1)


def next_month(period: date) -> date:
    return date(period.year + (period.month == 12), period.month % 12 + 1, 1)


def previous_month(period: date) -> date:
    return date(period.year - (period.month == 1), (period.month - 2) % 12 + 1, 1)


def period_bounds(period: date) -> tuple[datetime, datetime]:
    start = datetime(period.year, period.month, 1, tzinfo=UTC)
    end_month = next_month(period)
    return start, datetime(end_month.year, end_month.month, 1, tzinfo=UTC)


def iso_utc(value: datetime | None) -> str | None:
    """A UTC moment as the API and events write it: ISO 8601 with a Z (None stays None)."""
    return value.isoformat().replace("+00:00", "Z") if value is not None else None
