"""Availability search through the API: every filter, what sold capacity does, visibility,
ordering, pagination and a constant number of queries."""

import random
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.db.models import F
from django.test.utils import CaptureQueriesContext

from broker.models import Allocation
from marketplace.models import BillingMode, GpuModel, Interconnect, Listing, Node
from marketplace.services import listing_withdraw, organization_set_status
from tests.conftest import assert_error
from tests.marketplace.factories import (
    ClusterFactory,
    ListingFactory,
    OrganizationFactory,
    gpu_model,
    hour,
    iso,
    sell,
)

pytestmark = pytest.mark.django_db

LISTINGS = "/api/v1/listings"
# Authentication and the search, whose one statement also returns the page's rows; nothing per
# listing, nothing more for a page past the last.
QUERIES_PER_SEARCH = 2


def search(client, **params) -> dict:
    response = client.get(
        LISTINGS, {key: iso(value) if hasattr(value, "tzinfo") else value for key, value in params.items()}
    )
    assert response.status_code == 200, response.content
    return response.json()


def found(client, **params) -> list[int]:
    return [item["id"] for item in search(client, **params)["results"]]


def availability(client, **params) -> dict[int, int]:
    return {item["id"]: item["available_nodes"] for item in search(client, **params)["results"]}


def listing(*, node_count: int = 2, starts_at=None, ends_at=None, cluster=None, **kwargs) -> Listing:
    """A listing over hours 1-25 by default, on a cluster of its own with ``node_count`` nodes."""
    cluster = cluster or ClusterFactory(node_count=node_count)
    return ListingFactory(
        cluster=cluster,
        node_count=node_count,
        starts_at=starts_at or hour(1),
        ends_at=ends_at or hour(25),
        **kwargs,
    )


class TestResults:
    def test_lab_sees_active_listings_of_all_providers(self, lab_client):
        first, second = listing(), listing()
        body = search(lab_client)
        assert body["count"] == 2
        assert {item["id"] for item in body["results"]} == {first.pk, second.pk}
        item = body["results"][0]
        assert item["available_nodes"] == 2
        assert item["available_gpus"] == 16
        assert item["status"] == "active"
        assert set(item["cluster"]) == {"id", "name", "gpu_model", "region", "interconnect", "gpus_per_node"}

    def test_response_is_paginated_shape(self, lab_client):
        assert search(lab_client) == {"count": 0, "next": None, "previous": None, "results": []}


