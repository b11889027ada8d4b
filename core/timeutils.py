"""Hour arithmetic. The unit of trade is a node-hour on whole UTC hours."""

from datetime import UTC, datetime, timedelta

from django.utils import timezone

HOUR = timedelta(hours=1)


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
