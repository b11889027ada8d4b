"""Listings through the API: every rule of creation, repricing, pausing and withdrawal."""

import threading
from decimal import Decimal

import pytest
from django.db import IntegrityError, connection, transaction
from rest_framework.test import APIClient

from broker.models import Allocation, Contract
from marketplace.models import Listing, ListingNode, Node
from marketplace.services import organization_set_status
from tests.conftest import assert_error
from tests.marketplace.factories import (
    ClusterFactory,
    ListingFactory,
    contract_for,
    hour,
    iso,
    reserved_nodes,
    sell,
)

pytestmark = pytest.mark.django_db

LISTINGS = "/api/v1/listings"


@pytest.fixture
def cluster(provider_client):
    return ClusterFactory(provider=provider_client.organization, node_count=4)


def listing_payload(cluster, /, **overrides) -> dict:
    return {
        "cluster": cluster.pk,
        "node_count": 2,
        "starts_at": iso(hour(1)),
        "ends_at": iso(hour(25)),
        "price_per_gpu_hour": "2.5000",
        "min_duration_hours": 1,
        "billing_mode": "committed",
    } | overrides


def create(client, cluster, /, **overrides):
    return client.post(LISTINGS, listing_payload(cluster, **overrides), format="json")


def assert_refused(client, cluster, field: str, /, **overrides) -> dict:
    """The request fails naming ``field`` and leaves no listing and no reservation behind."""
    listings, reservations = Listing.objects.count(), ListingNode.objects.count()
    error = assert_error(create(client, cluster, **overrides), 400)
    assert field in error["fields"], error
    assert (Listing.objects.count(), ListingNode.objects.count()) == (listings, reservations)
    return error


