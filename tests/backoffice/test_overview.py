"""The market overview's figures, on a market small enough to count by hand."""

from datetime import timedelta
from decimal import Decimal

from django.urls import reverse
from django.utils import timezone

from broker.services import compute_request_create, contract_cancel
from core.timeutils import next_hour
from market.index import price_index_catch_up
from marketplace.models import GpuModel
from marketplace.services import listing_update
from tests.backoffice import factories


def _segment(response, slug: str):
    return next(segment for segment in response.context["segments"] if segment.gpu_model.slug == slug)


def test_listed_sold_prices_and_open_requests(operator_client, market, django_assert_max_num_queries):
    # Listed: 4 nodes x 8 GPUs x 120 hours. Sold: 1 node x 8 GPUs x 10 hours at 2.0000.
    contract = factories.contract(lab=market.lab, listing=market.listing, starts_at=next_hour(), hours=10)
    compute_request_create(
        lab=market.lab,
        gpu_model=GpuModel.objects.get(slug="b200"),
        gpu_count=64,
        starts_at=next_hour(),
        duration_hours=24,
        max_price_per_gpu_hour=Decimal("3.0000"),
        billing_mode="committed",
    )

    with django_assert_max_num_queries(9):  # the page, and one query for the price index chart
        response = operator_client.get(reverse("market-overview"))
    assert response.status_code == 200
    h100 = _segment(response, factories.H100)
    assert (h100.listed_gpu_hours, h100.sold_gpu_hours, h100.open_requests) == (3840, 80, 0)
    assert h100.avg_price_7d == h100.avg_price_30d == Decimal("2.0000")
    assert h100.billed_this_month == Decimal("0")
    assert _segment(response, "b200").open_requests == 1
    row = f"<td>{h100.gpu_model.name}</td>\n        <td>3,840</td>\n        <td>80</td>\n        <td>2%</td>"
    assert row in response.content.decode()
    others = [s for s in response.context["segments"] if s.gpu_model.slug not in (factories.H100, "b200")]
    assert all((s.listed_gpu_hours, s.sold_gpu_hours, s.open_requests) == (0, 0, 0) for s in others)

    # A contract cancelled before it starts sells nothing any more.
    contract_cancel(contract=contract, reason="Lab withdrew")
    h100 = _segment(operator_client.get(reverse("market-overview")), factories.H100)
    assert (h100.listed_gpu_hours, h100.sold_gpu_hours) == (3840, 0)


def test_the_overview_needs_a_staff_login(client, db):
    response = client.get(reverse("market-overview"))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))


def test_the_price_index_chart(operator_client, market, frozen):
    """Two days of trades, indexed: a line of the H100's daily VWAP with each day's figures."""
    start = next_hour()
    factories.contract(lab=market.lab, listing=market.listing, starts_at=start + timedelta(hours=30), hours=10)
    frozen.move_to(timezone.now() + timedelta(days=1))
    repriced = listing_update(listing=market.listing, price_per_gpu_hour=Decimal("2.50"))
    factories.contract(lab=market.lab, listing=repriced, starts_at=start + timedelta(hours=50), hours=2)
    factories.contract(lab=market.lab, listing=repriced, starts_at=start + timedelta(hours=60), hours=1, nodes=2)
    frozen.move_to(timezone.now() + timedelta(days=1))
    price_index_catch_up()
    first_day, second_day = [(timezone.now() - timedelta(days=days)).date() for days in (2, 1)]

    response = operator_client.get(reverse("market-overview"))

    page = response.content.decode()
    assert '<svg id="index-chart"' in page
    lines = response.context["index_chart"]["lines"]
    assert [line["gpu_model"].slug for line in lines] == [factories.H100]
    assert [(point["day"], point["vwap"], point["volume"]) for point in lines[0]["points"]] == [
        (first_day, Decimal("2.00"), 80),
        (second_day, Decimal("2.50"), 32),
    ]
    assert len(lines[0]["runs"]) == 1
    name = lines[0]["gpu_model"].name
    assert f"<title>{name} {second_day:%Y-%m-%d}: 2.50 per GPU-hour, 32 GPU-hours</title>" in page


def test_the_price_index_chart_says_when_nothing_is_indexed(operator_client, market):
    response = operator_client.get(reverse("market-overview"))
    assert '<p id="index-chart-empty">' in response.content.decode()
    assert response.context["index_chart"]["lines"] == []