class TestFilters:
    def test_gpu_model(self, lab_client):
        h100 = listing()
        a100 = listing(cluster=ClusterFactory(gpu_model=gpu_model("a100-sxm-80gb"), node_count=2))
        assert found(lab_client, gpu_model="h100-sxm-80gb") == [h100.pk]
        assert found(lab_client, gpu_model="a100-sxm-80gb") == [a100.pk]
        assert found(lab_client, gpu_model="mi300x") == []

    @pytest.mark.parametrize("value", ["no-such-gpu", "H100 SXM", "h100-sxm-80gb\u0000"])
    def test_unknown_gpu_model_is_400_listing_the_catalog(self, lab_client, value):
        listing()
        error = assert_error(lab_client.get(LISTINGS, {"gpu_model": value}), 400, "invalid")
        slugs = list(GpuModel.objects.order_by("slug").values_list("slug", flat=True))
        assert {"h100-sxm-80gb", "mi300x"} <= set(slugs)
        [message] = error["fields"]["gpu_model"]
        assert message.endswith(f"Valid: {', '.join(slugs)} (GET /api/v1/gpu-models).")
        assert message in error["message"]

    def test_region(self, lab_client):
        east = listing(cluster=ClusterFactory(region="us-east-1", node_count=2))
        west = listing(cluster=ClusterFactory(region="us-west-2", node_count=2))
        assert found(lab_client, region="us-east-1") == [east.pk]
        assert found(lab_client, region="us-west-2") == [west.pk]
        assert found(lab_client, region="eu-west-1") == []

    @pytest.mark.parametrize("interconnect", Interconnect.values)
    def test_interconnect(self, lab_client, interconnect):
        made = {
            value: listing(cluster=ClusterFactory(interconnect=value, node_count=2)) for value in Interconnect.values
        }
        assert found(lab_client, interconnect=interconnect) == [made[interconnect].pk]

    def test_billing_mode(self, lab_client):
        committed = listing(billing_mode="committed")
        metered = listing(billing_mode="metered")
        assert found(lab_client, billing_mode="committed") == [committed.pk]
        assert found(lab_client, billing_mode="metered") == [metered.pk]

    def test_max_price_is_inclusive(self, lab_client):
        cheap = listing(price_per_gpu_hour=Decimal("1.99"))
        dear = listing(price_per_gpu_hour=Decimal("2.5000"))
        assert found(lab_client, max_price="2.5") == [cheap.pk, dear.pk]
        assert found(lab_client, max_price="2.49") == [cheap.pk]
        assert found(lab_client, max_price="1.99") == [cheap.pk]
        assert found(lab_client, max_price="1.98") == []

    def test_min_gpus_counts_whole_nodes(self, lab_client):
        eights = listing(node_count=2)  # 2 nodes x 8 GPUs
        fours = listing(cluster=ClusterFactory(gpus_per_node=4, node_count=5), node_count=5)  # 5 x 4
        assert set(found(lab_client, min_gpus=1)) == {eights.pk, fours.pk}
        assert set(found(lab_client, min_gpus=16)) == {eights.pk, fours.pk}
        assert found(lab_client, min_gpus=17) == [fours.pk]
        assert found(lab_client, min_gpus=20) == [fours.pk]
        assert found(lab_client, min_gpus=21) == []

    def test_min_gpus_after_what_is_sold(self, lab_client):
        offer = listing(node_count=2)
        sell(offer, 1, hour(5), hour(6), lab_client.organization)
        window = {"starts_at": hour(1), "ends_at": hour(25)}
        assert availability(lab_client, min_gpus=8, **window) == {offer.pk: 1}
        assert availability(lab_client, min_gpus=9, **window) == {}
        # Outside the sold hour both nodes are free.
        assert availability(lab_client, min_gpus=16, starts_at=hour(6), ends_at=hour(25)) == {offer.pk: 2}

    def test_min_gpus_needs_one_cluster(self, lab_client):
        """Two listings of 16 GPUs are not one of 32: min_gpus is met within one listing's nodes."""
        provider = OrganizationFactory()
        listing(cluster=ClusterFactory(provider=provider, node_count=2))
        listing(cluster=ClusterFactory(provider=provider, node_count=2))
        assert len(found(lab_client, min_gpus=16)) == 2
        assert found(lab_client, min_gpus=32) == []

    def test_filters_combine(self, lab_client):
        wanted = listing(cluster=ClusterFactory(region="eu-west-1", interconnect="roce", node_count=4), node_count=4)
        listing(cluster=ClusterFactory(region="eu-west-1", interconnect="roce", node_count=1), node_count=1)
        listing(cluster=ClusterFactory(region="eu-west-1", interconnect="ethernet", node_count=4), node_count=4)
        listing(cluster=ClusterFactory(region="us-east-1", interconnect="roce", node_count=4), node_count=4)
        params = {"region": "eu-west-1", "interconnect": "roce", "min_gpus": 24, "gpu_model": "h100-sxm-80gb"}
        assert found(lab_client, **params, max_price="3", billing_mode="committed") == [wanted.pk]


