"""An open request says why the matching engine left it open, and the price it would fill at now."""

from decimal import Decimal

import pytest

from broker.matching import segment_match
from broker.models import ComputeRequest
from tests.broker.factories import make_lab, request_create
from tests.marketplace.factories import ClusterFactory, ListingFactory, hour

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("frozen")]


def offer(nodes: int, price: str):
    return ListingFactory(
        cluster=ClusterFactory(node_count=nodes),
        node_count=nodes,
        starts_at=hour(1),
        ends_at=hour(25),
        price_per_gpu_hour=Decimal(price),
    )


def matched(request: ComputeRequest) -> ComputeRequest:
    segment_match(gpu_model_id=request.gpu_model_id, wait=True)
    request.refresh_from_db()
    return request


def order(gpus: int, max_price: str = "3.00", **extra) -> ComputeRequest:
    return request_create(
        lab=make_lab(), gpu_count=gpus, starts_at=hour(2), duration_hours=10, max_price=max_price, **extra
    )


def test_a_maximum_under_every_offer_says_the_price_it_would_fill_at():
    request = order(16, max_price="2.00")
    offer(2, "2.60")
    offer(2, "2.45")

    request = matched(request)

    assert (request.status, request.unfilled_reason, request.fill_price_now) == (
        "open",
        "price_too_low",
        Decimal("2.45"),
    )
    assert request.unfilled_detail == (
        "No offer fills it at or under your maximum of 2.0000 per GPU-hour; it would fill now at 2.4500."
    )

    offer(2, "2.30")  # every run answers again
    assert matched(request).fill_price_now == Decimal("2.30")


def test_too_big_for_any_cluster_says_the_most_one_can_deliver():
    request = order(32)
    offer(2, "2.00")
    offer(3, "2.20")

    request = matched(request)

    assert (request.unfilled_reason, request.fill_price_now) == ("no_capacity", None)
    assert request.unfilled_detail == (
        "No listing can deliver 32 h100-sxm-80gb GPUs colocated for that window; "
        "the most any cluster can deliver is 24 GPUs, at up to 2.2000 per GPU-hour."
    )


def test_spread_over_clusters_says_what_all_listings_can_deliver_together():
    request = order(48, colocated=False)
    offer(2, "2.00")
    offer(3, "2.20")

    request = matched(request)

    assert request.unfilled_detail.endswith(
        "the most all listings together can deliver is 40 GPUs, at up to 2.2000 per GPU-hour."
    )


def test_no_listing_on_its_terms():
    request = order(8, slug="b200")
    offer(2, "2.00")  # an H100 listing

    request = matched(request)

    assert request.unfilled_reason == "no_offer"
    assert request.unfilled_detail == (
        "No listing offers 8 b200 GPUs colocated for that window on these terms (committed, whole nodes, 10 hours)."
    )


def test_once_filled_the_reason_is_gone():
    request = order(16, max_price="2.00")
    offer(2, "2.60")
    assert matched(request).unfilled_reason == "price_too_low"

    offer(2, "1.90")
    request = matched(request)

    assert request.status == "filled"
    assert (request.unfilled_reason, request.unfilled_detail, request.fill_price_now) == ("", "", None)