class TestCreate:
    def test_creates_listing_reserving_nodes(self, provider_client, cluster):
        response = create(provider_client, cluster)
        assert response.status_code == 201, response.content
        body = response.json()
        assert body["node_count"] == 2
        assert (body["starts_at"], body["ends_at"]) == (iso(hour(1)), iso(hour(25)))
        assert body["price_per_gpu_hour"] == "2.5000"
        assert (body["billing_mode"], body["status"], body["min_duration_hours"]) == ("committed", "active", 1)
        assert (body["available_nodes"], body["available_gpus"]) == (2, 16)
        assert body["provider"] == provider_client.organization.name
        assert body["cluster"]["id"] == cluster.pk
        assert body["cluster"]["gpu_model"] == "h100-sxm-80gb"
        nodes = reserved_nodes(body["id"])
        assert len(nodes) == 2
        assert nodes <= set(cluster.nodes.values_list("id", flat=True))

    def test_metered_listing(self, provider_client, cluster):
        response = create(provider_client, cluster, billing_mode="metered")
        assert response.status_code == 201
        assert response.json()["billing_mode"] == "metered"

    def test_may_start_in_the_current_hour(self, provider_client, cluster):
        response = create(provider_client, cluster, starts_at=iso(hour(0)))
        assert response.status_code == 201, response.content

    def test_a_price_in_whole_cents_is_kept(self, provider_client, cluster):
        response = create(provider_client, cluster, price_per_gpu_hour="2.12")
        assert response.json()["price_per_gpu_hour"] == "2.1200"
        assert Listing.objects.get().price_per_gpu_hour == Decimal("2.12")

    @pytest.mark.parametrize("price", ["2.1234", "0.0049", "0.001"])
    def test_a_price_below_the_cent_tick_is_refused(self, provider_client, cluster, price):
        error = assert_refused(provider_client, cluster, "price_per_gpu_hour", price_per_gpu_hour=price)
        assert "cents" in error["message"]

    def test_a_price_above_the_ceiling_is_refused(self, provider_client, cluster, settings):
        assert_refused(provider_client, cluster, "price_per_gpu_hour", price_per_gpu_hour="99999999.9999")
        assert_refused(provider_client, cluster, "price_per_gpu_hour", price_per_gpu_hour="1000.01")
        assert create(provider_client, cluster, price_per_gpu_hour="1000.00").status_code == 201
        settings.MAX_PRICE_PER_GPU_HOUR = Decimal("5.00")
        assert_refused(provider_client, cluster, "price_per_gpu_hour", price_per_gpu_hour="5.01")

    def test_an_offset_that_is_a_whole_utc_hour_is_accepted(self, provider_client, cluster):
        response = create(provider_client, cluster, starts_at="2031-03-10T15:30:00+05:30")
        assert response.status_code == 201, response.content
        assert response.json()["starts_at"] == iso(hour(1))

    def test_the_whole_cluster_may_be_listed(self, provider_client, cluster):
        assert create(provider_client, cluster, node_count=4).status_code == 201

    def test_a_both_organization_may_list(self, both_client):
        cluster = ClusterFactory(provider=both_client.organization)
        assert create(both_client, cluster).status_code == 201

    @pytest.mark.parametrize(
        "starts_at",
        ["2031-03-10T10:30:00Z", "2031-03-10T10:00:01Z", "2031-03-10T10:00:00.5Z", "2031-03-10T16:00+05:30"],
    )
    def test_start_must_be_a_whole_utc_hour(self, provider_client, cluster, starts_at):
        assert_refused(provider_client, cluster, "starts_at", starts_at=starts_at)

    @pytest.mark.parametrize("ends_at", ["2031-03-11T10:59:00Z", "2031-03-11T10:00:00.001Z"])
    def test_end_must_be_a_whole_utc_hour(self, provider_client, cluster, ends_at):
        assert_refused(provider_client, cluster, "ends_at", ends_at=ends_at)

    @pytest.mark.parametrize("starts_at", [hour(-1), hour(-24 * 400)])
    def test_start_may_not_be_before_the_current_hour(self, provider_client, cluster, starts_at):
        assert_refused(provider_client, cluster, "starts_at", starts_at=iso(starts_at))

    @pytest.mark.parametrize("ends_at", [hour(1), hour(0)])
    def test_end_must_be_after_start(self, provider_client, cluster, ends_at):
        assert_refused(provider_client, cluster, "ends_at", ends_at=iso(ends_at))

    @pytest.mark.parametrize("value", ["tomorrow", "", None, 12])
    def test_unparseable_times_are_400(self, provider_client, cluster, value):
        assert_refused(provider_client, cluster, "starts_at", starts_at=value)
        assert_refused(provider_client, cluster, "ends_at", ends_at=value)

    @pytest.mark.parametrize(
        "price", ["0", "0.0000", "-1", "-0.0001", "2.12345", "0.00001", "1e-5", "NaN", "Infinity", "two", "", None]
    )
    def test_price_must_be_positive_with_at_most_four_places(self, provider_client, cluster, price):
        assert_refused(provider_client, cluster, "price_per_gpu_hour", price_per_gpu_hour=price)

    def test_price_too_large_for_the_column_is_400(self, provider_client, cluster):
        assert_refused(provider_client, cluster, "price_per_gpu_hour", price_per_gpu_hour="1e20")

    @pytest.mark.parametrize("node_count", [0, -1, 1e30, "NaN", 2.5])
    def test_bad_node_count_is_400(self, provider_client, cluster, node_count):
        assert_refused(provider_client, cluster, "node_count", node_count=node_count)

    def test_more_nodes_than_the_cluster_has_is_400(self, provider_client, cluster):
        assert_refused(provider_client, cluster, "node_count", node_count=5)

    def test_nodes_in_maintenance_cannot_be_listed(self, provider_client, cluster):
        Node.objects.filter(pk__in=list(cluster.nodes.values_list("id", flat=True)[:2])).update(
            status=Node.Status.MAINTENANCE
        )
        assert_refused(provider_client, cluster, "node_count", node_count=3)
        assert create(provider_client, cluster, node_count=2).status_code == 201

    def test_overlapping_listings_cannot_exceed_the_cluster(self, provider_client, cluster):
        assert (
            create(provider_client, cluster, node_count=3, starts_at=iso(hour(1)), ends_at=iso(hour(25))).status_code
            == 201
        )
        # Overlaps the first for hours 20-24 only: still one node too many.
        assert_refused(
            provider_client, cluster, "node_count", node_count=2, starts_at=iso(hour(20)), ends_at=iso(hour(44))
        )
        assert (
            create(provider_client, cluster, node_count=1, starts_at=iso(hour(20)), ends_at=iso(hour(44))).status_code
            == 201
        )
        assert_refused(
            provider_client, cluster, "node_count", node_count=1, starts_at=iso(hour(24)), ends_at=iso(hour(25))
        )
        # Back to back with the first: all four nodes are free from hour 25 on, except the one of the second.
        assert (
            create(provider_client, cluster, node_count=3, starts_at=iso(hour(25)), ends_at=iso(hour(49))).status_code
            == 201
        )
        first, second, third = Listing.objects.order_by("id")
        assert not reserved_nodes(first.pk) & reserved_nodes(second.pk)
        assert not reserved_nodes(third.pk) & reserved_nodes(second.pk)

    def test_listings_on_different_clusters_do_not_compete(self, provider_client, cluster):
        other = ClusterFactory(provider=provider_client.organization, node_count=4)
        assert create(provider_client, cluster, node_count=4).status_code == 201
        assert create(provider_client, other, node_count=4).status_code == 201

    def test_another_providers_cluster_is_400(self, provider_client, other_provider_client):
        foreign = ClusterFactory(provider=other_provider_client.organization)
        assert_refused(provider_client, foreign, "cluster")
        assert not ListingNode.objects.filter(node__cluster=foreign).exists()

    def test_unknown_cluster_is_400(self, provider_client, cluster):
        assert_refused(provider_client, cluster, "cluster", cluster=cluster.pk + 1000)
        assert_refused(provider_client, cluster, "cluster", cluster="abc")

    @pytest.mark.parametrize("min_duration_hours", [0, 25, 10**9, "NaN"])
    def test_min_duration_must_fit_the_window(self, provider_client, cluster, min_duration_hours):
        assert_refused(provider_client, cluster, "min_duration_hours", min_duration_hours=min_duration_hours)

    def test_min_duration_may_equal_the_window(self, provider_client, cluster):
        assert create(provider_client, cluster, min_duration_hours=24).status_code == 201

    @pytest.mark.parametrize("billing_mode", ["prepaid", "", None, "Committed"])
    def test_bad_billing_mode_is_400(self, provider_client, cluster, billing_mode):
        assert_refused(provider_client, cluster, "billing_mode", billing_mode=billing_mode)

    def test_missing_fields_are_named(self, provider_client):
        error = assert_error(provider_client.post(LISTINGS, {}, format="json"), 400)
        assert set(error["fields"]) == {
            "cluster",
            "node_count",
            "starts_at",
            "ends_at",
            "price_per_gpu_hour",
            "billing_mode",
        }

    def test_unknown_field_is_400(self, provider_client, cluster):
        assert_refused(provider_client, cluster, "status", status="paused")

    def test_several_broken_rules_are_all_refused(self, provider_client, cluster):
        error = assert_refused(
            provider_client, cluster, "price_per_gpu_hour", price_per_gpu_hour="0.000001", node_count=0
        )
        assert "node_count" in error["fields"]

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("node_count", [2]),
            ("node_count", {"n": 2}),
            ("price_per_gpu_hour", {"amount": "2"}),
            ("price_per_gpu_hour", ["2.5"]),
            ("starts_at", ["2031-03-10T10:00:00Z"]),
            ("cluster", {"id": 1}),
            ("billing_mode", ["committed"]),
        ],
    )
    def test_wrong_types_are_400_naming_the_field(self, provider_client, cluster, field, value):
        assert_refused(provider_client, cluster, field, **{field: value})

    def test_a_window_past_the_horizon_is_refused(self, provider_client, cluster):
        error = assert_refused(provider_client, cluster, "ends_at", ends_at="9999-12-31T23:00:00Z")
        assert "2100-01-01" in error["message"]
        assert_refused(provider_client, cluster, "starts_at", starts_at="9999-12-31T21:00:00Z")

    def test_a_window_up_to_the_horizon_is_accepted(self, provider_client, cluster):
        response = create(provider_client, cluster, starts_at="2099-12-31T22:00:00Z", ends_at="2100-01-01T00:00:00Z")
        assert response.status_code == 201, response.content
        assert response.json()["available_nodes"] == 2

    @pytest.mark.parametrize(
        "starts_at", ["0001-01-01T00:00:00Z", "0001-01-01T00:00:00+14:00", "10000-01-01T00:00:00Z"]
    )
    def test_extreme_starts_are_400(self, provider_client, cluster, starts_at):
        assert_refused(provider_client, cluster, "starts_at", starts_at=starts_at)

    def test_labs_get_403(self, lab_client, cluster):
        assert_error(create(lab_client, cluster), 403, "permission_denied")
        assert not Listing.objects.exists()

    def test_sold_hours_of_a_withdrawn_listing_stay_unavailable(self, provider_client, lab_client):
        cluster = ClusterFactory(provider=provider_client.organization, node_count=2)
        listing = ListingFactory(cluster=cluster, node_count=2, starts_at=hour(1), ends_at=hour(25))
        sell(listing, 1, hour(5), hour(10), lab_client.organization)
        provider_client.post(f"{LISTINGS}/{listing.pk}/withdraw")
        assert_refused(
            provider_client, cluster, "node_count", node_count=2, starts_at=iso(hour(1)), ends_at=iso(hour(25))
        )
        assert_refused(
            provider_client, cluster, "node_count", node_count=2, starts_at=iso(hour(9)), ends_at=iso(hour(11))
        )
        assert (
            create(provider_client, cluster, node_count=1, starts_at=iso(hour(1)), ends_at=iso(hour(25))).status_code
            == 201
        )
        assert (
            create(provider_client, cluster, node_count=1, starts_at=iso(hour(10)), ends_at=iso(hour(25))).status_code
            == 201
        )


