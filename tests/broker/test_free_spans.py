"""The drift check finds kept free spans that differ from their one definition
(``broker_freespan_definition``, which the triggers' rebuild reads too)."""

import pytest
from django.db import connection

from broker.free_spans import free_spans_drift
from broker.models import FreeSpan
from tests.broker.factories import book, make_lab
from tests.marketplace.factories import ClusterFactory, ListingFactory, hour

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("frozen")]


@pytest.fixture
def sold():
    listing = ListingFactory(cluster=ClusterFactory(node_count=2), node_count=2, starts_at=hour(1), ends_at=hour(25))
    book(lab=make_lab(), listing=listing, nodes=1, starts_at=hour(5), hours=4)
    return listing


def test_the_kept_spans_are_the_definitions(sold):
    # One node whole, the other cut around its sale: three spans.
    assert FreeSpan.objects.filter(listing=sold).count() == 3
    assert free_spans_drift() == []


def test_a_span_missing_or_extra_is_reported(sold):
    span = FreeSpan.objects.filter(listing=sold).order_by("starts_at", "node_id").first()
    FreeSpan.objects.filter(pk=span.pk).delete()
    assert [row[0] for row in free_spans_drift()] == ["missing"]
    FreeSpan.objects.create(
        listing_id=span.listing_id, listing_node_id=span.listing_node_id, node_id=span.node_id,
        starts_at=span.starts_at, ends_at=span.ends_at,
    )  # fmt: skip
    FreeSpan.objects.create(
        listing_id=span.listing_id, listing_node_id=span.listing_node_id, node_id=span.node_id,
        starts_at=hour(30), ends_at=hour(31),
    )  # fmt: skip
    assert [row[0] for row in free_spans_drift()] == ["extra"]
    FreeSpan.objects.filter(starts_at=hour(30)).delete()  # the suite checks the spans after each test


def test_a_rebuild_writes_the_definition(sold):
    FreeSpan.objects.filter(listing=sold).delete()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT broker_freespan_rebuild(ARRAY(SELECT node_id FROM marketplace_listingnode WHERE listing_id = %s),"
            " ARRAY[%s]::bigint[])",
            [sold.pk, sold.pk],
        )
    assert free_spans_drift() == []
    assert FreeSpan.objects.filter(listing=sold).count() == 3