class TestWindow:
    def test_window_inside_the_listing(self, lab_client):
        offer = listing(starts_at=hour(10), ends_at=hour(34))
        assert found(lab_client, starts_at=hour(10), ends_at=hour(34)) == [offer.pk]
        assert found(lab_client, starts_at=hour(12), ends_at=hour(20)) == [offer.pk]

    @pytest.mark.parametrize(("start", "end"), [(9, 20), (12, 35), (1, 40), (34, 40), (2, 10)])
    def test_window_not_inside_the_listing_is_not_offered(self, lab_client, start, end):
        listing(starts_at=hour(10), ends_at=hour(34))
        assert found(lab_client, starts_at=hour(start), ends_at=hour(end)) == []

    def test_only_a_start_means_until_the_listing_ends(self, lab_client):
        offer = listing(starts_at=hour(10), ends_at=hour(34))
        assert found(lab_client, starts_at=hour(30)) == [offer.pk]
        assert found(lab_client, starts_at=hour(9)) == []
        assert found(lab_client, starts_at=hour(34)) == []

    def test_only_an_end_means_from_the_listing_start(self, lab_client):
        offer = listing(starts_at=hour(10), ends_at=hour(34))
        assert found(lab_client, ends_at=hour(11)) == [offer.pk]
        assert found(lab_client, ends_at=hour(35)) == []

    def test_search_window_shorter_than_min_duration_is_not_offered(self, lab_client):
        offer = listing(min_duration_hours=10)
        assert found(lab_client, starts_at=hour(1), ends_at=hour(11)) == [offer.pk]
        assert found(lab_client, starts_at=hour(1), ends_at=hour(10)) == []

    def test_remaining_window_shorter_than_min_duration_is_not_offered(self, lab_client):
        """Only a start given: the window is the rest of the listing, 2 hours, under its 10-hour minimum."""
        listing(min_duration_hours=10)
        assert found(lab_client, starts_at=hour(23)) == []

    def test_a_listing_that_already_ended_is_not_offered(self, lab_client, frozen_time):
        listing(starts_at=hour(1), ends_at=hour(3))
        frozen_time.move_to(hour(3))
        assert found(lab_client) == []

    def test_a_running_listing_is_judged_from_the_current_hour(self, lab_client, frozen_time):
        offer = listing(node_count=2, starts_at=hour(0), ends_at=hour(24))
        sell(offer, 2, hour(0), hour(3), lab_client.organization)
        assert availability(lab_client) == {}  # both nodes are sold for the hours ahead
        frozen_time.move_to(hour(3))
        assert availability(lab_client) == {offer.pk: 2}  # what was sold is in the past

    def test_a_window_starting_before_the_current_hour_is_400_naming_the_earliest_start(self, lab_client, frozen_time):
        """Hours already past cannot be delivered: the search says so rather than answer an empty page."""
        listing(starts_at=hour(0), ends_at=hour(24))
        frozen_time.move_to(hour(5))
        error = assert_error(lab_client.get(LISTINGS, {"starts_at": iso(hour(2)), "ends_at": iso(hour(10))}), 400)
        assert error["fields"] == {"starts_at": ["Already begun: the earliest start is 2031-03-10T14:00Z."]}
        assert error["message"] == (
            "The search window has already begun: only hours not yet begun can be bought, from 2031-03-10T14:00Z."
        )

    def test_a_window_in_the_current_hour_has_begun(self, lab_client):
        """At 09:17 the 09:00 hour has begun: the earliest start is 10:00."""
        listing(starts_at=hour(0), ends_at=hour(24))
        error = assert_error(lab_client.get(LISTINGS, {"starts_at": iso(hour(0))}), 400)
        assert error["fields"] == {"starts_at": ["Already begun: the earliest start is 2031-03-10T10:00Z."]}
        assert found(lab_client, starts_at=hour(1)) == [Listing.objects.get().pk]

    def test_a_window_that_is_over_is_400(self, lab_client):
        listing(starts_at=hour(1), ends_at=hour(24))
        error = assert_error(lab_client.get(LISTINGS, {"starts_at": iso(hour(-5)), "ends_at": iso(hour(-2))}), 400)
        assert set(error["fields"]) == {"starts_at", "ends_at"}
        assert error["message"].startswith("The search window is over:")

    def test_an_end_already_past_is_400(self, lab_client):
        listing(starts_at=hour(1), ends_at=hour(24))
        error = assert_error(lab_client.get(LISTINGS, {"ends_at": iso(hour(0))}), 400)
        assert error["fields"] == {"ends_at": ["Already past: it is 2031-03-10T09:17Z."]}

    def test_a_lab_asking_for_paused_listings_of_a_past_window_is_told_too(self, lab_client):
        error = assert_error(lab_client.get(LISTINGS, {"status": "paused", "starts_at": iso(hour(-1))}), 400)
        assert set(error["fields"]) == {"starts_at"}

    def test_a_provider_reads_its_own_listings_over_a_past_window(self, provider_client):
        """A provider's own listings are not a purchase: any window frames them (0 available in the past)."""
        own = listing(cluster=ClusterFactory(provider=provider_client.organization, node_count=2))
        assert availability(provider_client, starts_at=hour(-5), ends_at=hour(-2)) == {own.pk: 0}

    def test_invalid_window_is_400(self, lab_client):
        error = assert_error(lab_client.get(LISTINGS, {"starts_at": iso(hour(5)), "ends_at": iso(hour(5))}), 400)
        assert "ends_at" in error["fields"]
        error = assert_error(lab_client.get(LISTINGS, {"starts_at": iso(hour(5)), "ends_at": iso(hour(4))}), 400)
        assert "ends_at" in error["fields"]


