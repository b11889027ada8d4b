"""core.serializers.FieldsBuiltOnce: fields built once per class, bound to each instance."""

from decimal import Decimal

import pytest
from rest_framework import serializers

from billing.credit import Exposure
from core.serializers import FieldsBuiltOnce
from marketplace.api.serializers import OrganizationSerializer
from marketplace.models import Organization

pytestmark = pytest.mark.django_db


def exposure(lab: Organization, committed: str) -> Exposure:
    return Exposure(lab.pk, None, Decimal(committed), Decimal(0), Decimal(0))


def test_each_instance_answers_with_its_own_object_and_context():
    first = Organization.objects.create(name="First", is_lab=True)
    second = Organization.objects.create(name="Second", is_lab=True, is_provider=True)
    shown = []
    for lab, committed in [(first, "10.00"), (second, "20.00"), (first, "30.00")]:
        data = OrganizationSerializer(lab, context={"exposure": exposure(lab, committed)}).data
        shown.append((data["name"], data["role"], data["exposure"]["committed"]))
    assert shown == [("First", "lab", "10.00"), ("Second", "both", "20.00"), ("First", "lab", "30.00")]


def test_the_fields_are_those_drf_builds_and_each_instance_has_its_own():
    class Plain(serializers.ModelSerializer):
        role = serializers.CharField(read_only=True)

        class Meta:
            model = Organization
            fields = ["id", "name", "role", "status", "credit_limit", "created_at"]

    class Once(FieldsBuiltOnce, Plain):
        pass

    lab = Organization.objects.create(name="Lab", is_lab=True, credit_limit=Decimal("99.5"))
    assert Once(lab).data == Plain(lab).data
    one, two = Once(lab), Once(lab)
    assert [type(field) for field in one.fields.values()] == [type(field) for field in Plain(lab).fields.values()]
    for name in one.fields:
        assert one.fields[name] is not two.fields[name]
        assert one.fields[name].parent is one and two.fields[name].parent is two
    assert "_fields_built" in Once.__dict__ and "_fields_built" not in Plain.__dict__


def test_a_field_with_a_child_of_its_own_is_not_shared_between_instances():
    """A ListField binds its child when it is made: a shallow copy would share the child, bound
    to the unbound original (its context empty); each instance gets its own."""

    class Tagged(serializers.Field):
        def to_representation(self, value):
            return f"{value}@{self.context.get('who')}"

    class Once(FieldsBuiltOnce, serializers.Serializer):
        tags = serializers.ListField(child=Tagged())

    shown = [Once({"tags": [1]}, context={"who": who}).data["tags"] for who in ("A", "B")]
    assert shown == [["1@A"], ["1@B"]]


def _input_serializers() -> list[type]:
    """Every request body and query serializer of the API (each derives from StrictSerializer or
    QuerySerializer), once the URL configuration has imported their views."""
    from django.urls import get_resolver

    from core.serializers import QuerySerializer, StrictSerializer

    get_resolver().url_patterns  # noqa: B018 - imports every view, and with it every serializer
    found, stack = [], [StrictSerializer, QuerySerializer]
    while stack:
        cls = stack.pop()
        found.append(cls)
        stack.extend(cls.__subclasses__())
    return [cls for cls in found if cls.__module__.split(".")[0] != "core"]


def _writable_fields(serializer):
    for field in serializer.fields.values():
        if field.read_only:
            continue
        yield field
        if isinstance(field, serializers.BaseSerializer):
            yield from _writable_fields(field.child if isinstance(field, serializers.ListSerializer) else field)
        elif hasattr(field, "child"):
            yield field.child


def _lenient(field) -> bool:
    """A field DRF reads more loosely than the schema documents it: an integer from "8" or 8.5,
    a boolean from "yes", a decimal string from a JSON number or "1e2", an id from "5", a time
    without a zone, a day as 20261205, a patterned value with whitespace around it, text from a JSON number."""
    from django.core.validators import RegexValidator

    from core.serializers import (
        PatternField,
        StrictBooleanField,
        StrictCharField,
        StrictDateField,
        StrictDateTimeField,
        StrictDecimalField,
        StrictIntegerField,
    )

    strict = {
        serializers.IntegerField: StrictIntegerField,
        serializers.BooleanField: StrictBooleanField,
        serializers.DecimalField: StrictDecimalField,
        serializers.DateTimeField: StrictDateTimeField,
        serializers.DateField: StrictDateField,
    }
    if isinstance(field, serializers.PrimaryKeyRelatedField):
        return not isinstance(field.pk_field, StrictIntegerField)
    if isinstance(field, serializers.CharField) and any(isinstance(v, RegexValidator) for v in field.validators):
        return not isinstance(field, PatternField)
    if isinstance(field, serializers.CharField):
        return not isinstance(field, StrictCharField)
    return any(isinstance(field, loose) and not isinstance(field, tight) for loose, tight in strict.items())


def test_every_number_boolean_id_and_time_an_input_takes_is_read_as_the_schema_says():
    inputs = _input_serializers()
    assert len(inputs) >= 25
    lenient = [
        f"{cls.__module__}.{cls.__name__}.{field.field_name or field.parent.field_name}"
        for cls in inputs
        for field in _writable_fields(cls())
        if _lenient(field)
    ]
    assert lenient == []


@pytest.mark.parametrize("value", ["8", "8.0", True, 8.5, "", None, [8]])
def test_a_body_integer_is_a_json_number_with_no_fraction(value):
    from core.serializers import StrictSerializer, count_field

    class Body(StrictSerializer):
        count = count_field(allow_null=False)

    assert not Body(data={"count": value}).is_valid()
    for accepted in (8, 8.0):
        body = Body(data={"count": accepted})
        assert body.is_valid() and body.validated_data["count"] == 8 and type(body.validated_data["count"]) is int


@pytest.mark.parametrize("value", ["8.0", "+8", " 8", "8 ", "８", "0x8", "--8", "-", "1" * 20])
def test_a_query_integer_is_ascii_digits(value):
    from django.http import QueryDict

    from core.serializers import QuerySerializer, StrictIntegerField

    class Query(QuerySerializer):
        count = StrictIntegerField(required=False)

    assert not Query(data=QueryDict(f"count={value.replace('+', '%2B')}")).is_valid()
    query = Query(data=QueryDict("count=-8"))
    assert query.is_valid() and query.validated_data["count"] == -8
