"""The terms of a trade, as pure rules: its hours and its price. No database, no imports of
services, so the booking, the matching engine and the demo all price a block the same way."""

from datetime import datetime
from decimal import Decimal

from core.errors import InvalidInput
from core.money import round_money
from core.timeutils import current_hour, is_whole_hour

MAX_DURATION_HOURS = 24 * 366 * 3


def contract_total(*, gpu_count: int, hours: int, price_per_gpu_hour: Decimal) -> Decimal:
    """The price of a committed block: GPUs x hours x price, to the cent."""
    return round_money(gpu_count * hours * price_per_gpu_hour)


def validate_start(starts_at: datetime) -> None:
    """A trade starts on a whole UTC hour, not before the current one."""
    if not is_whole_hour(starts_at):
        raise InvalidInput("starts_at must be a whole UTC hour.", fields={"starts_at": ["Must be a whole UTC hour."]})
    if starts_at < current_hour():
        raise InvalidInput(
            "starts_at must not be before the current hour.",
            fields={"starts_at": ["Must not be before the current hour."]},
        )


def validate_duration(duration_hours: int) -> None:
    if not 1 <= duration_hours <= MAX_DURATION_HOURS:
        raise InvalidInput(
            f"duration_hours must be 1 to {MAX_DURATION_HOURS}.", fields={"duration_hours": ["Out of range."]}
        )
