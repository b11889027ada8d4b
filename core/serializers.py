from rest_framework import serializers

from core.timeutils import HORIZON_TEXT, within_horizon

MAX_COUNT = 10_000_000


class StrictSerializer(serializers.Serializer):
    """An input serializer that refuses fields it does not know, instead of ignoring them."""

    def to_internal_value(self, data):
        if isinstance(data, dict):
            unknown = set(data) - set(self.fields)
            if unknown:
                raise serializers.ValidationError({name: ["Unknown field."] for name in sorted(unknown)})
        return super().to_internal_value(data)


def count_field(*, max_value: int = MAX_COUNT, **kwargs) -> serializers.IntegerField:
    """A positive whole count with an upper bound, so no value can overflow a column."""
    return serializers.IntegerField(min_value=1, max_value=max_value, **kwargs)


def price_field(**kwargs) -> serializers.DecimalField:
    """A price per GPU-hour: positive, at most 4 decimal places."""
    return serializers.DecimalField(max_digits=12, decimal_places=4, **kwargs)


def _inside_horizon(value) -> None:
    if not within_horizon(value):
        raise serializers.ValidationError(f"Must be within {HORIZON_TEXT}.")


def time_field(**kwargs) -> serializers.DateTimeField:
    """A moment given by a client: ISO 8601 with a zone, inside the market's horizon."""
    return serializers.DateTimeField(validators=[_inside_horizon], **kwargs)
