import copy
import re

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from core.timeutils import HORIZON_TEXT, parse_client_date, parse_client_time, within_horizon

MAX_COUNT = 10_000_000


# For a serializer used on a hot path (a booking's contract, the caller's organization, a
# search's query): its fields are built once per class, not once per instance.
#
# DRF builds a serializer's fields for every instance, deep-copying the declared ones and, for
# a ModelSerializer, reading the model's: a third of a booking's Python. Here each instance gets a
# shallow copy of the fields built the first time, bound to itself; a nested serializer is
# deep-copied, as DRF does, since it keeps fields of its own. Only for serializers whose
# fields do not depend on the instance (its context, its data): ``get_fields`` runs once.
#
# (A comment, not a docstring: drf-spectacular would show a docstring as the description of
# every serializer without one of its own, e.g. Organization.)
class FieldsBuiltOnce:
    def get_fields(self):
        built = type(self).__dict__.get("_fields_built")
        if built is None:
            built = super().get_fields()
            type(self)._fields_built = built  # this class's own, not a subclass's
        return {
            name: copy.deepcopy(field) if _keeps_fields(field) else copy.copy(field) for name, field in built.items()
        }


def _keeps_fields(field) -> bool:
    """A nested serializer, or a field bound to a child of its own (ListField, DictField, a
    many=True relation): a shallow copy would share the child, bound to the unbound original."""
    return isinstance(field, serializers.BaseSerializer) or hasattr(field, "child") or hasattr(field, "child_relation")


# An input serializer that refuses fields it does not know, instead of ignoring them. (A comment,
# not a docstring: drf-spectacular would show it as the description of every request schema
# built on it that has no docstring of its own.)
class StrictSerializer(serializers.Serializer):
    def to_internal_value(self, data):
        if isinstance(data, dict):
            unknown = set(data) - set(self.fields)
            if unknown:
                raise serializers.ValidationError({name: ["Unknown field."] for name in sorted(unknown)})
        return super().to_internal_value(data)


EMPTY_PARAMETER = "Give a value, or leave the parameter out."
REPEATED_PARAMETER = "Give this parameter once: no parameter of the API takes a list."


def refuse_unclear_parameters(query_params, names) -> None:
    """A query parameter sent with no value (``?status=``) or more than once (``?page=2&page=3``)
    is a 400 naming it. DRF and django-filter would take the first as absent, as a form would, and
    read the last value of the second, and answer a question the client did not ask."""
    errors = {}
    for name in names:
        values = query_params.getlist(name)
        if len(values) > 1:
            errors[name] = [REPEATED_PARAMETER]
        elif values == [""]:
            errors[name] = [EMPTY_PARAMETER]
    if errors:
        raise serializers.ValidationError(errors)


# An operation's query parameters; one sent empty or twice is refused, not ignored. (A comment,
# as StrictSerializer's.)
class QuerySerializer(serializers.Serializer):
    def to_internal_value(self, data):
        refuse_unclear_parameters(data, self.fields)
        return super().to_internal_value(data)


