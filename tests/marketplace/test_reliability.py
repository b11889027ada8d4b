"""Measured reliability (broker.reliability), hand-computed; shown and filtered in search; the
listing's availability promise."""

from datetime import timedelta
from decimal import Decimal

import pytest

from broker.incidents import incident_open
from broker.models import Contract, Incident
from broker.reliability import reliability_measure
from broker.tasks import measure_reliability
from core.errors import InvalidInput
from marketplace.models import Cluster, Listing, Organization
from marketplace.selectors import ListingQuery, listing_search
from marketplace.services import listing_create, listing_update
from tests.marketplace.factories import (
    NOW,
    ClusterFactory,
    ListingFactory,
    OrganizationFactory,
    hour,
    sell,
)


@pytest.fixture
def market():
    """A provider with two clusters and a history of incidents:

    - cluster A, 2 nodes: node 1 failed [NOW-10h, NOW-4h) and again [NOW-6h, NOW-2h) (8 hours as
      one union); node 2 failed from 31 to 29 days ago (24 hours inside the window); a
      degradation (never counted). 32 failed node-hours of 2 x 720.
    - cluster B, 4 nodes: a node sold to three contracts failed 10 minutes ago, still open,
      replaced in each now (600 s each), and one of them delivered late an hour ago (another,
      31 days ago, is outside the window).
    """
    provider = OrganizationFactory()
    lab = OrganizationFactory(lab=True)
    a = ClusterFactory(provider=provider, node_count=2)
    b = ClusterFactory(provider=provider, node_count=4)
    a1, a2 = a.nodes.order_by("id")
    for node, started, resolved, kind in [
        (a1, NOW - timedelta(hours=10), NOW - timedelta(hours=4), "failure"),
        (a1, NOW - timedelta(hours=6), NOW - timedelta(hours=2), "failure"),
        (a2, NOW - timedelta(days=31), NOW - timedelta(days=29), "failure"),
        (a2, NOW - timedelta(hours=5), None, "degraded"),
    ]:
        Incident.objects.create(
            provider=provider, cluster=a, node=node, kind=kind, started_at=started, resolved_at=resolved
        )
    listing_a = ListingFactory(cluster=a, node_count=1, starts_at=hour(1), ends_at=hour(30))
    listing_b = ListingFactory(cluster=b, node_count=3, starts_at=hour(1), ends_at=hour(30))
    contract = sell(listing_b, 1, hour(1), hour(5), lab)
    late = sell(listing_b, 1, hour(6), hour(8), lab)
    Contract.objects.filter(pk=late.pk).update(delivery_late_at=NOW - timedelta(hours=1))
    old = sell(listing_b, 1, hour(9), hour(10), lab)
    Contract.objects.filter(pk=old.pk).update(delivery_late_at=NOW - timedelta(days=31))
    opened = incident_open(
        provider=provider,
        node=contract.allocations.get().node,
        kind="failure",
        started_at=NOW - timedelta(minutes=10),
    )
    assert opened.incident.replacements.count() == 3  # the three contracts, all on that node
    return {"provider": provider, "a": a, "b": b, "listing_a": listing_a, "listing_b": listing_b}


def figures(obj):
    obj.refresh_from_db()
    return (obj.availability_30d, obj.mean_time_to_replace_seconds, obj.late_deliveries_30d)


def test_figures_match_the_hand_computed_ones(market, django_capture_on_commit_callbacks):
    assert reliability_measure(now=NOW) == (
        Cluster.objects.count(),
        Organization.objects.filter(is_provider=True).count(),
    )
    # 100 x (1 - 32 / 1440)
    assert figures(market["a"]) == (Decimal("97.7778"), None, 0)
    # 100 x (1 - 600 / (4 x 720 x 3600))
    assert figures(market["b"]) == (Decimal("99.9942"), 600, 1)
    # 100 x (1 - (32 x 3600 + 600) / (6 x 720 x 3600))
    assert figures(market["provider"]) == (Decimal("99.2554"), 600, 1)
    market["a"].refresh_from_db()
    assert market["a"].reliability_measured_at == NOW


def test_an_incident_measures_its_cluster_and_provider_on_commit(django_capture_on_commit_callbacks):
    provider = OrganizationFactory()
    cluster = ClusterFactory(provider=provider, node_count=2)
    untouched = ClusterFactory(provider=provider, node_count=2)
    with django_capture_on_commit_callbacks(execute=True):
        incident_open(
            provider=provider, node=cluster.nodes.first(), kind="failure", started_at=NOW - timedelta(hours=1)
        )
    # 100 x (1 - 1 / 1440)
    assert figures(cluster)[0] == Decimal("99.9306")
    assert figures(untouched)[0] is None  # not measured yet
    # 100 x (1 - 1 / 2880)
    assert figures(provider)[0] == Decimal("99.9653")


def test_the_hourly_task_measures_everything(market):
    assert measure_reliability() == Cluster.objects.count() + Organization.objects.filter(is_provider=True).count()
    assert figures(market["a"])[0] == Decimal("97.7778")


def search(**filters):
    rows, _ = listing_search(query=ListingQuery(**filters), limit=50, offset=0)
    return {row["id"]: row for row in rows}


