"""Market data: the daily price index (computed by market.index)."""

from django.db import models
from django.db.models import F, Q

from core.money import PriceField
from marketplace.models import GpuModel

# Sums of price x GPU-hours over a day's trades: exact (prices have 4 places, GPU-hours are
# whole), and room for 10^20 of notional.
NOTIONAL_MAX_DIGITS = 24
NOTIONAL_PLACES = 4


class PriceIndexDay(models.Model):
    """A UTC day whose index is computed, for every GPU model at once. The row is the claim: a
    run that inserts it computes the day, and a run that finds it computes nothing (market.index)."""

    day = models.DateField(primary_key=True)
    computed_at = models.DateTimeField(help_text="When the day's index was (last) computed.")

    class Meta:
        ordering = ["-day"]

    def __str__(self) -> str:
        return f"{self.day:%Y-%m-%d}"


class PriceIndex(models.Model):
    """One GPU model's trades of one UTC day (contracts signed that day, not cancelled): open,
    high, low and close prices, and the exact notional and GPU-hours the VWAP is read from.
    A day computed with no trade of the model has no row."""

    gpu_model = models.ForeignKey(GpuModel, on_delete=models.PROTECT, related_name="+", db_index=False)
    day = models.ForeignKey(PriceIndexDay, on_delete=models.CASCADE, related_name="prices", db_column="day")
    open = PriceField(help_text="The day's first trade's price per GPU-hour (by signing time, then id).")
    high = PriceField()
    low = PriceField()
    close = PriceField(help_text="The day's last trade's price per GPU-hour (by signing time, then id).")
    notional = models.DecimalField(
        max_digits=NOTIONAL_MAX_DIGITS, decimal_places=NOTIONAL_PLACES, help_text="Sum of price x GPU-hours."
    )
    volume_gpu_hours = models.PositiveBigIntegerField(help_text="Sum of the trades' GPU-hours (GPUs x hours).")
    trades = models.PositiveIntegerField()

    class Meta:
        ordering = ["gpu_model", "day"]
        verbose_name_plural = "price index"
        constraints = [
            models.UniqueConstraint(fields=["gpu_model", "day"], name="price_index_one_per_model_day"),
            models.CheckConstraint(condition=Q(trades__gte=1, volume_gpu_hours__gte=1), name="price_index_traded"),
            models.CheckConstraint(
                condition=Q(low__lte=F("open"), high__gte=F("open")) & Q(low__lte=F("close"), high__gte=F("close")),
                name="price_index_range",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.gpu_model_id} {self.day_id}"