class TestSoldCapacity:
    def test_sold_blocks_reduce_overlapping_windows_only(self, lab_client):
        offer = listing(node_count=4, starts_at=hour(1), ends_at=hour(25))
        sell(offer, 1, hour(10), hour(12), lab_client.organization)
        sell(offer, 2, hour(11), hour(14), lab_client.organization)
        cases = [
            ((1, 10), 4),  # before both
            ((1, 11), 3),  # touches the first
            ((1, 25), 1),  # the whole window: three nodes are sold at hour 11
            ((11, 12), 1),
            ((12, 14), 2),  # the second only
            ((14, 25), 4),  # after both
        ]
        for (start, end), available in cases:
            assert availability(lab_client, starts_at=hour(start), ends_at=hour(end)) == {offer.pk: available}, (
                start,
                end,
            )
        assert availability(lab_client) == {offer.pk: 1}  # no window: the rest of the listing's own

    def test_a_listing_that_cannot_deliver_the_whole_window_is_not_offered(self, lab_client):
        offer = listing(node_count=2)
        sell(offer, 2, hour(20), hour(21), lab_client.organization)
        assert found(lab_client, starts_at=hour(1), ends_at=hour(25)) == []
        assert found(lab_client) == []
        assert availability(lab_client, starts_at=hour(1), ends_at=hour(20)) == {offer.pk: 2}
        assert availability(lab_client, starts_at=hour(21)) == {offer.pk: 2}

    def test_sales_of_another_listing_on_the_same_nodes_count(self, provider_client, lab_client):
        """A node sold under a withdrawn listing and listed again is still sold for those hours."""
        cluster = ClusterFactory(provider=provider_client.organization, node_count=1)
        old = listing(cluster=cluster, node_count=1, starts_at=hour(1), ends_at=hour(25))
        sell(old, 1, hour(5), hour(6), lab_client.organization)
        provider_client.post(f"{LISTINGS}/{old.pk}/withdraw")
        new = listing(cluster=cluster, node_count=1, starts_at=hour(6), ends_at=hour(30))
        assert availability(lab_client) == {new.pk: 1}
        assert found(lab_client, starts_at=hour(4), ends_at=hour(7)) == []

    def test_nodes_in_maintenance_are_not_available(self, provider_client, lab_client):
        cluster = ClusterFactory(provider=provider_client.organization, node_count=2)
        offer = listing(cluster=cluster, node_count=2)
        node = offer.listing_nodes.first().node_id
        provider_client.patch(f"/api/v1/clusters/{cluster.pk}/nodes/{node}", {"status": "maintenance"}, format="json")
        assert availability(lab_client) == {offer.pk: 1}

    def test_an_allocation_released_before_it_started_blocks_nothing(self, lab_client):
        """A contract cancelled before its start keeps an empty allocation [S, S): it overlaps no hour."""
        from broker.services import contract_cancel

        offer = listing(node_count=2)
        contract = sell(offer, 2, hour(10), hour(12), lab_client.organization)
        contract_cancel(contract=contract, reason="lab asked before the start")
        assert {(a.starts_at, a.ends_at) for a in contract.allocations.all()} == {(hour(10), hour(10))}
        assert availability(lab_client, starts_at=hour(1), ends_at=hour(25)) == {offer.pk: 2}
        # Out of service, such a node is blocked as out of service, not taken for sold.
        Node.objects.filter(pk=contract.allocations.first().node_id).update(status=Node.Status.MAINTENANCE)
        assert availability(lab_client, starts_at=hour(1), ends_at=hour(25)) == {offer.pk: 1}

    def test_a_node_sold_twice_in_the_window_counts_once(self, lab_client):
        offer = listing(node_count=3)
        first = sell(offer, 1, hour(2), hour(4), lab_client.organization)
        second = sell(offer, 1, hour(6), hour(8), lab_client.organization)
        assert first.allocations.get().node_id == second.allocations.get().node_id
        assert availability(lab_client, starts_at=hour(1), ends_at=hour(25)) == {offer.pk: 2}
        assert availability(lab_client) == {offer.pk: 2}
        assert availability(lab_client, min_gpus=16) == {offer.pk: 2}
        assert found(lab_client, min_gpus=17) == []

    def test_sales_outside_the_window_do_not_count(self, lab_client):
        """Windows are half-open: a sale ending when the window starts, or starting when it ends, is outside."""
        offer = listing(node_count=3)
        sell(offer, 1, hour(2), hour(5), lab_client.organization)
        sell(offer, 2, hour(10), hour(14), lab_client.organization)
        sell(offer, 1, hour(20), hour(25), lab_client.organization)
        assert availability(lab_client, starts_at=hour(1), ends_at=hour(2)) == {offer.pk: 3}
        assert availability(lab_client, starts_at=hour(5), ends_at=hour(10)) == {offer.pk: 3}
        assert availability(lab_client, starts_at=hour(14), ends_at=hour(20)) == {offer.pk: 3}
        assert availability(lab_client, starts_at=hour(4), ends_at=hour(11)) == {offer.pk: 1}
        assert availability(lab_client, starts_at=hour(13), ends_at=hour(21)) == {offer.pk: 1}

    def test_a_node_sold_and_out_of_service_counts_once(self, lab_client):
        """A sold node that fails (its status set directly, as an operator would) is blocked once, not twice."""
        offer = listing(node_count=4)
        sold_and_out = sell(offer, 1, hour(2), hour(4), lab_client.organization).allocations.get().node_id
        later = sell(offer, 2, hour(10), hour(12), lab_client.organization)
        sold = later.allocations.exclude(node_id=sold_and_out).get().node_id
        out = offer.listing_nodes.exclude(node_id__in=[sold_and_out, sold]).values_list("node_id", flat=True)[0]
        Node.objects.filter(pk__in=[sold_and_out, out]).update(status=Node.Status.MAINTENANCE)
        assert availability(lab_client, starts_at=hour(1), ends_at=hour(25)) == {offer.pk: 1}
        assert availability(lab_client, starts_at=hour(1), ends_at=hour(5)) == {offer.pk: 2}
        assert availability(lab_client, starts_at=hour(5), ends_at=hour(10)) == {offer.pk: 2}
        assert availability(lab_client) == {offer.pk: 1}

    def test_nodes_released_early_are_free_from_the_release(self, lab_client, frozen_time):
        """A terminated metered contract holds its nodes until the release hour only."""
        from broker.services import contract_terminate

        offer = listing(node_count=2, billing_mode=BillingMode.METERED)
        contract = sell(offer, 2, hour(1), hour(10), lab_client.organization)
        frozen_time.move_to(hour(3) + timedelta(minutes=20))
        contract_terminate(contract=contract, lab=lab_client.organization)
        assert {(a.starts_at, a.ends_at) for a in contract.allocations.all()} == {(hour(1), hour(4))}
        assert availability(lab_client, starts_at=hour(4), ends_at=hour(10)) == {offer.pk: 2}
        assert_error(lab_client.get(LISTINGS, {"starts_at": iso(hour(3)), "ends_at": iso(hour(10))}), 400)
        assert availability(lab_client) == {}  # the rest of its window starts at hour 3, still sold
        assert availability(lab_client, starts_at=hour(4)) == {offer.pk: 2}

    def test_each_listing_counts_only_its_own_sales(self, lab_client):
        """Search counts a listing's sales by the allocations' own listing: each names its reservation's."""
        first, second, third = listing(node_count=2), listing(node_count=2), listing(node_count=2)
        sell(second, 1, hour(2), hour(4), lab_client.organization)
        sell(first, 2, hour(2), hour(4), lab_client.organization)
        assert not Allocation.objects.exclude(listing_id=F("listing_node__listing_id")).exists()
        assert availability(lab_client, starts_at=hour(2), ends_at=hour(4)) == {second.pk: 1, third.pk: 2}


