"""POST /api/v1/listings/{id}/book: instant booking at the listing's price."""

from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from broker.models import Allocation, Contract
from marketplace.models import Listing
from marketplace.services import listing_update, listing_withdraw, node_set_status, organization_set_status
from tests.broker.factories import oversell_violations
from tests.conftest import assert_error
from tests.marketplace.factories import ClusterFactory, ListingFactory, hour, iso

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("frozen")]


@pytest.fixture
def listing(provider_client):
    cluster = ClusterFactory(
        provider=provider_client.organization, node_count=3, hostnames=["h-1", "h-2", "h-3"], gpus_per_node=8
    )
    return ListingFactory(
        cluster=cluster,
        node_count=2,
        starts_at=hour(1),
        ends_at=hour(25),
        price_per_gpu_hour=Decimal("1.9900"),
        min_duration_hours=2,
    )


def post_book(client, listing, **overrides):
    data = {"gpu_count": 16, "starts_at": iso(hour(2)), "duration_hours": 4}
    data.update(overrides)
    return client.post(f"/api/v1/listings/{listing.pk}/book", data, format="json")


def test_books_and_answers_201_with_the_contract(lab_client, listing):
    response = post_book(lab_client, listing)
    assert response.status_code == 201, response.json()
    data = response.json()
    assert data["request"] is None
    assert data["listing"] == listing.pk
    assert (data["lab"], data["provider"]) == ("Lab One", "Provider One")
    assert (data["gpu_count"], data["node_count"]) == (16, 2)
    assert (data["starts_at"], data["ends_at"]) == (iso(hour(2)), iso(hour(6)))
    assert data["price_per_gpu_hour"] == "1.9900"
    assert data["billing_mode"] == "committed"
    assert data["total_amount"] == "127.36"  # 16 x 4 x 1.99
    assert data["status"] == "scheduled"
    assert data["nodes"] == ["h-1", "h-2"]  # the listing reserved these two, not h-3
    assert Allocation.objects.filter(contract_id=data["id"]).count() == 2
    assert set(Allocation.objects.filter(contract_id=data["id"]).values_list("listing_id", flat=True)) == {listing.pk}
    assert lab_client.get(f"/api/v1/contracts/{data['id']}").status_code == 200


def test_the_answer_is_the_contract_as_read_back_from_the_database(lab_client, listing):
    """The booking's answer is built from what its statement returned (nothing is read back), and
    reads as the contract does."""
    ListingFactory(cluster=listing.cluster, node_count=1, starts_at=hour(1), ends_at=hour(25))  # h-3, another listing
    first = post_book(lab_client, listing, gpu_count=8, duration_hours=2).json()  # the key's use recorded
    with CaptureQueriesContext(connection) as queries:
        answer = post_book(lab_client, listing, gpu_count=8).json()
    statements = [query["sql"].split()[0] for query in queries.captured_queries]
    # The key, the listing, the booking with its contract.created events (the savepoint is the
    # test's transaction's).
    assert [word for word in statements if word not in ("SAVEPOINT", "RELEASE")] == ["SELECT", "SELECT", "EXECUTE"]
    assert (first["nodes"], answer["nodes"]) == (["h-1"], ["h-2"])
    for booked in (first, answer):
        assert booked == lab_client.get(f"/api/v1/contracts/{booked['id']}").json()


def test_capacity_gone_is_409_in_the_error_shape(lab_client, other_lab_client, listing):
    assert post_book(lab_client, listing, gpu_count=8).status_code == 201
    error = assert_error(post_book(other_lab_client, listing, gpu_count=16), 409, "capacity_unavailable")
    assert "gpu_count" in error["fields"]
    assert post_book(other_lab_client, listing, gpu_count=8).status_code == 201
    assert_error(post_book(other_lab_client, listing, gpu_count=8), 409, "capacity_unavailable")
    assert Contract.objects.count() == 2
    assert oversell_violations() == []


def test_other_hours_of_sold_nodes_stay_bookable(lab_client, other_lab_client, listing):
    assert post_book(lab_client, listing, starts_at=iso(hour(2)), duration_hours=4).status_code == 201
    assert post_book(other_lab_client, listing, starts_at=iso(hour(6)), duration_hours=4).status_code == 201
    assert post_book(other_lab_client, listing, starts_at=iso(hour(1)), duration_hours=2).status_code == 409
    assert oversell_violations() == []


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"starts_at": iso(hour(0))}, "starts_at"),  # before the listing opens
        ({"starts_at": iso(hour(22)), "duration_hours": 4}, "starts_at"),  # runs past its end
        ({"duration_hours": 1}, "duration_hours"),  # under min_duration_hours
        ({"gpu_count": 12}, "gpu_count"),  # not whole nodes of 8
        ({"gpu_count": 0}, "gpu_count"),
        ({"duration_hours": 0}, "duration_hours"),
        ({"starts_at": "2031-03-10T11:30:00Z"}, "starts_at"),
        ({"starts_at": iso(hour(-1))}, "starts_at"),
        ({"starts_at": "9999-12-31T23:00:00Z"}, "starts_at"),  # once an OverflowError
        ({"price": "1.00"}, "price"),
    ],
)
def test_bad_booking_is_400(lab_client, listing, overrides, field):
    error = assert_error(post_book(lab_client, listing, **overrides), 400, "invalid")
    assert field in error["fields"], error
    assert not Contract.objects.exists()


