"""Contracts: what the parties read, and how they start, finish, terminate and get cancelled."""

import json
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from broker.matching import segment_match
from broker.models import Allocation, ComputeRequest, Contract
from broker.services import contract_cancel, contract_terminate
from broker.tasks import advance_lifecycle
from core.errors import InvalidInput, InvalidTransition, NotAllowed
from marketplace.services import listing_withdraw
from tests.broker.factories import book, book_running, make_lab, oversell_violations, request_create
from tests.conftest import assert_error
from tests.marketplace.factories import ClusterFactory, ListingFactory, gpu_model, hour, iso

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("frozen")]

URL = "/api/v1/contracts"
HOSTNAMES = ["gpu-a01", "gpu-a02", "gpu-a03"]


@pytest.fixture
def listing(provider_client):
    cluster = ClusterFactory(
        provider=provider_client.organization, name="Memphis", node_count=3, hostnames=HOSTNAMES, region="us-east-2"
    )
    return ListingFactory(
        cluster=cluster, node_count=3, starts_at=hour(0), ends_at=hour(48), price_per_gpu_hour=Decimal("2.3500")
    )


@pytest.fixture
def metered_listing(provider_client):
    cluster = ClusterFactory(provider=provider_client.organization, node_count=2)
    return ListingFactory(cluster=cluster, node_count=2, starts_at=hour(0), ends_at=hour(48), billing_mode="metered")


def filled_contract(lab, gpu_count=16, starts_at=None, hours=10) -> Contract:
    request = request_create(lab=lab, gpu_count=gpu_count, starts_at=starts_at or hour(2), duration_hours=hours)
    segment_match(gpu_model_id=gpu_model().pk, wait=True)
    return Contract.objects.get(request=request)


class TestRead:
    def test_lab_reads_every_field_with_hostnames(self, lab_client, provider_client, listing):
        contract = filled_contract(lab_client.organization)
        response = lab_client.get(f"{URL}/{contract.pk}")
        assert response.status_code == 200
        data = response.json()
        hostnames = data.pop("nodes")
        created_at = data.pop("created_at")
        assert created_at
        assert data == {
            "id": contract.pk,
            "request": contract.request_id,
            "listing": listing.pk,
            "lab": "Lab One",
            "provider": "Provider One",
            "cluster": {
                "id": listing.cluster_id,
                "name": "Memphis",
                "gpu_model": "h100-sxm-80gb",
                "region": "us-east-2",
                "interconnect": "infiniband",
                "gpus_per_node": 8,
            },
            "gpu_count": 16,
            "node_count": 2,
            "starts_at": iso(hour(2)),
            "ends_at": iso(hour(12)),
            "price_per_gpu_hour": "2.3500",
            "billing_mode": "committed",
            "total_amount": "376.00",  # 16 GPUs x 10 hours x 2.35
            "status": "scheduled",
            "released_at": None,
            "cancel_reason": "",
        }
        assert len(hostnames) == 2
        assert set(hostnames) <= set(HOSTNAMES)
        assert hostnames == sorted(hostnames)

    def test_provider_reads_it_too(self, lab_client, provider_client, listing):
        contract = filled_contract(lab_client.organization)
        listed = provider_client.get(URL).json()
        assert [item["id"] for item in listed["results"]] == [contract.pk]
        assert provider_client.get(f"{URL}/{contract.pk}").json()["lab"] == "Lab One"

    def test_third_parties_get_404(self, lab_client, other_lab_client, other_provider_client, listing):
        contract = filled_contract(lab_client.organization)
        for outsider in (other_lab_client, other_provider_client):
            assert_error(outsider.get(f"{URL}/{contract.pk}"), 404, "not_found")
            assert outsider.get(URL).json()["count"] == 0

    def test_one_contract_per_listing_used(self, lab_client, provider_client):
        first = ListingFactory(
            cluster=ClusterFactory(provider=provider_client.organization), node_count=1, starts_at=hour(0)
        )
        second = ListingFactory(node_count=2, starts_at=hour(0), price_per_gpu_hour=Decimal("3"))
        request = request_create(lab=lab_client.organization, gpu_count=24, starts_at=hour(2), colocated=False)
        segment_match(gpu_model_id=gpu_model().pk, wait=True)
        listed = lab_client.get(URL).json()["results"]
        assert sorted((item["listing"], item["node_count"]) for item in listed) == [(first.pk, 1), (second.pk, 2)]
        assert {item["request"] for item in listed} == {request.pk}
        # Each provider sees only its own side.
        assert [item["listing"] for item in provider_client.get(URL).json()["results"]] == [first.pk]

    def test_lists_leave_the_nodes_out(self, lab_client, provider_client, listing):
        contract = filled_contract(lab_client.organization)
        for party in (lab_client, provider_client):
            [item] = party.get(URL).json()["results"]
            assert "nodes" not in item
            assert item["id"] == contract.pk and item["node_count"] == 2

    def test_list_filters_by_status(self, lab_client, listing):
        contract = filled_contract(lab_client.organization)
        assert lab_client.get(URL, {"status": "scheduled"}).json()["count"] == 1
        assert lab_client.get(URL, {"status": "active"}).json()["count"] == 0
        assert contract.status == "scheduled"