class TestVisibility:
    def test_paused_withdrawn_and_suspended_are_hidden_from_labs(self, lab_client):
        visible = listing()
        listing(status=Listing.Status.PAUSED)
        listing(status=Listing.Status.WITHDRAWN)
        suspended = OrganizationFactory()
        listing(cluster=ClusterFactory(provider=suspended, node_count=2))
        organization_set_status(organization=suspended, status="suspended")
        assert found(lab_client) == [visible.pk]

    @pytest.mark.parametrize("status", ["paused", "withdrawn"])
    def test_a_lab_cannot_ask_for_hidden_statuses(self, lab_client, status):
        listing(status=status)
        hidden = search(lab_client, status=status)
        assert hidden["results"] == []
        assert hidden["count"] == 0

    def test_provider_sees_its_own_listings_in_every_status(self, provider_client):
        cluster = ClusterFactory(provider=provider_client.organization, node_count=6)
        active = listing(cluster=cluster, node_count=2)
        paused = listing(cluster=cluster, node_count=2, status=Listing.Status.PAUSED)
        withdrawn = listing(cluster=cluster, node_count=2, status=Listing.Status.WITHDRAWN)
        others = listing()
        body = search(provider_client)
        assert {item["id"]: item["status"] for item in body["results"]} == {
            active.pk: "active",
            paused.pk: "paused",
            withdrawn.pk: "withdrawn",
        }
        assert others.pk not in [item["id"] for item in body["results"]]
        assert {item["id"]: item["available_nodes"] for item in body["results"]}[withdrawn.pk] == 0
        assert found(provider_client, status="paused") == [paused.pk]

    def test_provider_sees_its_own_sold_out_listing(self, provider_client, lab_client):
        cluster = ClusterFactory(provider=provider_client.organization, node_count=1)
        offer = listing(cluster=cluster, node_count=1)
        sell(offer, 1, hour(1), hour(25), lab_client.organization)
        assert availability(provider_client) == {offer.pk: 0}
        assert found(lab_client) == []

    def test_provider_sees_its_own_past_listings(self, provider_client, frozen_time):
        cluster = ClusterFactory(provider=provider_client.organization, node_count=1)
        past = listing(cluster=cluster, node_count=1, starts_at=hour(1), ends_at=hour(3))
        frozen_time.move_to(hour(5))
        assert found(provider_client) == [past.pk]

    def test_both_organization_searches_the_market_unless_mine(self, both_client):
        own_active = listing(cluster=ClusterFactory(provider=both_client.organization, node_count=4))
        own_paused = listing(
            cluster=ClusterFactory(provider=both_client.organization, node_count=2), status=Listing.Status.PAUSED
        )
        other = listing()
        assert set(found(both_client)) == {own_active.pk, other.pk}
        assert set(found(both_client, mine="true")) == {own_active.pk, own_paused.pk}

    def test_a_lab_with_mine_sees_nothing_of_others(self, lab_client):
        listing()
        assert found(lab_client, mine="true") == []

    def test_anonymous_is_401(self, anon_client):
        assert_error(anon_client.get(LISTINGS), 401)