class TestRetrieve:
    def test_provider_reads_its_own_listing_in_any_status(self, provider_client, cluster):
        paused = ListingFactory(cluster=cluster, status=Listing.Status.PAUSED)
        body = provider_client.get(f"{LISTINGS}/{paused.pk}").json()
        assert (body["id"], body["status"], body["available_nodes"]) == (paused.pk, "paused", 2)

    def test_lab_reads_active_listings_only(self, lab_client, cluster):
        active = ListingFactory(cluster=cluster, node_count=2)
        paused = ListingFactory(cluster=cluster, node_count=1, status=Listing.Status.PAUSED)
        withdrawn = ListingFactory(cluster=cluster, node_count=1, status=Listing.Status.WITHDRAWN)
        assert lab_client.get(f"{LISTINGS}/{active.pk}").json()["available_nodes"] == 2
        assert_error(lab_client.get(f"{LISTINGS}/{paused.pk}"), 404)
        assert_error(lab_client.get(f"{LISTINGS}/{withdrawn.pk}"), 404)

    def test_lab_cannot_read_a_suspended_providers_listing(self, provider_client, lab_client, cluster):
        listing = ListingFactory(cluster=cluster)
        organization_set_status(organization=provider_client.organization, status="suspended")
        assert_error(lab_client.get(f"{LISTINGS}/{listing.pk}"), 404)

    def test_another_provider_cannot_read_it(self, other_provider_client, cluster):
        listing = ListingFactory(cluster=cluster)
        assert_error(other_provider_client.get(f"{LISTINGS}/{listing.pk}"), 404)


