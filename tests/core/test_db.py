"""core.db.CompiledQuery: a queryset compiled once, run again with other values."""

from decimal import Decimal

import pytest

from core.db import CompiledQuery
from marketplace.models import Organization

pytestmark = pytest.mark.django_db


def by_name(name):
    return Organization.objects.filter(name=name).order_by().values_list("id", "credit_limit", "created_at")


def test_it_answers_as_the_queryset_does_for_each_value():
    compiled = CompiledQuery(by_name, name=str)
    first = Organization.objects.create(name="First", is_lab=True, credit_limit=Decimal("12.50"))
    Organization.objects.create(name="Second", is_lab=True, credit_limit=None)
    for name in ("First", "Second", "Nobody", "First"):
        assert compiled.rows(name=name) == list(by_name(name))
    (row,) = compiled.rows(name="First")
    assert row[0] == first.pk and row[1] == Decimal("12.50") and row[2] == first.created_at


def test_integer_values_and_several_names():
    compiled = CompiledQuery(
        lambda organization, status: (
            Organization.objects.filter(pk=organization, status=status).order_by().values_list("name", flat=True)
        ),
        organization=int,
        status=str,
    )
    lab = Organization.objects.create(name="Lab", is_lab=True)
    assert compiled.rows(organization=lab.pk, status="active") == [("Lab",)]
    assert compiled.rows(organization=str(lab.pk), status="active") == [("Lab",)]  # a path's text, as an int
    assert compiled.rows(organization=lab.pk, status="suspended") == []
    # A rule changed between two runs is read afresh: only the SQL is kept, never a row.
    Organization.objects.filter(pk=lab.pk).update(status="suspended")
    assert compiled.rows(organization=lab.pk, status="active") == []


def test_a_value_that_reaches_the_sql_twice_or_never_is_refused():
    twice = CompiledQuery(
        lambda name: Organization.objects.filter(name=name).exclude(name__iexact=name).values_list("id"), name=str
    )
    with pytest.raises(ValueError, match="2 times"):
        twice.rows(name="x")
    never = CompiledQuery(lambda name: Organization.objects.values_list("id"), name=str)
    with pytest.raises(ValueError, match="0 times"):
        never.rows(name="x")
    with pytest.raises(TypeError):
        CompiledQuery(by_name, name=float)


def test_rows_are_tuples_through_the_fields_converters():
    """A column with a converter (JSON) comes back converted, in tuples, as values_list gives it."""
    from marketplace.models import IdempotencyRecord

    lab = Organization.objects.create(name="Lab", is_lab=True)
    IdempotencyRecord.objects.create(organization=lab, key="k", fingerprint="f", response_body={"a": [1, "b"]})
    compiled = CompiledQuery(
        lambda key: IdempotencyRecord.objects.filter(key=key).order_by().values_list("key", "response_body"), key=str
    )
    assert compiled.rows(key="k") == list(IdempotencyRecord.objects.filter(key="k").values_list("key", "response_body"))
    assert compiled.rows(key="k") == [("k", {"a": [1, "b"]})]