class TestOrderingAndPages:
    def test_sorted_by_price_then_start(self, lab_client):
        late_cheap = listing(price_per_gpu_hour=Decimal("1.5000"), starts_at=hour(5), ends_at=hour(30))
        early_cheap = listing(price_per_gpu_hour=Decimal("1.5000"), starts_at=hour(2), ends_at=hour(30))
        dear = listing(price_per_gpu_hour=Decimal("10.0000"), starts_at=hour(1), ends_at=hour(30))
        mid = listing(price_per_gpu_hour=Decimal("2.0000"), starts_at=hour(8), ends_at=hour(30))
        assert found(lab_client) == [early_cheap.pk, late_cheap.pk, mid.pk, dear.pk]

    def test_price_sorts_as_a_number(self, lab_client):
        ten = listing(price_per_gpu_hour=Decimal("10.0000"))
        nine = listing(price_per_gpu_hour=Decimal("9.0000"))
        assert found(lab_client) == [nine.pk, ten.pk]

    def test_pages(self, lab_client):
        made = [listing(price_per_gpu_hour=Decimal(f"{index + 1}.0000")) for index in range(5)]
        first = search(lab_client, page_size=2)
        assert first["count"] == 5
        assert [item["id"] for item in first["results"]] == [made[0].pk, made[1].pk]
        assert first["previous"] is None
        assert "page=2" in first["next"] and "page_size=2" in first["next"]
        second = lab_client.get(first["next"]).json()
        assert [item["id"] for item in second["results"]] == [made[2].pk, made[3].pk]
        assert second["previous"] is not None
        third = lab_client.get(second["next"]).json()
        assert [item["id"] for item in third["results"]] == [made[4].pk]
        assert third["next"] is None
        assert third["count"] == 5

    def test_a_page_past_the_end_is_empty_with_the_count(self, lab_client):
        listing()
        body = search(lab_client, page=3)
        assert (body["count"], body["results"], body["next"]) == (1, [], None)

    def test_default_page_size_is_50(self, lab_client):
        cluster = ClusterFactory(node_count=60)
        for _ in range(60):
            listing(cluster=cluster, node_count=1)
        body = search(lab_client)
        assert (body["count"], len(body["results"])) == (60, 50)

    def test_pages_keep_the_filters(self, lab_client):
        for _ in range(3):
            listing(cluster=ClusterFactory(region="eu-west-1", node_count=2))
        listing(cluster=ClusterFactory(region="us-east-1", node_count=2))
        first = search(lab_client, region="eu-west-1", page_size=2)
        assert first["count"] == 3
        second = lab_client.get(first["next"]).json()
        assert len(second["results"]) == 1
        assert second["results"][0]["cluster"]["region"] == "eu-west-1"


class TestBadParameters:
    @pytest.mark.parametrize(
        ("param", "value"),
        [
            ("min_gpus", "0"),
            ("min_gpus", "-8"),
            ("min_gpus", "1e30"),
            ("min_gpus", "99999999999999999999999"),
            ("min_gpus", "NaN"),
            ("max_price", "NaN"),
            ("max_price", "cheap"),
            ("max_price", "1.00001"),
            ("interconnect", "nvlink"),
            ("billing_mode", "prepaid"),
            ("starts_at", "soon"),
            ("ends_at", "2031-13-01T00:00:00Z"),
            ("starts_at", "0001-01-01T00:00:00Z"),
            ("ends_at", "9999-12-31T23:00:00Z"),
            ("page", "0"),
            ("page", "x"),
            ("status", "sold"),
            ("cluster", "abc"),
        ],
    )
    def test_bad_parameter_is_400_naming_it(self, lab_client, param, value):
        error = assert_error(lab_client.get(LISTINGS, {param: value}), 400)
        assert param in error["fields"]

    def test_extreme_but_valid_values_are_answered(self, lab_client):
        offer = listing()
        wide = {"starts_at": iso(hour(1)), "ends_at": "2100-01-01T00:00:00Z"}
        assert found(lab_client, **wide) == []
        assert found(lab_client, min_gpus=10_000_000) == []
        assert found(lab_client, max_price="99999.99") == [offer.pk]  # the largest the schema allows
        assert found(lab_client, page_size=500) == [offer.pk]