class TestUpdate:
    def test_reprice(self, provider_client, cluster):
        listing = ListingFactory(cluster=cluster)
        response = provider_client.patch(f"{LISTINGS}/{listing.pk}", {"price_per_gpu_hour": "3.75"}, format="json")
        assert response.status_code == 200, response.content
        assert response.json()["price_per_gpu_hour"] == "3.7500"
        listing.refresh_from_db()
        assert listing.price_per_gpu_hour == Decimal("3.75")

    def test_reprice_leaves_sold_contracts_alone(self, provider_client, lab_client, cluster):
        listing = ListingFactory(cluster=cluster, price_per_gpu_hour=Decimal("2.0000"))
        contract = sell(listing, 1, hour(2), hour(12), lab_client.organization)
        assert contract.total_amount == Decimal("160.00")  # 8 GPUs x 10 hours x 2.00
        provider_client.patch(f"{LISTINGS}/{listing.pk}", {"price_per_gpu_hour": "9.99"}, format="json")
        contract.refresh_from_db()
        assert (contract.price_per_gpu_hour, contract.total_amount) == (Decimal("2.0000"), Decimal("160.00"))
        assert contract.allocations.count() == 1
        # What is left is offered at the new price, what is sold stays out.
        found = lab_client.get(LISTINGS, {"starts_at": iso(hour(2)), "ends_at": iso(hour(12))}).json()["results"]
        assert [(item["price_per_gpu_hour"], item["available_nodes"]) for item in found] == [("9.9900", 1)]

    @pytest.mark.parametrize("price", ["0", "-2", "2.00001", "NaN", "", None])
    def test_bad_price_is_400_and_changes_nothing(self, provider_client, cluster, price):
        listing = ListingFactory(cluster=cluster)
        error = assert_error(
            provider_client.patch(f"{LISTINGS}/{listing.pk}", {"price_per_gpu_hour": price}, format="json"), 400
        )
        assert "price_per_gpu_hour" in error["fields"]
        listing.refresh_from_db()
        assert listing.price_per_gpu_hour == Decimal("2.5000")

    def test_a_bad_status_with_a_good_price_changes_nothing(self, provider_client, cluster):
        listing = ListingFactory(cluster=cluster)
        body = {"price_per_gpu_hour": "4", "status": "withdrawn"}
        error = assert_error(provider_client.patch(f"{LISTINGS}/{listing.pk}", body, format="json"), 400)
        assert "status" in error["fields"]
        listing.refresh_from_db()
        assert (listing.price_per_gpu_hour, listing.status) == (Decimal("2.5000"), Listing.Status.ACTIVE)

    def test_pause_and_resume(self, provider_client, lab_client, cluster):
        listing = ListingFactory(cluster=cluster)
        path = f"{LISTINGS}/{listing.pk}"
        response = provider_client.patch(path, {"status": "paused"}, format="json")
        assert response.status_code == 200
        assert response.json()["status"] == "paused"
        assert lab_client.get(LISTINGS).json()["count"] == 0
        # Paused keeps its nodes: no other listing may take them.
        assert_refused(provider_client, cluster, "node_count", node_count=3)
        response = provider_client.patch(path, {"status": "active"}, format="json")
        assert response.json()["status"] == "active"
        assert [item["id"] for item in lab_client.get(LISTINGS).json()["results"]] == [listing.pk]

    def test_pause_leaves_sold_capacity_alone(self, provider_client, lab_client, cluster):
        listing = ListingFactory(cluster=cluster)
        contract = sell(listing, 2, hour(3), hour(5), lab_client.organization)
        provider_client.patch(f"{LISTINGS}/{listing.pk}", {"status": "paused"}, format="json")
        contract.refresh_from_db()
        assert contract.status == Contract.Status.SCHEDULED
        assert contract.allocations.count() == 2

    def test_reprice_and_pause_together(self, provider_client, cluster):
        listing = ListingFactory(cluster=cluster)
        body = {"price_per_gpu_hour": "1.5", "status": "paused"}
        response = provider_client.patch(f"{LISTINGS}/{listing.pk}", body, format="json")
        assert (response.json()["price_per_gpu_hour"], response.json()["status"]) == ("1.5000", "paused")

    def test_an_empty_patch_changes_nothing(self, provider_client, cluster):
        listing = ListingFactory(cluster=cluster)
        before = Listing.objects.values().get(pk=listing.pk)
        response = provider_client.patch(f"{LISTINGS}/{listing.pk}", {}, format="json")
        assert response.status_code == 200 and response.json()["id"] == listing.pk
        assert Listing.objects.values().get(pk=listing.pk) == before

    @pytest.mark.parametrize("body", [{"status": "withdrawn"}, {"status": "sold"}, {"node_count": 1}, {"": 1}])
    def test_bad_update_is_400(self, provider_client, cluster, body):
        listing = ListingFactory(cluster=cluster)
        assert_error(provider_client.patch(f"{LISTINGS}/{listing.pk}", body, format="json"), 400)
        listing.refresh_from_db()
        assert (listing.status, listing.node_count) == (Listing.Status.ACTIVE, 2)

    def test_a_withdrawn_listing_cannot_change(self, provider_client, cluster):
        listing = ListingFactory(cluster=cluster, status=Listing.Status.WITHDRAWN)
        path = f"{LISTINGS}/{listing.pk}"
        assert_error(provider_client.patch(path, {"status": "active"}, format="json"), 409, "invalid_transition")
        assert_error(provider_client.patch(path, {"price_per_gpu_hour": "1"}, format="json"), 409)
        listing.refresh_from_db()
        assert (listing.status, listing.price_per_gpu_hour) == (Listing.Status.WITHDRAWN, Decimal("2.5000"))

    def test_another_providers_listing_is_404(self, other_provider_client, cluster):
        listing = ListingFactory(cluster=cluster)
        path = f"{LISTINGS}/{listing.pk}"
        assert_error(other_provider_client.patch(path, {"status": "paused"}, format="json"), 404)
        assert_error(other_provider_client.post(f"{path}/withdraw"), 404)
        listing.refresh_from_db()
        assert listing.status == Listing.Status.ACTIVE

    def test_others_listings_are_not_found(self, lab_client, cluster):
        # A lab manages only listings of its own (resales, broker.resale): a provider's is a 404.
        listing = ListingFactory(cluster=cluster)
        assert_error(lab_client.patch(f"{LISTINGS}/{listing.pk}", {"status": "paused"}, format="json"), 404)
        assert_error(lab_client.post(f"{LISTINGS}/{listing.pk}/withdraw"), 404)
        listing.refresh_from_db()
        assert listing.status == Listing.Status.ACTIVE