class StrictCharField(serializers.CharField):
    """Text, as the schema's string says: DRF alone takes a JSON number for it (``"name": 123``
    is stored as "123")."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class PatternField(StrictCharField):
    """Text held to its pattern (a RegexValidator, shown in the schema) as sent: DRF alone trims
    whitespace first, so " us-south-1" or "us-south-1\\n" passed a pattern that allows neither."""

    default_error_messages = {"surrounded": "No spaces or line breaks around the value."}

    def to_internal_value(self, data):
        if isinstance(data, str) and data != data.strip():
            self.fail("surrounded")
        return super().to_internal_value(data)


class StrictBooleanField(serializers.BooleanField):
    """true or false, as the schema's boolean says, and none of the other spellings DRF would
    take for them (1, "yes", "on", "T"): a JSON boolean in a body, the word in a query string."""

    def to_internal_value(self, data):
        if isinstance(data, bool):
            return data
        if isinstance(self.root, QuerySerializer) and data in ("true", "false"):
            return data == "true"
        self.fail("invalid", input=data)


_QUERY_INTEGER = re.compile(r"-?[0-9]{1,19}")


def query_integer(text) -> int | None:
    """An integer as a query string writes it: ASCII digits, a minus sign at most (not "8.0",
    "+8", " 8" or full-width digits, which int() alone would take); None for anything else."""
    return int(text) if isinstance(text, str) and _QUERY_INTEGER.fullmatch(text) else None


class StrictIntegerField(serializers.IntegerField):
    """A whole number, as the schema's integer says: a JSON number with no fraction in a body
    (8 or 8.0, not "8" or true), ASCII digits in a query string (8, not "8.0", "+8" or " 8").
    DRF alone takes all of those."""

    def to_internal_value(self, data):
        if isinstance(self.root, QuerySerializer):
            if (number := query_integer(data)) is not None:
                return number
        elif isinstance(data, int) and not isinstance(data, bool):
            return data
        elif isinstance(data, float) and data.is_integer():
            return int(data)
        self.fail("invalid")


def count_field(*, max_value: int = MAX_COUNT, **kwargs) -> StrictIntegerField:
    """A positive whole count with an upper bound, so no value can overflow a column."""
    return StrictIntegerField(min_value=1, max_value=max_value, **kwargs)


PRICE_SCHEMA = {
    "type": "string",
    "format": "decimal",
    # whole cents, written with up to four decimals as the API writes prices ("1.9900")
    "pattern": r"^[0-9]{1,5}(\.[0-9]{1,2}0{0,2})?$",
    "description": "A price per GPU-hour, a decimal string in whole cents from 0.01 up to the market's ceiling "
    "(1000.00 unless configured otherwise); up to four decimals, as prices are written in answers (1.9900).",
}


_DECIMAL = re.compile(r"-?([0-9]+\.?[0-9]*|\.[0-9]+)")  # as drf-spectacular's pattern: 5, 5.5, 5. and .5
_PRICE = re.compile(PRICE_SCHEMA["pattern"])


class StrictDecimalField(serializers.DecimalField):
    """A decimal, as the string of plain digits the schema documents (its type is string): DRF
    alone also takes a JSON number, an exponent ("1e2") and spaces around the digits."""

    shape = _DECIMAL

    def to_internal_value(self, data):
        if not (isinstance(data, str) and self.shape.fullmatch(data)):
            self.fail("invalid")
        return super().to_internal_value(data)


@extend_schema_field(PRICE_SCHEMA)
class PriceField(StrictDecimalField):
    """A decimal price, the whole-cents string the schema documents and nothing else."""

    shape = _PRICE
    default_error_messages = {"invalid": 'A price in whole cents, as a string such as "2.10".'}


def price_field(**kwargs) -> serializers.DecimalField:
    """A price per GPU-hour: positive, at most 4 decimal places."""
    return PriceField(max_digits=12, decimal_places=4, **kwargs)


@extend_schema_field({"type": "string", "pattern": r"^\d{4}-\d{2}$", "example": "2026-11"})
class MonthField(serializers.DateField):
    """A calendar month, shown as YYYY-MM (the first day of the month is what is stored)."""

    def __init__(self, **kwargs):
        super().__init__(format="%Y-%m", **kwargs)


def _inside_horizon(value) -> None:
    if not within_horizon(value):
        raise serializers.ValidationError(f"Must be within {HORIZON_TEXT}.")


class StrictDateTimeField(serializers.DateTimeField):
    """A moment as the schema's date-time documents it (RFC 3339, a zone required): DRF alone
    reads a time without a zone as UTC and takes ``20261205T100000Z`` and week dates."""

    def to_internal_value(self, value):
        moment = parse_client_time(value)
        if moment is None:
            self.fail("invalid", format="RFC 3339 with a zone, e.g. 2026-12-05T10:00:00Z")
        return self.enforce_timezone(moment)


class StrictDateField(serializers.DateField):
    """A day as the schema's date documents it (``2026-12-05``), not ``20261205`` or a week date."""

    def to_internal_value(self, value):
        day = parse_client_date(value)
        if day is None:
            self.fail("invalid", format="YYYY-MM-DD")
        return day


def time_field(**kwargs) -> StrictDateTimeField:
    """A moment given by a client: RFC 3339 with a zone, inside the market's horizon."""
    return StrictDateTimeField(validators=[_inside_horizon], **kwargs)


class ErrorDetailSerializer(serializers.Serializer):
    """``code``, ``message`` and ``fields``: the last is a field name no declared attribute of a
    serializer may take (``Serializer.fields``), hence ``get_fields``."""

    def get_fields(self) -> dict[str, serializers.Field]:
        return {
            "code": serializers.CharField(
                help_text="A stable, machine-readable code, e.g. `invalid` or `capacity_unavailable`."
            ),
            "message": serializers.CharField(help_text="What went wrong, in words, for a person."),
            "fields": serializers.DictField(
                help_text="Details by field: for `invalid`, each refused field with its messages; for some "
                "conflicts, figures (`limit`, `exposure` and `amount` for `credit_limit_exceeded`); for "
                "`all_rejected`, `rejected`, each record refused with why. Empty otherwise."
            ),
        }


class ErrorSerializer(serializers.Serializer):
    """The one shape of every error the API answers (``core.errors.error_body``)."""

    error = ErrorDetailSerializer(help_text="The error.")
