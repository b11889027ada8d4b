"""Serializers of the market data: the order book, the trades and the daily price index."""

from datetime import UTC, timedelta

from django.utils import timezone
from rest_framework import serializers

from broker.terms import MAX_DURATION_HOURS, validate_window
from core.errors import InvalidInput
from core.serializers import PatternField, QuerySerializer, StrictDateField, count_field, time_field
from core.timeutils import EARLIEST, HORIZON, HORIZON_TEXT, HOUR, hours_between, is_whole_hour, next_hour
from market.index import last_completed_day
from marketplace.models import REGION_VALIDATOR, BillingMode

MAX_LEVELS = 500
DEFAULT_LEVELS = 50
TRADES_LOOKBACK = timedelta(days=31)  # older trades: the daily index
DEFAULT_TRADES_SINCE = timedelta(hours=24)
MAX_INDEX_DAYS = 366
DEFAULT_INDEX_DAYS = 30


class BookQuerySerializer(QuerySerializer):
    starts_at = time_field(
        required=False,
        help_text="The window's start: a whole UTC hour not yet begun; the next whole hour when omitted.",
    )
    ends_at = time_field(
        required=False, help_text="The window's end: a whole UTC hour after starts_at; starts_at + 1 hour when omitted."
    )
    region = PatternField(
        required=False, max_length=63, validators=[REGION_VALIDATOR], help_text="Only this region; all when omitted."
    )
    levels = count_field(
        max_value=MAX_LEVELS,
        default=DEFAULT_LEVELS,
        help_text=f"How many price levels of each side, best first; {DEFAULT_LEVELS} when omitted.",
    )

    def validate(self, attrs):
        starts_at = attrs.setdefault("starts_at", next_hour())
        ends_at = attrs.setdefault("ends_at", starts_at + HOUR)
        refused = {
            name: ["Must be a whole UTC hour."] for name in ("starts_at", "ends_at") if not is_whole_hour(attrs[name])
        }
        if refused:
            raise serializers.ValidationError(refused)
        if ends_at <= starts_at:
            raise serializers.ValidationError({"ends_at": ["Must be after starts_at."]})
        try:
            validate_window(starts_at, hours_between(starts_at, ends_at))
        except InvalidInput as exc:
            if "duration_hours" not in exc.fields:
                raise
            # The window is given by its end here, not by a duration.
            raise InvalidInput(
                f"The window may last at most {MAX_DURATION_HOURS} hours and must end within {HORIZON_TEXT}.",
                fields={"ends_at": exc.fields["duration_hours"]},
            ) from None
        return attrs


class LevelSerializer(serializers.Serializer):
    price_per_gpu_hour = serializers.DecimalField(
        max_digits=12, decimal_places=4, help_text="The price per GPU-hour of this level."
    )
    gpus = serializers.IntegerField(help_text="GPUs at this price: free for the whole window (asks), or wanted (bids).")
    orders = serializers.IntegerField(help_text="How many listings (asks) or compute requests (bids) make it up.")


class BookSerializer(serializers.Serializer):
    gpu_model = serializers.CharField(help_text="The GPU model's slug.")
    region = serializers.CharField(allow_null=True, help_text="The region asked; null: every region.")
    starts_at = serializers.DateTimeField(help_text="The window's start.")
    ends_at = serializers.DateTimeField(help_text="The window's end.")
    asks = LevelSerializer(
        many=True,
        help_text="Offers by price, cheapest first: GPUs of active listings free for the whole window, in listings "
        "that allow its length (a lab's search finds the same).",
    )
    bids = LevelSerializer(
        many=True,
        help_text="Open compute requests by their maximum price, highest first: GPUs wanted for an hour of the "
        "window, by requests not yet begun, in the region asked or in any region.",
    )


class TradeQuerySerializer(QuerySerializer):
    since = time_field(
        required=False,
        help_text="Trades signed at or after this moment, at most 31 days back; 24 hours back when omitted.",
    )

    def validate(self, attrs):
        now = timezone.now()
        attrs.setdefault("since", now - DEFAULT_TRADES_SINCE)
        if attrs["since"] < now - TRADES_LOOKBACK:
            earliest = (now - TRADES_LOOKBACK).astimezone(UTC)
            raise serializers.ValidationError(
                {
                    "since": [
                        f"At most 31 days back, from {earliest:%Y-%m-%dT%H:%M:%SZ}; older prices are in the daily "
                        "index (/index)."
                    ]
                }
            )
        return attrs