class TestWithdraw:
    def test_withdraw_releases_unsold_nodes_for_a_new_listing(self, provider_client, lab_client, cluster):
        listing = ListingFactory(cluster=cluster, node_count=4)
        assert_refused(provider_client, cluster, "node_count", node_count=1)
        response = provider_client.post(f"{LISTINGS}/{listing.pk}/withdraw")
        assert response.status_code == 200, response.content
        assert response.json()["status"] == "withdrawn"
        assert response.json()["available_nodes"] == 0
        assert not reserved_nodes(listing.pk)
        assert lab_client.get(LISTINGS).json()["count"] == 0
        assert create(provider_client, cluster, node_count=4).status_code == 201

    def test_withdraw_keeps_sold_capacity(self, provider_client, lab_client, cluster):
        listing = ListingFactory(cluster=cluster, node_count=4)
        contract = sell(listing, 2, hour(1), hour(13), lab_client.organization)
        allocations = set(contract.allocations.values_list("id", "node_id", "starts_at", "ends_at"))
        provider_client.post(f"{LISTINGS}/{listing.pk}/withdraw")
        contract.refresh_from_db()
        assert contract.status == Contract.Status.SCHEDULED
        assert (contract.price_per_gpu_hour, contract.total_amount) == (Decimal("2.5000"), Decimal("480.00"))
        assert set(contract.allocations.values_list("id", "node_id", "starts_at", "ends_at")) == allocations
        # Only the two unsold nodes are free for the sold hours; all four after them.
        assert_refused(
            provider_client, cluster, "node_count", node_count=3, starts_at=iso(hour(1)), ends_at=iso(hour(13))
        )
        assert (
            create(provider_client, cluster, node_count=2, starts_at=iso(hour(1)), ends_at=iso(hour(13))).status_code
            == 201
        )
        assert (
            create(provider_client, cluster, node_count=4, starts_at=iso(hour(13)), ends_at=iso(hour(25))).status_code
            == 201
        )

    def test_withdraw_twice_is_harmless(self, provider_client, cluster):
        listing = ListingFactory(cluster=cluster)
        provider_client.post(f"{LISTINGS}/{listing.pk}/withdraw")
        response = provider_client.post(f"{LISTINGS}/{listing.pk}/withdraw")
        assert response.status_code == 200
        assert response.json()["status"] == "withdrawn"

    def test_a_paused_listing_can_be_withdrawn(self, provider_client, cluster):
        listing = ListingFactory(cluster=cluster, status=Listing.Status.PAUSED)
        assert provider_client.post(f"{LISTINGS}/{listing.pk}/withdraw").json()["status"] == "withdrawn"


