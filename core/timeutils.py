"""Hour and month arithmetic. The unit of trade is a node-hour on whole UTC hours; the
billing period is a calendar month in UTC, named by its first day."""

import re
from datetime import UTC, date, datetime, timedelta

from django.utils import timezone

from core.errors import InvalidInput

HOUR = timedelta(hours=1)

# The dates the market deals in. Every time an API client gives must fall inside this
# horizon, so no date arithmetic can overflow and nothing is listed to the year 9999.
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
HORIZON = datetime(2100, 1, 1, tzinfo=UTC)
HORIZON_TEXT = "2000-01-01T00:00:00Z to 2100-01-01T00:00:00Z"


# RFC 3339's date-time, the schema's format for every time a client gives: a full date, T, a
# time with its seconds, a zone (Z or an offset); t and z may be lower case.
_CLIENT_TIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})"
)
_CLIENT_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def parse_client_time(text) -> datetime | None:
    """A moment as a client writes it (RFC 3339: ``2026-12-05T10:00:00Z``), in UTC; None for
    anything else: no zone, no seconds, a week date or the basic format Python alone would take,
    or a moment outside years 1 to 9999 once in UTC."""
    if not isinstance(text, str) or not _CLIENT_TIME.fullmatch(text := text.upper()):
        return None
    try:
        return datetime.fromisoformat(text).astimezone(UTC)
    except (ValueError, OverflowError):  # a 30th of February; OverflowError: before year 1 in UTC
        return None


def parse_client_date(text) -> date | None:
    """A day as a client writes it (RFC 3339's full-date: ``2026-12-05``); None for anything else."""
    if not isinstance(text, str) or not _CLIENT_DATE.fullmatch(text):
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        return None


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
