"""Money: Decimal everywhere, with the field shapes defined once and one rounding point."""

from decimal import ROUND_HALF_UP, Decimal

from django.conf import settings
from django.db import models

from core.errors import InvalidInput

ZERO = Decimal("0")
CENT = Decimal("0.01")

# Amounts in currency: up to 10^14 with cents.
AMOUNT_MAX_DIGITS = 16
AMOUNT_PLACES = 2
# Unit prices per GPU-hour: up to 4 decimal places.
PRICE_MAX_DIGITS = 12
PRICE_PLACES = 4
# Quantities in GPU-hours, kept exact to the GPU-second (1/3600 hour needs more places).
QUANTITY_MAX_DIGITS = 20
QUANTITY_PLACES = 6
# Rates such as the platform fee.
RATE_MAX_DIGITS = 6
RATE_PLACES = 4


def round_money(value: Decimal) -> Decimal:
    """Round half-up to cents: the one rounding point, used per invoice line."""
    return value.quantize(CENT, rounding=ROUND_HALF_UP)


def AmountField(**kwargs) -> models.DecimalField:  # noqa: N802 - reads like a field class
    return models.DecimalField(max_digits=AMOUNT_MAX_DIGITS, decimal_places=AMOUNT_PLACES, **kwargs)


def PriceField(**kwargs) -> models.DecimalField:  # noqa: N802
    return models.DecimalField(max_digits=PRICE_MAX_DIGITS, decimal_places=PRICE_PLACES, **kwargs)


def QuantityField(**kwargs) -> models.DecimalField:  # noqa: N802
    return models.DecimalField(max_digits=QUANTITY_MAX_DIGITS, decimal_places=QUANTITY_PLACES, **kwargs)


def RateField(**kwargs) -> models.DecimalField:  # noqa: N802
    return models.DecimalField(max_digits=RATE_MAX_DIGITS, decimal_places=RATE_PLACES, **kwargs)


# Prices move in whole cents. Every committed line is then GPUs x whole hours x cents, exact
# with no rounding, so what is sold is billed: six 1-hour blocks cost what one 6-hour block
# costs, and no block rounds to 0.00. (Metered lines round once, per invoice line.)
PRICE_TICK = CENT


def max_price_per_gpu_hour() -> Decimal:
    """The ceiling on any price per GPU-hour (setting MAX_PRICE_PER_GPU_HOUR, default 1,000.00)."""
    return settings.MAX_PRICE_PER_GPU_HOUR


def validate_price(price: Decimal, *, field: str) -> None:
    """A price per GPU-hour: positive, whole cents, at most the ceiling; or InvalidInput on ``field``."""
    if not price.is_finite() or price <= 0:
        raise InvalidInput("The price must be greater than zero.", fields={field: ["Must be greater than zero."]})
    if price % PRICE_TICK:
        raise InvalidInput(
            "Prices are in whole cents per GPU-hour.", fields={field: ["A multiple of 0.01 (whole cents)."]}
        )
    ceiling = max_price_per_gpu_hour()
    if price > ceiling:
        raise InvalidInput(f"The price may be at most {ceiling} per GPU-hour.", fields={field: [f"At most {ceiling}."]})