class TestDatabaseInvariants:
    """PostgreSQL refuses double listing and double selling whatever the code does."""

    def test_a_node_cannot_be_in_two_unreleased_overlapping_listings(self, cluster):
        listing = ListingFactory(cluster=cluster, node_count=1, starts_at=hour(1), ends_at=hour(25))
        other = ListingFactory(cluster=cluster, node_count=1, starts_at=hour(1), ends_at=hour(25))
        node_id = listing.listing_nodes.get().node_id
        with pytest.raises(IntegrityError), transaction.atomic():
            ListingNode.objects.create(listing=other, node_id=node_id, starts_at=hour(24), ends_at=hour(30))
        # Back to back is allowed.
        ListingNode.objects.create(listing=other, node_id=node_id, starts_at=hour(25), ends_at=hour(30))

    def test_a_released_reservation_does_not_block(self, cluster):
        listing = ListingFactory(cluster=cluster, node_count=1, starts_at=hour(1), ends_at=hour(25))
        other = ListingFactory(cluster=cluster, node_count=1, starts_at=hour(1), ends_at=hour(25))
        node_id = listing.listing_nodes.get().node_id
        ListingNode.objects.filter(listing=listing).update(released=True)
        ListingNode.objects.create(listing=other, node_id=node_id, starts_at=hour(1), ends_at=hour(25))

    def test_a_node_cannot_be_sold_twice_for_one_hour(self, cluster, lab_client):
        listing = ListingFactory(cluster=cluster, node_count=1)
        allocation = sell(listing, 1, hour(1), hour(5), lab_client.organization).allocations.get()
        second = contract_for(listing, 1, hour(1), hour(2), lab_client.organization)
        with pytest.raises(IntegrityError), transaction.atomic():
            Allocation.objects.create(
                contract=second,
                listing_node_id=allocation.listing_node_id,
                node_id=allocation.node_id,
                listing=listing,
                starts_at=hour(4),
                ends_at=hour(8),
            )
        # Back to back is allowed, and an empty range (released before it started) overlaps nothing.
        Allocation.objects.create(
            contract=second,
            listing_node_id=allocation.listing_node_id,
            node_id=allocation.node_id,
            listing=listing,
            starts_at=hour(5),
            ends_at=hour(8),
        )
        Allocation.objects.create(
            contract=contract_for(listing, 1, hour(1), hour(2), lab_client.organization),
            listing_node_id=allocation.listing_node_id,
            node_id=allocation.node_id,
            listing=listing,
            starts_at=hour(2),
            ends_at=hour(2),
        )

    def test_an_allocation_must_be_on_the_node_its_listing_reserved(self, cluster, lab_client):
        listing = ListingFactory(cluster=cluster, node_count=1)
        contract = contract_for(listing, 1, hour(1), hour(2), lab_client.organization)
        binding = listing.listing_nodes.get()
        other_node = cluster.nodes.exclude(pk=binding.node_id).first()
        with pytest.raises(IntegrityError), transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
            Allocation.objects.create(
                contract=contract,
                listing_node=binding,
                node=other_node,
                listing=listing,
                starts_at=hour(10),
                ends_at=hour(11),
            )