def test_paused_listing_cannot_be_booked(lab_client, listing):
    listing_update(listing=listing, status=Listing.Status.PAUSED)
    response = post_book(lab_client, listing)
    assert response.status_code in (404, 409)
    assert_error(response, response.status_code)
    assert not Contract.objects.exists()


def test_withdrawn_listing_cannot_be_booked(lab_client, listing):
    listing_withdraw(listing=listing)
    assert post_book(lab_client, listing).status_code in (404, 409)
    assert not Contract.objects.exists()


def test_suspended_providers_listing_cannot_be_booked(lab_client, listing):
    organization_set_status(organization=listing.provider, status="suspended")
    assert post_book(lab_client, listing).status_code in (404, 409)
    assert not Contract.objects.exists()


def test_unknown_listing_is_404(lab_client):
    error = assert_error(lab_client.post("/api/v1/listings/999999/book", {}, format="json"), 404, "not_found")
    assert error["message"] == "Not found."  # as every other 404 says it


def test_provider_is_403(provider_client, other_provider_client, listing):
    assert_error(post_book(other_provider_client, listing), 403, "permission_denied")
    assert_error(post_book(provider_client, listing), 403, "permission_denied")


def test_organization_cannot_book_its_own_listing(both_client):
    own = ListingFactory(cluster=ClusterFactory(provider=both_client.organization), starts_at=hour(1))
    error = assert_error(post_book(both_client, own, duration_hours=2), 400, "invalid")
    assert "listing" in error["fields"]


def test_node_in_maintenance_is_not_sold(lab_client, listing):
    cluster = ClusterFactory(node_count=2)
    tight = ListingFactory(cluster=cluster, node_count=2, starts_at=hour(1))
    node_set_status(node=tight.listing_nodes.first().node, status="maintenance")
    assert_error(post_book(lab_client, tight, gpu_count=16, duration_hours=2), 409, "capacity_unavailable")
    assert post_book(lab_client, tight, gpu_count=8, duration_hours=2).status_code == 201


def test_idempotency_key_replays_the_booking(lab_client, listing):
    headers = {"HTTP_IDEMPOTENCY_KEY": "book-1"}
    data = {"gpu_count": 8, "starts_at": iso(hour(2)), "duration_hours": 4}
    url = f"/api/v1/listings/{listing.pk}/book"
    first = lab_client.post(url, data, format="json", **headers)
    second = lab_client.post(url, data, format="json", **headers)
    assert first.status_code == second.status_code == 201
    assert second["Idempotent-Replayed"] == "true"
    assert second.json()["id"] == first.json()["id"]
    assert Contract.objects.count() == 1


def test_booking_survives_losing_its_prepared_statement(lab_client, other_lab_client, listing):
    # A pooler's DISCARD ALL (or a DEALLOCATE) drops the session's prepared statements; the
    # booking prepares it again instead of failing.
    assert post_book(lab_client, listing, gpu_count=8).status_code == 201
    with connection.cursor() as cursor:
        cursor.execute("DEALLOCATE ALL")
    assert post_book(other_lab_client, listing, gpu_count=8).status_code == 201
    assert_error(post_book(other_lab_client, listing, gpu_count=8), 409, "capacity_unavailable")
    assert Contract.objects.count() == 2
    assert oversell_violations() == []


def test_a_booking_never_starts_in_an_hour_already_begun(lab_client, provider_client, frozen):
    """At 09:55 a booking of the 09:00 hour would charge a whole hour for 5 minutes; refused."""
    opened_now = ListingFactory(
        cluster=ClusterFactory(provider=provider_client.organization), node_count=1, starts_at=hour(0), ends_at=hour(4)
    )
    frozen.move_to(hour(0).replace(minute=55))
    error = assert_error(post_book(lab_client, opened_now, gpu_count=8, starts_at=iso(hour(0)), duration_hours=2), 400)
    assert "starts_at" in error["fields"]
    assert post_book(lab_client, opened_now, gpu_count=8, starts_at=iso(hour(1)), duration_hours=2).status_code == 201


def test_what_is_sold_is_billed_to_the_cent(lab_client, provider_client):
    """Prices are whole cents: six 1-hour blocks cost exactly what one 6-hour block costs, and
    the smallest block at the smallest price is 0.08, never 0.00."""
    cheap = ListingFactory(
        cluster=ClusterFactory(provider=provider_client.organization, node_count=2),
        node_count=2,
        starts_at=hour(1),
        ends_at=hour(7),
        price_per_gpu_hour=Decimal("0.01"),
    )
    hourly = [
        post_book(lab_client, cheap, gpu_count=8, starts_at=iso(hour(1 + index)), duration_hours=1).json()
        for index in range(6)
    ]
    block = post_book(lab_client, cheap, gpu_count=8, starts_at=iso(hour(1)), duration_hours=6).json()
    assert [contract["total_amount"] for contract in hourly] == ["0.08"] * 6
    assert block["total_amount"] == "0.48" == str(sum(Decimal(contract["total_amount"]) for contract in hourly))


def test_one_trade_is_bounded_so_every_amount_fits(lab_client, listing):
    # 10^13 at the 1,000.00 ceiling is 10^10 GPU-hours: 1,000,000 GPUs for 10,001 hours is over.
    error = assert_error(post_book(lab_client, listing, gpu_count=1_000_000, duration_hours=10_001), 400, "invalid")
    assert "GPU-hours" in error["message"]
