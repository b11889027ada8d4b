"""The tape: recent trades of a GPU model, newest first, primary or resale, anonymous."""

from datetime import timedelta

import pytest

from broker.services import contract_cancel
from tests.conftest import assert_error
from tests.market.factories import listing, resale_listing, signed
from tests.marketplace.factories import NOW, hour, iso

pytestmark = pytest.mark.django_db

TRADES = "/api/v1/market/h100-sxm-80gb/trades"


def trades(client, **params) -> dict:
    response = client.get(
        TRADES, {key: iso(value) if hasattr(value, "tzinfo") else value for key, value in params.items()}
    )
    assert response.status_code == 200, response.content
    return response.json()


@pytest.fixture
def offer(frozen):
    return listing(starts_at=hour(1), ends_at=hour(100), price="2.00", nodes=4)


def test_trades_newest_first_with_price_gpus_hours_and_kind(frozen, lab_client, offer):
    resold = resale_listing(offer, price="2.60")
    signed(offer, at=NOW - timedelta(hours=3), nodes=2, starts_at=hour(1), ends_at=hour(11))
    signed(resold, at=NOW - timedelta(hours=1), nodes=1, starts_at=hour(20), ends_at=hour(24))
    signed(offer, at=NOW - timedelta(hours=2), nodes=1, starts_at=hour(30), ends_at=hour(31))

    answer = trades(lab_client)

    assert answer["count"] == 3
    assert answer["results"] == [
        {
            "signed_at": iso(NOW - timedelta(hours=1)),
            "price_per_gpu_hour": "2.6000",
            "gpu_count": 8,
            "hours": 4,
            "gpu_hours": 32,
            "starts_at": iso(hour(20)),
            "billing_mode": "committed",
            "resale": True,
        },
        {
            "signed_at": iso(NOW - timedelta(hours=2)),
            "price_per_gpu_hour": "2.0000",
            "gpu_count": 8,
            "hours": 1,
            "gpu_hours": 8,
            "starts_at": iso(hour(30)),
            "billing_mode": "committed",
            "resale": False,
        },
        {
            "signed_at": iso(NOW - timedelta(hours=3)),
            "price_per_gpu_hour": "2.0000",
            "gpu_count": 16,
            "hours": 10,
            "gpu_hours": 160,
            "starts_at": iso(hour(1)),
            "billing_mode": "committed",
            "resale": False,
        },
    ]


def test_trades_signed_at_the_same_moment_are_newest_written_first(frozen, lab_client, offer):
    moment = NOW - timedelta(minutes=5)
    signed(offer, at=moment, nodes=1, starts_at=hour(1), ends_at=hour(2))
    signed(offer, at=moment, nodes=2, starts_at=hour(1), ends_at=hour(2))

    assert [item["gpu_count"] for item in trades(lab_client)["results"]] == [16, 8]


def test_since_defaults_to_24_hours_back(frozen, lab_client, offer):
    signed(offer, at=NOW - timedelta(hours=24, seconds=1), nodes=1, starts_at=hour(1), ends_at=hour(2))
    signed(offer, at=NOW - timedelta(hours=24), nodes=2, starts_at=hour(1), ends_at=hour(2))

    assert [item["gpu_count"] for item in trades(lab_client)["results"]] == [16]
    assert trades(lab_client, since=NOW - timedelta(days=2))["count"] == 2
    assert trades(lab_client, since=NOW - timedelta(hours=1))["count"] == 0


def test_cancelled_contracts_and_other_models_are_no_trades(frozen, lab_client, offer):
    cancelled = signed(offer, at=NOW - timedelta(hours=1), nodes=1, starts_at=hour(1), ends_at=hour(2))
    contract_cancel(contract=cancelled, reason="Entered by mistake")
    other = listing(starts_at=hour(1), ends_at=hour(10), price="3.00", slug="b200")
    signed(other, at=NOW - timedelta(hours=1), nodes=1, starts_at=hour(1), ends_at=hour(2))

    assert trades(lab_client)["count"] == 0
    b200 = lab_client.get("/api/v1/market/b200/trades").json()
    assert [item["price_per_gpu_hour"] for item in b200["results"]] == ["3.0000"]


def test_trades_are_paginated(frozen, lab_client, offer):
    for minutes in range(1, 6):
        signed(offer, at=NOW - timedelta(minutes=minutes), nodes=1, starts_at=hour(1), ends_at=hour(1 + minutes))

    first = trades(lab_client, page_size=2)
    last = trades(lab_client, page_size=2, page=3)

    assert (first["count"], [item["hours"] for item in first["results"]]) == (5, [1, 2])
    assert "page=2" in first["next"]
    assert (last["next"], [item["hours"] for item in last["results"]]) == (None, [5])
    past = trades(lab_client, page_size=2, page=4)
    assert (past["count"], past["next"], past["results"]) == (5, None, [])
    assert "page=3" in past["previous"]


def test_the_trades_name_no_party(frozen, lab_client, offer):
    signed(
        offer, at=NOW - timedelta(minutes=1), nodes=1, starts_at=hour(1), ends_at=hour(2), lab=lab_client.organization
    )

    response = lab_client.get(TRADES)

    assert set(response.json()["results"][0]) == {
        "signed_at",
        "price_per_gpu_hour",
        "gpu_count",
        "hours",
        "gpu_hours",
        "starts_at",
        "billing_mode",
        "resale",
    }
    text = response.content.decode()
    assert lab_client.organization.name not in text and offer.provider.name not in text


@pytest.mark.parametrize(
    "params",
    [
        {"since": "2031-02-07T09:17:22Z"},  # 31 days and a second back
        {"since": "yesterday"},
        {"since": ""},
        {"since": "1999-12-31T23:00:00Z"},
        {"page_size": "0"},
        {"page": "x"},
    ],
)
def test_bad_parameters_are_400_naming_them(frozen, lab_client, params):
    error = assert_error(lab_client.get(TRADES, params), 400, "invalid")
    assert set(params) <= set(error["fields"]), error


def test_since_31_days_back_is_allowed(frozen, lab_client):
    assert trades(lab_client, since="2031-02-07T09:17:23Z")["count"] == 0