class TestNodes:
    def test_both_parties_page_through_the_nodes_with_their_windows(self, lab_client, provider_client, listing):
        contract = book(lab=lab_client.organization, listing=listing, nodes=3, starts_at=hour(1), hours=4)
        window = {"starts_at": iso(hour(1)), "ends_at": iso(hour(5))}
        for party in (lab_client, provider_client):
            first = party.get(f"{URL}/{contract.pk}/nodes", {"page_size": 2})
            assert first.status_code == 200, first.content
            body = first.json()
            assert body["count"] == 3 and body["previous"] is None and body["next"]
            second = party.get(body["next"]).json()
            nodes = body["results"] + second["results"]
            assert [node["hostname"] for node in nodes] == HOSTNAMES
            assert [node["id"] for node in nodes] == sorted(
                contract.allocations.order_by("node__hostname").values_list("node_id", flat=True)
            )
            assert all({key: node[key] for key in window} == window for node in nodes)
            # The same hostnames as the contract's own answer.
            assert party.get(f"{URL}/{contract.pk}").json()["nodes"] == HOSTNAMES

    def test_a_node_freed_early_shows_its_shortened_window(self, lab_client, metered_listing, frozen):
        contract = book_running(
            lab=lab_client.organization, listing=metered_listing, nodes=2, starts_at=hour(0), hours=6
        )
        assert lab_client.post(f"{URL}/{contract.pk}/terminate").status_code == 200
        nodes = lab_client.get(f"{URL}/{contract.pk}/nodes").json()["results"]
        assert [(node["starts_at"], node["ends_at"]) for node in nodes] == [(iso(hour(0)), iso(hour(1)))] * 2

    def test_others_get_404(self, lab_client, other_lab_client, other_provider_client, anon_client, listing):
        contract = book(lab=lab_client.organization, listing=listing, nodes=1, starts_at=hour(1), hours=4)
        for outsider in (other_lab_client, other_provider_client):
            assert_error(outsider.get(f"{URL}/{contract.pk}/nodes"), 404, "not_found")
        assert_error(anon_client.get(f"{URL}/{contract.pk}/nodes"), 401)
        assert_error(lab_client.get(f"{URL}/{contract.pk + 1000}/nodes"), 404, "not_found")

    def test_contract_filters_do_not_apply_to_its_nodes(self, lab_client, listing):
        contract = book(lab=lab_client.organization, listing=listing, nodes=1, starts_at=hour(1), hours=4)
        response = lab_client.get(f"{URL}/{contract.pk}/nodes", {"status": "completed"})
        assert response.json()["count"] == 1


def test_a_list_item_holds_nothing_per_node(lab_client, provider_client):
    cluster = ClusterFactory(provider=provider_client.organization, node_count=40)
    big = ListingFactory(cluster=cluster, node_count=40, starts_at=hour(0), ends_at=hour(48))
    book(lab=lab_client.organization, listing=big, nodes=40, starts_at=hour(1), hours=2)
    [item] = lab_client.get(URL).json()["results"]
    assert item["node_count"] == 40
    assert [key for key, value in item.items() if isinstance(value, list)] == []
    assert len(json.dumps(item)) < 1000