class TestQueryCount:
    def _queries(self, client, **params) -> tuple[int, dict]:
        search(client, **params)  # the first call of a key records its use: warm it up
        with CaptureQueriesContext(connection) as queries:
            body = search(client, **params)
        return len(queries), body

    def test_queries_do_not_grow_with_results(self, lab_client):
        listing()
        one, body = self._queries(lab_client, page_size=50)
        assert body["count"] == 1
        for index in range(29):
            offer = listing(
                node_count=4,
                price_per_gpu_hour=Decimal("2.0000") + index,
                cluster=ClusterFactory(region=f"r-{index}", node_count=4),
            )
            # Sales, some of them twice on a node, and a node out of service: nothing per listing either.
            sell(offer, 1, hour(2), hour(4), lab_client.organization)
            sell(offer, 1 + index % 2, hour(6), hour(8), lab_client.organization)
            if index % 3 == 0:
                Node.objects.filter(pk=offer.listing_nodes.order_by("-node_id")[0].node_id).update(
                    status=Node.Status.MAINTENANCE
                )
        thirty, body = self._queries(lab_client, page_size=50)
        assert body["count"] == 30
        assert len(body["results"]) == 30
        assert one == thirty == QUERIES_PER_SEARCH

    def test_a_page_past_the_last_costs_no_more(self, lab_client):
        """The statement returns the total even when the page has no listing."""
        listing()
        queries, body = self._queries(lab_client, page=3)
        assert (body["count"], body["results"]) == (1, [])
        assert queries == QUERIES_PER_SEARCH

    def test_queries_do_not_grow_for_a_provider_either(self, provider_client):
        cluster = ClusterFactory(provider=provider_client.organization, node_count=40)
        listing(cluster=cluster, node_count=1)
        one, _ = self._queries(provider_client)
        for index in range(29):
            listing(cluster=cluster, node_count=1, status=Listing.Status.PAUSED if index % 2 else Listing.Status.ACTIVE)
        thirty, body = self._queries(provider_client)
        assert body["count"] == 30
        assert one == thirty == QUERIES_PER_SEARCH


class TestPageRows:
    """The search builds its page straight from the statement's rows (ListingRowSerializer):
    each listing must read exactly as ListingSerializer shows it one by one."""

    def test_a_lab_reads_each_result_as_the_listing_itself_reads(self, lab_client):
        cheap = listing(node_count=3, price_per_gpu_hour=Decimal("1.2300"), billing_mode=BillingMode.METERED)
        cluster = ClusterFactory(gpu_model=gpu_model("mi300x"), gpus_per_node=4, region="eu-west-1", node_count=2)
        dear = listing(cluster=cluster, node_count=2, price_per_gpu_hour=Decimal("7.5000"), min_duration_hours=3)
        sell(cheap, 2, hour(3), hour(5), lab_client.organization)
        Listing.objects.filter(pk=dear.pk).update(created_at=F("created_at") + timedelta(microseconds=654321))
        body = search(lab_client)  # no window: each listing over the rest of its own, as when read alone
        assert [item["id"] for item in body["results"]] == [cheap.pk, dear.pk]
        for item in body["results"]:
            alone = lab_client.get(f"{LISTINGS}/{item['id']}")
            assert alone.status_code == 200
            assert item == alone.json()
            assert list(item) == list(alone.json())  # and in the same order
            assert list(item["cluster"]) == list(alone.json()["cluster"])
        assert body["results"][0]["available_nodes"] == 1
        assert body["results"][0]["available_gpus"] == 8
        assert body["results"][1]["created_at"] == iso(Listing.objects.get(pk=dear.pk).created_at)

    def test_a_provider_reads_its_own_listings_in_every_status_as_each_reads(self, provider_client, lab_client):
        cluster = ClusterFactory(provider=provider_client.organization, node_count=6)
        made = [
            listing(cluster=cluster, node_count=2),
            listing(cluster=cluster, node_count=2, status=Listing.Status.PAUSED),
            listing(cluster=cluster, node_count=2, status=Listing.Status.WITHDRAWN),
        ]
        sell(made[0], 1, hour(2), hour(4), lab_client.organization)
        results = search(provider_client)["results"]
        assert {item["id"] for item in results} == {offer.pk for offer in made}
        for item in results:
            assert item == provider_client.get(f"{LISTINGS}/{item['id']}").json()


