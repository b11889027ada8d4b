"""The terms of a trade, as pure rules: its hours and its price. No database, no imports of
services, so the booking, the matching engine and the demo all price a block the same way."""

from datetime import datetime
from decimal import Decimal

from django.utils import timezone

from core.errors import InvalidInput
from core.money import max_price_per_gpu_hour, round_money
from core.timeutils import HORIZON, HORIZON_TEXT, HOUR, is_whole_hour, within_horizon

MAX_DURATION_HOURS = 24 * 366 * 3
# The most one trade may cost at the price ceiling: 10^13 is 220,000 GPUs for five years at
# 1,000.00. Amount columns hold 10^14, and a month's invoice or statement would need over
# 100 million GPUs at the ceiling to reach it.
MAX_CONTRACT_TOTAL = Decimal(10**13)


def contract_total(*, gpu_count: int, hours: int, price_per_gpu_hour: Decimal) -> Decimal:
    """The price of a committed block: GPUs x hours x price, to the cent."""
    return round_money(gpu_count * hours * price_per_gpu_hour)


def validate_size(gpu_count: int, duration_hours: int) -> None:
    """A trade's GPU-hours, priced at the ceiling, stay within MAX_CONTRACT_TOTAL."""
    if gpu_count * duration_hours * max_price_per_gpu_hour() > MAX_CONTRACT_TOTAL:
        most = int(MAX_CONTRACT_TOTAL / max_price_per_gpu_hour())
        raise InvalidInput(
            f"One trade may cover at most {most:,} GPU-hours; split it.",
            fields={"gpu_count": [f"gpu_count x duration_hours must be at most {most}."]},
        )


def validate_window(starts_at: datetime, duration_hours: int) -> None:
    """A trade starts on a whole UTC hour that has not begun, and lasts 1 to MAX_DURATION_HOURS
    whole hours inside the horizon.

    Nothing is ever charged for time already past: at 12:55 the earliest start is 13:00 (an
    hour counts from its start, so a start at exactly 13:00:00 is still allowed then).
    """
    if not within_horizon(starts_at):
        raise InvalidInput(f"starts_at must be within {HORIZON_TEXT}.", fields={"starts_at": ["Out of range."]})
    if not is_whole_hour(starts_at):
        raise InvalidInput("starts_at must be a whole UTC hour.", fields={"starts_at": ["Must be a whole UTC hour."]})
    if starts_at < timezone.now():
        raise InvalidInput(
            "starts_at must not be in the past: the earliest start is the next whole hour.",
            fields={"starts_at": ["Must not be in the past; the earliest start is the next whole hour."]},
        )
    if not 1 <= duration_hours <= MAX_DURATION_HOURS:
        raise InvalidInput(
            f"duration_hours must be 1 to {MAX_DURATION_HOURS}.", fields={"duration_hours": ["Out of range."]}
        )
    if starts_at + duration_hours * HOUR > HORIZON:
        raise InvalidInput(
            f"The window must end within {HORIZON_TEXT}.", fields={"duration_hours": ["Ends past the horizon."]}
        )
