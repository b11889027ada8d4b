"""The order book: asks as a lab's search counts them, bids from open compute requests, both by
price level, for a window and a region; anonymous, and readable with any key."""

from decimal import Decimal

import pytest

from broker.models import ComputeRequest
from marketplace.models import Listing
from marketplace.services import api_key_create, listing_update
from tests.conftest import OrgClient, assert_error
from tests.market.factories import listing, open_request
from tests.marketplace.factories import hour, iso, sell

pytestmark = pytest.mark.django_db

BOOK = "/api/v1/market/h100-sxm-80gb/book"


def book(client, **params) -> dict:
    response = client.get(
        BOOK, {key: iso(value) if hasattr(value, "tzinfo") else value for key, value in params.items()}
    )
    assert response.status_code == 200, response.content
    return response.json()


def levels(side: list[dict]) -> list[tuple[str, int, int]]:
    return [(level["price_per_gpu_hour"], level["gpus"], level["orders"]) for level in side]


def test_asks_are_gpus_free_for_the_whole_window_by_price(frozen, lab_client):
    listing(starts_at=hour(1), ends_at=hour(49), price="2.00")  # 2 nodes x 8 GPUs
    listing(starts_at=hour(1), ends_at=hour(49), price="2.00", nodes=1, gpus_per_node=4)
    half_sold = listing(starts_at=hour(1), ends_at=hour(49), price="2.50")
    sell(half_sold, 1, hour(10), hour(12), lab_client.organization)  # one node sold inside the window
    sold_out = listing(starts_at=hour(1), ends_at=hour(49), price="1.50")
    sell(sold_out, 2, hour(11), hour(12), lab_client.organization)
    listing(starts_at=hour(1), ends_at=hour(49), price="1.00", status=Listing.Status.PAUSED)
    listing(starts_at=hour(1), ends_at=hour(49), price="1.10", slug="b200")  # another model
    listing(starts_at=hour(1), ends_at=hour(49), price="1.20", min_duration_hours=48)  # too long for the window

    answer = book(lab_client, starts_at=hour(2), ends_at=hour(26))

    assert levels(answer["asks"]) == [("2.0000", 20, 2), ("2.5000", 8, 1)]
    # A sale outside the window does not count against it.
    assert levels(book(lab_client, starts_at=hour(12), ends_at=hour(36))["asks"]) == [
        ("1.5000", 16, 1),
        ("2.0000", 20, 2),
        ("2.5000", 16, 1),
    ]


def test_asks_cover_the_whole_window(frozen, lab_client):
    listing(starts_at=hour(1), ends_at=hour(10), price="2.00")
    listing(starts_at=hour(5), ends_at=hour(30), price="3.00")

    assert levels(book(lab_client, starts_at=hour(2), ends_at=hour(8))["asks"]) == [("2.0000", 16, 1)]
    assert levels(book(lab_client, starts_at=hour(6), ends_at=hour(9))["asks"]) == [
        ("2.0000", 16, 1),
        ("3.0000", 16, 1),
    ]
    assert book(lab_client, starts_at=hour(8), ends_at=hour(12))["asks"][0]["price_per_gpu_hour"] == "3.0000"


def test_bids_are_open_requests_wanting_an_hour_of_the_window_by_limit_price(frozen, lab_client):
    open_request(gpus=16, price="3.00", starts_at=hour(2), ends_at=hour(6))
    open_request(gpus=32, price="3.00", starts_at=hour(5), ends_at=hour(30))
    open_request(gpus=8, price="2.80", starts_at=hour(1), ends_at=hour(3))
    open_request(gpus=64, price="3.50", starts_at=hour(10), ends_at=hour(12))  # after the window
    open_request(gpus=64, price="3.60", starts_at=hour(2), ends_at=hour(4), status=ComputeRequest.Status.FILLED)
    open_request(gpus=64, price="3.70", starts_at=hour(2), ends_at=hour(4), status=ComputeRequest.Status.CANCELLED)
    open_request(gpus=64, price="3.80", starts_at=hour(2), ends_at=hour(4), slug="b200")

    answer = book(lab_client, starts_at=hour(2), ends_at=hour(6))

    assert levels(answer["bids"]) == [("3.0000", 48, 2), ("2.8000", 8, 1)]


def test_a_request_whose_start_has_begun_is_no_bid(frozen, lab_client):
    open_request(gpus=16, price="3.00", starts_at=hour(0), ends_at=hour(6))  # 09:00, begun at 09:17

    assert book(lab_client, starts_at=hour(1), ends_at=hour(2))["bids"] == []