class TestReleasedAllocations:
    def test_nodes_of_a_contract_cancelled_before_its_start_can_be_listed_again(self, provider_client, lab_client):
        """Cancelling before the start leaves an empty allocation [S, S), which holds no hour."""
        from broker.services import contract_cancel

        cluster = ClusterFactory(provider=provider_client.organization, node_count=2)
        listing = ListingFactory(cluster=cluster, node_count=2, starts_at=hour(1), ends_at=hour(25))
        contract_cancel(contract=sell(listing, 2, hour(10), hour(12), lab_client.organization), reason="changed plans")
        provider_client.post(f"{LISTINGS}/{listing.pk}/withdraw")
        response = create(provider_client, cluster, node_count=2, starts_at=iso(hour(1)), ends_at=iso(hour(25)))
        assert response.status_code == 201, response.content


@pytest.mark.django_db(transaction=True)
def test_concurrent_listings_never_exceed_the_cluster(provider_client):
    """Two providers' requests racing for the same nodes: one wins, the other is a 400, never a 500."""
    cluster = ClusterFactory(provider=provider_client.organization, node_count=4)
    barrier = threading.Barrier(2)
    statuses: list[int] = []

    def attempt() -> None:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {provider_client.secret}")
        try:
            barrier.wait(timeout=10)
            statuses.append(create(client, cluster, node_count=3).status_code)
        finally:
            connection.close()

    threads = [threading.Thread(target=attempt) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(statuses) == [201, 400]
    assert Listing.objects.count() == 1
    assert ListingNode.objects.filter(released=False).count() == 3