def test_list_endpoints_run_a_constant_number_of_queries(lab_client, listing):
    def queries(url: str) -> int:
        with CaptureQueriesContext(connection) as captured:
            assert lab_client.get(url).status_code == 200
        return len(captured)

    book(lab=lab_client.organization, listing=listing, nodes=1, starts_at=hour(1), hours=2)
    request_create(lab=lab_client.organization, gpu_count=8, starts_at=hour(2))
    lab_client.get(URL)  # the key's first use of the minute is recorded
    nodes_url = f"{URL}/{Contract.objects.get().pk}/nodes"
    few = queries(URL), queries("/api/v1/compute-requests"), queries(nodes_url)
    book(lab=lab_client.organization, listing=listing, nodes=2, starts_at=hour(1), hours=2)
    contract = book(lab=lab_client.organization, listing=listing, nodes=3, starts_at=hour(5), hours=2)
    for _ in range(3):
        request_create(lab=lab_client.organization, gpu_count=8, starts_at=hour(2))
    filled_contract(lab_client.organization, gpu_count=8, starts_at=hour(20), hours=2)
    nodes_url = f"{URL}/{contract.pk}/nodes"
    assert (queries(URL), queries("/api/v1/compute-requests"), queries(nodes_url)) == few


def test_a_contract_list_reads_no_allocation(lab_client, listing):
    book(lab=lab_client.organization, listing=listing, nodes=3, starts_at=hour(1), hours=2)
    lab_client.get(URL)  # the key's first use of the minute is recorded
    with CaptureQueriesContext(connection) as captured:
        assert lab_client.get(URL).json()["count"] == 1
    assert [query["sql"] for query in captured if "broker_allocation" in query["sql"]] == []


class TestLifecycle:
    def test_active_at_start_completed_at_end(self, lab_client, listing, frozen):
        contract = book(lab=lab_client.organization, listing=listing, nodes=1, starts_at=hour(1), hours=2)
        assert advance_lifecycle.delay().get() == {"expired_requests": 0, "activated": 0, "completed": 0}
        frozen.move_to(hour(1))
        assert advance_lifecycle.delay().get()["activated"] == 1
        assert lab_client.get(f"{URL}/{contract.pk}").json()["status"] == "active"
        frozen.move_to(hour(3) - timedelta(seconds=1))
        assert advance_lifecycle.delay().get()["completed"] == 0
        frozen.move_to(hour(3))
        assert advance_lifecycle.delay().get()["completed"] == 1
        contract.refresh_from_db()
        assert contract.status == Contract.Status.COMPLETED

    def test_contract_that_started_and_ended_between_runs_completes(self, lab_client, listing, frozen):
        contract = book(lab=lab_client.organization, listing=listing, nodes=1, starts_at=hour(1), hours=1)
        frozen.move_to(hour(5))
        assert advance_lifecycle.delay().get()["completed"] == 1
        contract.refresh_from_db()
        assert contract.status == Contract.Status.COMPLETED

    def test_open_request_expires_once_its_start_has_passed(self, lab_client, frozen):
        request = request_create(lab=lab_client.organization, gpu_count=8, starts_at=hour(1))
        later = request_create(lab=lab_client.organization, gpu_count=8, starts_at=hour(2))
        frozen.move_to(hour(1))
        assert advance_lifecycle.delay().get()["expired_requests"] == 0
        frozen.move_to(hour(1) + timedelta(seconds=1))  # filled now, it would charge for a second past
        assert advance_lifecycle.delay().get()["expired_requests"] == 1
        request.refresh_from_db()
        later.refresh_from_db()
        assert (request.status, later.status) == (ComputeRequest.Status.EXPIRED, ComputeRequest.Status.OPEN)
        assert request.closed_at is not None
        assert lab_client.get(f"/api/v1/compute-requests/{request.pk}").json()["status"] == "expired"

    def test_expired_request_is_not_matched(self, lab_client, listing, frozen):
        request = request_create(lab=lab_client.organization, gpu_count=8, starts_at=hour(1))
        frozen.move_to(hour(2))
        advance_lifecycle.delay()
        segment_match(gpu_model_id=gpu_model().pk, wait=True)
        assert not Contract.objects.filter(request=request).exists()

    def test_filled_request_does_not_expire(self, lab_client, listing, frozen):
        contract = filled_contract(lab_client.organization, starts_at=hour(1), hours=2)
        frozen.move_to(hour(4))
        assert advance_lifecycle.delay().get()["expired_requests"] == 0
        assert ComputeRequest.objects.get(pk=contract.request_id).status == "filled"