def test_the_region_filters_both_sides(frozen, lab_client):
    listing(starts_at=hour(1), ends_at=hour(10), price="2.00", region="eu-west-1")
    listing(starts_at=hour(1), ends_at=hour(10), price="2.10", region="us-south-1")
    open_request(gpus=8, price="1.90", starts_at=hour(1), ends_at=hour(2), region="eu-west-1")
    open_request(gpus=16, price="1.80", starts_at=hour(1), ends_at=hour(2))  # any region
    open_request(gpus=32, price="1.70", starts_at=hour(1), ends_at=hour(2), region="us-south-1")

    eu = book(lab_client, starts_at=hour(1), ends_at=hour(2), region="eu-west-1")
    everywhere = book(lab_client, starts_at=hour(1), ends_at=hour(2))

    assert (eu["region"], levels(eu["asks"]), levels(eu["bids"])) == (
        "eu-west-1",
        [("2.0000", 16, 1)],
        [("1.9000", 8, 1), ("1.8000", 16, 1)],
    )
    assert everywhere["region"] is None
    assert [level["price_per_gpu_hour"] for level in everywhere["asks"]] == ["2.0000", "2.1000"]
    assert [level["price_per_gpu_hour"] for level in everywhere["bids"]] == ["1.9000", "1.8000", "1.7000"]


def test_levels_keeps_the_best_prices_of_each_side(frozen, lab_client):
    for price in ("2.00", "2.10", "2.20"):
        listing(starts_at=hour(1), ends_at=hour(10), price=price)
        open_request(gpus=8, price=price, starts_at=hour(1), ends_at=hour(2))

    answer = book(lab_client, starts_at=hour(1), ends_at=hour(2), levels=2)

    assert [level["price_per_gpu_hour"] for level in answer["asks"]] == ["2.0000", "2.1000"]
    assert [level["price_per_gpu_hour"] for level in answer["bids"]] == ["2.2000", "2.1000"]


def test_the_window_defaults_to_the_next_hour(frozen, lab_client):
    listing(starts_at=hour(1), ends_at=hour(3), price="2.00")

    answer = book(lab_client)

    assert (answer["starts_at"], answer["ends_at"]) == (iso(hour(1)), iso(hour(2)))
    assert levels(answer["asks"]) == [("2.0000", 16, 1)]


def test_the_book_is_anonymous(frozen, lab_client):
    offer = listing(starts_at=hour(1), ends_at=hour(10), price="2.00")
    request = open_request(gpus=8, price="1.90", starts_at=hour(1), ends_at=hour(2), lab=lab_client.organization)

    response = lab_client.get(BOOK, {"starts_at": iso(hour(1)), "ends_at": iso(hour(2))})

    body = response.json()
    assert set(body) == {"gpu_model", "region", "starts_at", "ends_at", "asks", "bids"}
    assert {key for side in ("asks", "bids") for level in body[side] for key in level} == {
        "price_per_gpu_hour",
        "gpus",
        "orders",
    }
    text = response.content.decode()
    for name in (offer.provider.name, offer.cluster.name, lab_client.organization.name):
        assert name not in text
    assert f'"id": {offer.pk}' not in text and f'"id": {request.pk}' not in text


def test_any_key_reads_it(frozen, provider_client, both_client):
    listing(starts_at=hour(1), ends_at=hour(10), price="2.00")
    read_only = OrgClient()
    issued = api_key_create(organization=provider_client.organization, name="ro", scope="read_only")
    read_only.credentials(HTTP_AUTHORIZATION=f"Bearer {issued.secret}")

    for client in (provider_client, both_client, read_only):
        assert levels(book(client)["asks"]) == [("2.0000", 16, 1)]


def test_a_repriced_listing_moves_to_its_new_level(frozen, lab_client):
    offer = listing(starts_at=hour(1), ends_at=hour(10), price="2.00")
    listing_update(listing=offer, price_per_gpu_hour=Decimal("2.40"))

    assert levels(book(lab_client)["asks"]) == [("2.4000", 16, 1)]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"starts_at": "2031-03-10T10:30:00Z"}, "starts_at"),
        ({"starts_at": "2031-03-10T10:00:00Z", "ends_at": "2031-03-10T11:15:00Z"}, "ends_at"),
        ({"starts_at": "2031-03-10T09:00:00Z"}, "starts_at"),  # begun at 09:17
        ({"starts_at": "2031-03-10T12:00:00Z", "ends_at": "2031-03-10T11:00:00Z"}, "ends_at"),
        ({"starts_at": "2031-03-10T12:00:00Z", "ends_at": "2031-03-10T12:00:00Z"}, "ends_at"),
        ({"starts_at": "2031-03-10T12:00:00Z", "ends_at": "2100-01-01T01:00:00Z"}, "ends_at"),
        ({"starts_at": "2031-03-10T12:00:00Z", "ends_at": "2040-01-01T00:00:00Z"}, "ends_at"),  # over 3 years
        ({"starts_at": "tomorrow"}, "starts_at"),
        ({"region": "EU West"}, "region"),
        ({"region": ""}, "region"),
        ({"levels": "0"}, "levels"),
        ({"levels": "501"}, "levels"),
        ({"levels": "ten"}, "levels"),
    ],
)
def test_bad_parameters_are_400_naming_them(frozen, lab_client, params, field):
    error = assert_error(lab_client.get(BOOK, params), 400, "invalid")
    assert field in error["fields"], error