def test_search_shows_the_promise_and_both_reliabilities(market):
    reliability_measure(now=NOW)
    row = search()[market["listing_b"].pk]
    assert (row["sla_availability"], row["sla_breach_credit_rate"]) == (Decimal("99.00"), Decimal("1.50"))
    assert (
        row["cluster_availability_30d"],
        row["cluster_mean_time_to_replace_seconds"],
        row["cluster_late_deliveries_30d"],
    ) == (Decimal("99.9942"), 600, 1)
    assert (
        row["provider_availability_30d"],
        row["provider_mean_time_to_replace_seconds"],
        row["provider_late_deliveries_30d"],
    ) == (Decimal("99.2554"), 600, 1)


def test_min_availability_keeps_clusters_at_least_that_available(market):
    unmeasured = ListingFactory(cluster=ClusterFactory(node_count=2), node_count=1, starts_at=hour(1), ends_at=hour(9))
    reliability_measure(cluster_ids=[market["a"].pk, market["b"].pk], provider_ids=[market["provider"].pk], now=NOW)
    everything = {market["listing_a"].pk, market["listing_b"].pk, unmeasured.pk}
    assert set(search()) == everything
    assert set(search(min_availability=Decimal("97.7778"))) == everything
    assert set(search(min_availability=Decimal("97.7779"))) == {market["listing_b"].pk, unmeasured.pk}
    assert set(search(min_availability=Decimal("100"))) == {unmeasured.pk}  # not measured: no failure


def test_a_listing_makes_and_changes_its_promise():
    cluster = ClusterFactory(node_count=2)
    listing = listing_create(
        provider=cluster.provider,
        cluster=cluster,
        node_count=1,
        starts_at=hour(1),
        ends_at=hour(5),
        price_per_gpu_hour=Decimal("2.00"),
        billing_mode="committed",
        sla_availability=Decimal("99.95"),
        sla_breach_credit_rate=Decimal("2"),
    )
    listing.refresh_from_db()
    assert (listing.sla_availability, listing.sla_breach_credit_rate) == (Decimal("99.95"), Decimal("2.00"))
    listing_update(listing=listing, sla_availability=Decimal("50"))
    listing.refresh_from_db()
    assert (listing.sla_availability, listing.sla_breach_credit_rate) == (Decimal("50.00"), Decimal("2.00"))
    contract = sell(listing, 1, hour(1), hour(2), OrganizationFactory(lab=True))
    contract.refresh_from_db()
    assert contract.sla_availability == Decimal("50.00")  # copied when written


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("sla_availability", Decimal("49.99")),
        ("sla_availability", Decimal("100.01")),
        ("sla_availability", Decimal("99.955")),
        ("sla_breach_credit_rate", Decimal("0.99")),
        ("sla_breach_credit_rate", Decimal("10.01")),
        ("sla_breach_credit_rate", Decimal("1.505")),
        ("sla_availability", Decimal("NaN")),
    ],
)
def test_a_promise_out_of_range_is_refused(field, value):
    listing = ListingFactory()
    with pytest.raises(InvalidInput) as refused:
        listing_update(listing=listing, **{field: value})
    assert field in refused.value.fields
    with pytest.raises(InvalidInput):
        listing_create(
            provider=listing.provider,
            cluster=ClusterFactory(provider=listing.provider),
            node_count=1,
            starts_at=hour(1),
            ends_at=hour(5),
            price_per_gpu_hour=Decimal("2.00"),
            billing_mode="committed",
            **{field: value},
        )
    assert Listing.objects.count() == 1


def test_the_api_shows_and_filters_reliability(market, lab_client, provider_client):
    reliability_measure(now=NOW)
    page = lab_client.get("/api/v1/listings").json()["results"]
    shown = {row["id"]: row for row in page}
    row = shown[market["listing_b"].pk]
    assert (row["sla_availability"], row["sla_breach_credit_rate"]) == ("99.00", "1.50")
    assert row["cluster_reliability"] == {
        "availability_30d": "99.9942",
        "mean_time_to_replace_seconds": 600,
        "late_deliveries_30d": 1,
    }
    assert row["provider_reliability"] == {
        "availability_30d": "99.2554",
        "mean_time_to_replace_seconds": 600,
        "late_deliveries_30d": 1,
    }
    # the listing read alone shows the same
    assert lab_client.get(f"/api/v1/listings/{market['listing_b'].pk}").json() == row
    filtered = lab_client.get("/api/v1/listings?min_availability=99.5").json()["results"]
    assert [r["id"] for r in filtered] == [market["listing_b"].pk]
    assert lab_client.get("/api/v1/listings?min_availability=100.1").status_code == 400


def test_the_api_takes_the_promise(provider_client):
    cluster = ClusterFactory(provider=provider_client.organization, node_count=2)
    created = provider_client.post(
        "/api/v1/listings",
        {
            "cluster": cluster.pk,
            "node_count": 1,
            "starts_at": hour(1).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "ends_at": hour(5).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "price_per_gpu_hour": "2.00",
            "billing_mode": "committed",
            "sla_availability": "99.50",
        },
        format="json",
    )
    assert created.status_code == 201, created.content
    assert (created.json()["sla_availability"], created.json()["sla_breach_credit_rate"]) == ("99.50", "1.50")
    patched = provider_client.patch(
        f"/api/v1/listings/{created.json()['id']}", {"sla_breach_credit_rate": "3"}, format="json"
    )
    assert patched.json()["sla_breach_credit_rate"] == "3.00"
    refused = provider_client.patch(
        f"/api/v1/listings/{created.json()['id']}", {"sla_availability": "49.99"}, format="json"
    )
    assert refused.status_code == 400 and "sla_availability" in refused.json()["error"]["fields"]