class TestTerminate:
    def test_metered_contract_frees_its_nodes_from_the_next_hour(self, lab_client, other_lab_client, metered_listing):
        contract = book_running(
            lab=lab_client.organization, listing=metered_listing, nodes=2, starts_at=hour(0), hours=6
        )
        advance_lifecycle.delay()
        search = {"starts_at": iso(hour(1)), "ends_at": iso(hour(6)), "gpu_model": "h100-sxm-80gb"}
        assert other_lab_client.get("/api/v1/listings", search).json()["count"] == 0

        response = lab_client.post(f"{URL}/{contract.pk}/terminate")
        assert response.status_code == 200, response.json()
        assert response.json()["status"] == "terminated"
        assert response.json()["released_at"] == iso(hour(1))  # it is 09:17; free from 10:00
        assert response.json()["nodes"]  # the lab still sees what it used
        assert set(Allocation.objects.filter(contract=contract).values_list("ends_at", flat=True)) == {hour(1)}

        found = other_lab_client.get("/api/v1/listings", search).json()["results"]
        assert [(item["id"], item["available_nodes"]) for item in found] == [(metered_listing.pk, 2)]
        # Nodes are still in use for the current hour (a search without a start begins with it).
        busy_now = {"ends_at": iso(hour(6)), "gpu_model": "h100-sxm-80gb"}
        assert other_lab_client.get("/api/v1/listings", busy_now).json()["count"] == 0
        again = other_lab_client.post(
            f"/api/v1/listings/{metered_listing.pk}/book",
            {"gpu_count": 16, "starts_at": iso(hour(1)), "duration_hours": 5},
            format="json",
        )
        assert again.status_code == 201, again.json()
        assert oversell_violations() == []

    def test_terminated_capacity_is_matched_again(self, lab_client, metered_listing):
        contract = book_running(
            lab=lab_client.organization, listing=metered_listing, nodes=2, starts_at=hour(0), hours=6
        )
        request = request_create(
            lab=make_lab(), gpu_count=16, starts_at=hour(2), duration_hours=3, billing_mode="metered"
        )
        segment_match(gpu_model_id=gpu_model().pk, wait=True)
        assert not Contract.objects.filter(request=request).exists()
        contract_terminate(contract=contract, lab=lab_client.organization)
        segment_match(gpu_model_id=gpu_model().pk, wait=True)
        assert Contract.objects.filter(request=request).count() == 1
        assert oversell_violations() == []

    def test_before_start_frees_the_whole_window(self, lab_client, other_lab_client, metered_listing):
        contract = book(lab=lab_client.organization, listing=metered_listing, nodes=2, starts_at=hour(3), hours=4)
        contract = contract_terminate(contract=contract, lab=lab_client.organization)
        assert contract.released_at == hour(3)
        assert set(Allocation.objects.filter(contract=contract).values_list("starts_at", "ends_at")) == {
            (hour(3), hour(3))
        }
        book(lab=other_lab_client.organization, listing=metered_listing, nodes=2, starts_at=hour(3), hours=4)
        assert oversell_violations() == []

    def test_released_before_start_does_not_block_a_booking_across_its_start(
        self, lab_client, other_lab_client, metered_listing
    ):
        """A released (empty) allocation at 12:00 must not make the node look busy for 11:00-13:00."""
        contract = book(lab=lab_client.organization, listing=metered_listing, nodes=2, starts_at=hour(3), hours=4)
        contract_terminate(contract=contract, lab=lab_client.organization)
        response = other_lab_client.post(
            f"/api/v1/listings/{metered_listing.pk}/book",
            {"gpu_count": 16, "starts_at": iso(hour(2)), "duration_hours": 2},
            format="json",
        )
        assert response.status_code == 201, response.json()

    def test_search_ignores_an_allocation_released_before_start(self, lab_client, other_lab_client, metered_listing):
        contract = book(lab=lab_client.organization, listing=metered_listing, nodes=2, starts_at=hour(3), hours=4)
        contract_terminate(contract=contract, lab=lab_client.organization)
        search = {"starts_at": iso(hour(2)), "ends_at": iso(hour(4)), "gpu_model": "h100-sxm-80gb"}
        found = other_lab_client.get("/api/v1/listings", search).json()["results"]
        assert [(item["id"], item["available_nodes"]) for item in found] == [(metered_listing.pk, 2)]

    def test_nodes_released_before_start_can_be_listed_again(self, lab_client, metered_listing):
        contract = book(lab=lab_client.organization, listing=metered_listing, nodes=2, starts_at=hour(3), hours=4)
        listing_withdraw(listing=metered_listing)
        contract_terminate(contract=contract, lab=lab_client.organization)
        relisted = ListingFactory(cluster=metered_listing.cluster, node_count=2, starts_at=hour(2), ends_at=hour(8))
        assert set(relisted.listing_nodes.values_list("node_id", flat=True)) == set(
            contract.allocations.values_list("node_id", flat=True)
        )

    def test_terminating_twice_is_harmless(self, lab_client, metered_listing):
        contract = book_running(
            lab=lab_client.organization, listing=metered_listing, nodes=1, starts_at=hour(0), hours=6
        )
        first = lab_client.post(f"{URL}/{contract.pk}/terminate").json()
        second = lab_client.post(f"{URL}/{contract.pk}/terminate")
        assert second.status_code == 200
        assert second.json()["released_at"] == first["released_at"]

    def test_committed_contract_is_409(self, lab_client, listing):
        contract = book(lab=lab_client.organization, listing=listing, nodes=1, starts_at=hour(1), hours=4)
        assert_error(lab_client.post(f"{URL}/{contract.pk}/terminate"), 409, "committed_contract")
        contract.refresh_from_db()
        assert contract.status == "scheduled"
        assert set(Allocation.objects.filter(contract=contract).values_list("ends_at", flat=True)) == {hour(5)}

    def test_completed_contract_is_409(self, lab_client, metered_listing, frozen):
        contract = book(lab=lab_client.organization, listing=metered_listing, nodes=1, starts_at=hour(1), hours=1)
        frozen.move_to(hour(3))
        advance_lifecycle.delay()
        assert_error(lab_client.post(f"{URL}/{contract.pk}/terminate"), 409, "invalid_transition")

    def test_only_the_buying_lab_terminates(self, lab_client, other_lab_client, provider_client, metered_listing):
        contract = book(lab=lab_client.organization, listing=metered_listing, nodes=1, starts_at=hour(1), hours=4)
        assert_error(provider_client.post(f"{URL}/{contract.pk}/terminate"), 403)
        assert_error(other_lab_client.post(f"{URL}/{contract.pk}/terminate"), 404)
        with pytest.raises(NotAllowed):
            contract_terminate(contract=contract, lab=other_lab_client.organization)
        contract.refresh_from_db()
        assert contract.status == "scheduled"

    def test_an_organization_that_sold_the_contract_may_not_terminate_it(self, both_client, lab_client):
        cluster = ClusterFactory(provider=both_client.organization, node_count=2)
        sold = ListingFactory(
            cluster=cluster, node_count=2, starts_at=hour(0), ends_at=hour(48), billing_mode="metered"
        )
        contract = book(lab=lab_client.organization, listing=sold, nodes=1, starts_at=hour(1), hours=4)
        error = assert_error(both_client.post(f"{URL}/{contract.pk}/terminate"), 403, "permission_denied")
        assert "sold" in error["message"]
        contract.refresh_from_db()
        assert contract.status == "scheduled"