class TestAgainstAnOracle:
    """Random markets (sales, sales twice on a node, empty allocations, nodes out of service with
    and without sales, paused and withdrawn listings, a suspended provider) searched over random
    windows: each listing found, its free nodes, and the order must be what a plain Python count
    over the rows says. A wrong free-capacity figure anywhere fails here."""

    WINDOW_HOURS = 48

    @staticmethod
    def expected(*, now_hour, provider=None, min_gpus=None, starts_at=None, ends_at=None) -> list[tuple[int, int]]:
        """(listing, free nodes) as the search should answer, from the rows one at a time."""
        if provider is None:
            listings = Listing.objects.filter(status=Listing.Status.ACTIVE).exclude(provider__status="suspended")
        else:
            listings = Listing.objects.filter(provider=provider)
        found = []
        for offer in listings.select_related("cluster").order_by("price_per_gpu_hour", "starts_at", "id"):
            window_start = starts_at or max(offer.starts_at, now_hour)
            window_end = ends_at or offer.ends_at
            covers = offer.starts_at <= window_start and window_end <= offer.ends_at and window_start < window_end
            blocked = {
                reservation.pk
                for reservation in offer.listing_nodes.filter(released=False).select_related("node")
                if reservation.node.status != Node.Status.IN_SERVICE
            }
            blocked |= {
                allocation.listing_node_id
                for allocation in Allocation.objects.filter(listing_node__listing=offer)
                if allocation.starts_at < window_end
                and window_start < allocation.ends_at
                and allocation.starts_at < allocation.ends_at
            }
            free = offer.node_count - len(blocked) if covers and offer.status != Listing.Status.WITHDRAWN else 0
            if provider is not None:
                found.append((offer.pk, max(free, 0)))
            elif (
                covers
                and window_end - window_start >= timedelta(hours=offer.min_duration_hours)
                and free >= 1
                and (min_gpus is None or free * offer.cluster.gpus_per_node >= min_gpus)
            ):
                found.append((offer.pk, free))
        return found

    def build(self, rng, provider, lab) -> None:
        from broker.services import contract_cancel

        providers = [provider, OrganizationFactory(), OrganizationFactory()]
        for index in range(5):
            cluster = ClusterFactory(
                provider=providers[index % 3], gpus_per_node=rng.choice([4, 8]), node_count=rng.randint(2, 6)
            )
            nodes = list(cluster.nodes.values_list("pk", flat=True))
            cut = rng.randrange(6, self.WINDOW_HOURS - 6)
            for start, end in ((1, cut), (cut, self.WINDOW_HOURS)):
                left = len(nodes)
                while left:
                    size = rng.randint(1, left)
                    left -= size
                    offer = listing(
                        cluster=cluster,
                        node_count=size,
                        starts_at=hour(start),
                        ends_at=hour(end),
                        price_per_gpu_hour=Decimal(rng.randint(100, 400)) / 100,
                        min_duration_hours=rng.choice([1, 1, 1, 6]),
                        status=rng.choice([Listing.Status.ACTIVE] * 6 + [Listing.Status.PAUSED]),
                    )
                    for _ in range(rng.randint(0, 4)):
                        sale_start = rng.randrange(start, end)
                        sale_end = rng.randint(sale_start + 1, min(end, sale_start + 12))
                        try:
                            contract = sell(offer, rng.randint(1, size), hour(sale_start), hour(sale_end), lab)
                        except ValueError:  # not that many nodes free for those hours
                            continue
                        if rng.random() < 0.15:
                            contract_cancel(contract=contract, reason="before its start")
            for node in rng.sample(nodes, rng.randint(0, 2)):
                Node.objects.filter(pk=node).update(status=Node.Status.MAINTENANCE)  # as an operator would
        for offer in rng.sample(list(Listing.objects.filter(status=Listing.Status.ACTIVE)), 2):
            if rng.random() < 0.5:
                listing_withdraw(listing=offer)  # its sold nodes stay sold, the others are released
        if rng.random() < 0.5:
            organization_set_status(organization=providers[2], status="suspended")

    def search_all(self, client, **params) -> list[tuple[int, int]]:
        return [(item["id"], item["available_nodes"]) for item in search(client, page_size=500, **params)["results"]]

    @pytest.mark.parametrize("seed", range(4))
    def test_random_markets(self, provider_client, lab_client, frozen_time, seed):
        rng = random.Random(seed)
        self.build(rng, provider_client.organization, lab_client.organization)
        # Some hours later: running listings are judged from the current hour, past sales no more.
        now_hour = hour(rng.randint(0, 8))
        frozen_time.move_to(now_hour + timedelta(minutes=17))
        provider = provider_client.organization
        assert self.search_all(lab_client) == self.expected(now_hour=now_hour)
        assert self.search_all(provider_client) == self.expected(now_hour=now_hour, provider=provider)
        first = (now_hour - hour(0)) // timedelta(hours=1) + 1
        for _ in range(25):
            start = rng.randrange(first, self.WINDOW_HOURS)
            window = {"starts_at": hour(start)}
            if rng.random() < 0.8:
                window["ends_at"] = hour(rng.randint(start + 1, self.WINDOW_HOURS + 2))
            min_gpus = rng.choice([None, None, 4, 8, 16, 24])
            params = window | ({"min_gpus": min_gpus} if min_gpus else {})
            expected = self.expected(now_hour=now_hour, min_gpus=min_gpus, **window)
            assert self.search_all(lab_client, **params) == expected, params
            expected = self.expected(now_hour=now_hour, provider=provider, **window)
            assert self.search_all(provider_client, **window) == expected, window