class TradeSerializer(serializers.Serializer):
    signed_at = serializers.DateTimeField(help_text="When the contract was signed.")
    price_per_gpu_hour = serializers.DecimalField(max_digits=12, decimal_places=4, help_text="The price per GPU-hour.")
    gpu_count = serializers.IntegerField(help_text="GPUs bought.")
    hours = serializers.IntegerField(help_text="Hours bought, as signed (an early release does not change them).")
    gpu_hours = serializers.SerializerMethodField(help_text="gpu_count x hours.")
    starts_at = serializers.DateTimeField(help_text="When the GPUs are delivered from.")
    billing_mode = serializers.ChoiceField(
        choices=BillingMode.choices, help_text="committed (every hour paid) or metered (GPU-hours used)."
    )
    resale = serializers.BooleanField(
        help_text="true: a resale of capacity bought earlier; false: a primary sale of a provider's own nodes."
    )

    def get_gpu_hours(self, trade) -> int:
        return trade["gpu_count"] * trade["hours"]


def _inside_horizon(day) -> None:
    earliest, latest = EARLIEST.date(), (HORIZON - timedelta(days=1)).date()
    if not earliest <= day <= latest:
        raise serializers.ValidationError(f"Must be from {earliest} to {latest}.")


def _index_day_fields() -> dict[str, serializers.Field]:
    return {
        "from": StrictDateField(
            required=False,
            validators=[_inside_horizon],
            help_text=f"The first UTC day, YYYY-MM-DD; {DEFAULT_INDEX_DAYS - 1} days before `to` when omitted.",
        ),
        "to": StrictDateField(
            required=False,
            validators=[_inside_horizon],
            help_text="The last UTC day, YYYY-MM-DD; yesterday (the last completed day) when omitted. At most "
            f"{MAX_INDEX_DAYS} days from `from`.",
        ),
    }


class IndexQuerySerializer(QuerySerializer):
    def get_fields(self) -> dict[str, serializers.Field]:  # "from" is a Python keyword
        return _index_day_fields()

    def validate(self, attrs):
        last = attrs.setdefault("to", last_completed_day())
        first = attrs.setdefault("from", max(last - timedelta(days=DEFAULT_INDEX_DAYS - 1), EARLIEST.date()))
        if first > last:
            raise serializers.ValidationError({"to": ["Must be on or after from."]})
        if (last - first).days + 1 > MAX_INDEX_DAYS:
            raise serializers.ValidationError({"to": [f"At most {MAX_INDEX_DAYS} days from `from`."]})
        return attrs


class IndexDaySerializer(serializers.Serializer):
    day = serializers.DateField(help_text="The UTC day.")
    open = serializers.DecimalField(
        max_digits=12, decimal_places=4, allow_null=True, help_text="The day's first trade's price; null: no trade."
    )
    high = serializers.DecimalField(
        max_digits=12, decimal_places=4, allow_null=True, help_text="The day's highest price; null: no trade."
    )
    low = serializers.DecimalField(
        max_digits=12, decimal_places=4, allow_null=True, help_text="The day's lowest price; null: no trade."
    )
    close = serializers.DecimalField(
        max_digits=12, decimal_places=4, allow_null=True, help_text="The day's last trade's price; null: no trade."
    )
    vwap = serializers.DecimalField(
        max_digits=12,
        decimal_places=2,
        allow_null=True,
        help_text="The volume-weighted price per GPU-hour: sum(price x GPU-hours) / sum(GPU-hours), rounded half-up "
        "to cents; null: no trade.",
    )
    volume_gpu_hours = serializers.IntegerField(help_text="GPU-hours traded that day (GPUs x hours of each trade).")
    trades = serializers.IntegerField(help_text="How many trades (contracts) were signed that day.")


class PriceIndexSerializer(serializers.Serializer):
    def get_fields(self) -> dict[str, serializers.Field]:  # "from" is a Python keyword
        return {
            "gpu_model": serializers.CharField(help_text="The GPU model's slug."),
            "from": serializers.DateField(help_text="The first UTC day asked."),
            "to": serializers.DateField(help_text="The last UTC day asked."),
            "days": IndexDaySerializer(
                many=True,
                help_text="Each day of [from, to] already computed, oldest first (the index of a day is computed "
                "after it ends, within the hour).",
            ),
        }