class TestCancel:
    @pytest.mark.parametrize("reason", ["", "   ", None])
    def test_reason_is_required(self, lab_client, listing, reason):
        contract = book(lab=lab_client.organization, listing=listing, nodes=1, starts_at=hour(1), hours=4)
        with pytest.raises(InvalidInput) as refused:
            contract_cancel(contract=contract, reason=reason)
        assert "reason" in refused.value.fields
        contract.refresh_from_db()
        assert contract.status == "scheduled"

    def test_cancel_with_reason_frees_nodes_from_the_next_hour(self, lab_client, listing):
        contract = book_running(lab=lab_client.organization, listing=listing, nodes=2, starts_at=hour(0), hours=4)
        contract = contract_cancel(contract=contract, reason="  provider power outage ")
        assert (contract.status, contract.cancel_reason, contract.released_at) == (
            "cancelled",
            "provider power outage",
            hour(1),
        )
        assert set(Allocation.objects.filter(contract=contract).values_list("ends_at", flat=True)) == {hour(1)}
        assert lab_client.get(f"{URL}/{contract.pk}").json()["cancel_reason"] == "provider power outage"
        # A committed contract can be cancelled by an operator; its capacity is back on sale.
        book(lab=make_lab(), listing=listing, nodes=3, starts_at=hour(1), hours=3)
        assert oversell_violations() == []

    def test_cancel_twice_keeps_the_first_reason(self, lab_client, listing):
        contract = book(lab=lab_client.organization, listing=listing, nodes=1, starts_at=hour(1), hours=4)
        contract_cancel(contract=contract, reason="first")
        assert contract_cancel(contract=contract, reason="second").cancel_reason == "first"

    def test_completed_contract_cannot_be_cancelled(self, lab_client, listing, frozen):
        contract = book(lab=lab_client.organization, listing=listing, nodes=1, starts_at=hour(1), hours=1)
        frozen.move_to(hour(2))
        advance_lifecycle.delay()
        with pytest.raises(InvalidTransition):
            contract_cancel(contract=contract, reason="too late")
