"""Never oversell: racing bookers and matchers, and the database's own refusal of a double sale."""

from datetime import timedelta

import pytest
from django.db import IntegrityError, connection, transaction

from broker.matching import segment_match
from broker.models import Allocation, ComputeRequest, Contract
from marketplace.models import ListingNode, Node
from tests.broker.factories import book, make_lab, oversell_violations, request_create, run_at_once, sold_nodes
from tests.conftest import make_client
from tests.marketplace.factories import ClusterFactory, ListingFactory, gpu_model, hour, iso

pytestmark = pytest.mark.usefixtures("frozen")

BOOKERS = 16
ROUNDS = 5
WINDOW_HOURS = 4


def booking_call(client, listing, starts_at, gpu_count):
    def call():
        return client.post(
            f"/api/v1/listings/{listing.pk}/book",
            {"gpu_count": gpu_count, "starts_at": iso(starts_at), "duration_hours": WINDOW_HOURS},
            format="json",
        )

    return call


def race_bookers_for_the_last_nodes(clients, round_: int) -> None:
    """Sell 5 of 8 nodes, then let every client try to book one of the last 3 at once."""
    listing = ListingFactory(
        cluster=ClusterFactory(node_count=8),
        node_count=8,
        starts_at=hour(1 + 10 * round_),
        ends_at=hour(9 + 10 * round_),
    )
    starts_at = hour(2 + 10 * round_)
    book(lab=make_lab(), listing=listing, nodes=5, starts_at=starts_at, hours=WINDOW_HOURS)
    available = 3

    responses = run_at_once(*(booking_call(client, listing, starts_at, 8) for client in clients))

    failures = [r for r in responses if isinstance(r, BaseException)]
    assert not failures, failures
    statuses = sorted(response.status_code for response in responses)
    assert statuses == [201] * available + [409] * (len(clients) - available), statuses
    for response in responses:
        if response.status_code == 409:
            assert response.json()["error"]["code"] == "capacity_unavailable"
    winners = [r.json() for r in responses if r.status_code == 201]
    assert len({host for contract in winners for host in contract["nodes"]}) == available
    assert sold_nodes(listing, starts_at, starts_at + timedelta(hours=WINDOW_HOURS)) == 8
    assert Contract.objects.filter(listing=listing).count() == 1 + available
    assert oversell_violations() == []


@pytest.fixture
def lab_clients(transactional_db):
    return [make_client(f"Racer {index}", "lab") for index in range(BOOKERS)]


@pytest.mark.django_db(transaction=True)
def test_bookers_race_for_the_last_nodes(lab_clients):
    for round_ in range(ROUNDS):
        race_bookers_for_the_last_nodes(lab_clients, round_)


def race_bookers_against_the_matcher(clients, round_: int) -> None:
    """Open requests and instant bookers want 1 node each of a 6-node listing, all at once."""
    starts_at = hour(2 + 10 * round_)
    requesters = [make_lab() for _ in range(8)]
    # Created before the listing, so the matching run their commit queues finds nothing yet.
    requests = [request_create(lab=lab, gpu_count=8, starts_at=starts_at, duration_hours=4) for lab in requesters]
    assert not Contract.objects.filter(request__in=requests).exists()
    listing = ListingFactory(
        cluster=ClusterFactory(node_count=6),
        node_count=6,
        starts_at=hour(1 + 10 * round_),
        ends_at=hour(9 + 10 * round_),
    )
    gpu_model_id = gpu_model().pk

    def matcher():
        return segment_match(gpu_model_id=gpu_model_id, wait=True)

    calls = [booking_call(client, listing, starts_at, 8) for client in clients]
    calls[3:3] = [matcher]
    calls[9:9] = [matcher]
    results = run_at_once(*calls)

    failures = [r for r in results if isinstance(r, BaseException)]
    assert not failures, failures
    responses = [r for r in results if hasattr(r, "status_code")]
    assert {r.status_code for r in responses} <= {201, 409}, [r.json() for r in responses]
    booked = sum(r.status_code == 201 for r in responses)
    filled = ComputeRequest.objects.filter(pk__in=[r.pk for r in requests], status="filled").count()
    assert booked + filled == 6, (booked, filled)
    assert Contract.objects.filter(request__in=requests).count() == filled
    assert sold_nodes(listing, starts_at, starts_at + timedelta(hours=4)) == 6
    assert oversell_violations() == []


@pytest.mark.django_db(transaction=True)
def test_bookers_race_the_matching_engine(lab_clients):
    """The engine and the bookers never sell a node twice."""
    for round_ in range(ROUNDS):
        race_bookers_against_the_matcher(lab_clients[:12], round_)


@pytest.mark.django_db(transaction=True)
def test_bookings_of_different_listings_on_shared_nodes_do_not_collide(lab_clients):
    """Two listings of one node for back-to-back windows: bookers of both race on the boundary."""
    cluster = ClusterFactory(node_count=2)
    early = ListingFactory(cluster=cluster, node_count=2, starts_at=hour(1), ends_at=hour(5))
    late = ListingFactory(cluster=cluster, node_count=2, starts_at=hour(5), ends_at=hour(9))
    calls = []
    for index, client in enumerate(lab_clients):
        target = early if index % 2 else late
        calls.append(booking_call(client, target, target.starts_at, 8))
    responses = run_at_once(*calls)
    assert sorted(r.status_code for r in responses) == [201] * 4 + [409] * (len(lab_clients) - 4)
    assert oversell_violations() == []


@pytest.mark.django_db
class TestDatabaseRefusesDoubleSale:
    """The constraints of broker/migrations/0002 and 0005, whatever the services do."""

    @pytest.fixture
    def sold(self):
        listing = ListingFactory(cluster=ClusterFactory(node_count=3), node_count=2, starts_at=hour(1))
        contract = book(lab=make_lab(), listing=listing, nodes=1, starts_at=hour(2), hours=4)
        return contract, contract.allocations.get()

    def second_contract(self, contract: Contract) -> Contract:
        contract.pk = None
        contract.lab = make_lab()
        contract.save()
        return contract

    def allocate(self, contract, binding: ListingNode, node: Node, starts_at, ends_at, listing=None) -> Allocation:
        return Allocation.objects.create(
            contract=contract,
            listing_node=binding,
            node=node,
            listing=listing or binding.listing,
            starts_at=starts_at,
            ends_at=ends_at,
        )

    def test_overlapping_allocation_of_a_node_is_refused(self, sold):
        contract, allocation = sold
        other = self.second_contract(contract)
        with pytest.raises(IntegrityError, match="allocation_node_no_overlap"), transaction.atomic():
            self.allocate(other, allocation.listing_node, allocation.node, hour(5), hour(8))
        with pytest.raises(IntegrityError, match="allocation_node_no_overlap"), transaction.atomic():
            self.allocate(other, allocation.listing_node, allocation.node, hour(3), hour(4))
        assert Allocation.objects.filter(node=allocation.node).count() == 1

    def test_adjacent_and_empty_allocations_are_allowed(self, sold):
        contract, allocation = sold
        with transaction.atomic():
            self.allocate(self.second_contract(contract), allocation.listing_node, allocation.node, hour(6), hour(8))
            self.allocate(self.second_contract(contract), allocation.listing_node, allocation.node, hour(4), hour(4))
        assert Allocation.objects.filter(node=allocation.node).count() == 3

    def test_allocation_of_a_node_its_listing_did_not_reserve_is_refused(self, sold):
        contract, allocation = sold
        stranger = Node.objects.filter(cluster=contract.cluster).exclude(listing_nodes__listing=contract.listing).get()
        with pytest.raises(IntegrityError, match="allocation_node_is_listing_node"), transaction.atomic():
            self.allocate(self.second_contract(contract), allocation.listing_node, stranger, hour(10), hour(12))
            with connection.cursor() as cursor:
                cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        assert not Allocation.objects.filter(node=stranger).exists()

    def test_allocation_of_another_reserved_node_is_refused(self, sold):
        contract, allocation = sold
        sibling = contract.listing.listing_nodes.exclude(pk=allocation.listing_node_id).get()
        with pytest.raises(IntegrityError, match="allocation_node_is_listing_node"), transaction.atomic():
            self.allocate(self.second_contract(contract), allocation.listing_node, sibling.node, hour(10), hour(12))
            with connection.cursor() as cursor:
                cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")

    def test_allocation_naming_another_listing_than_its_reservation_is_refused(self, sold):
        """Search counts a listing's sales by the allocation's listing: it must be its reservation's."""
        contract, allocation = sold
        other = ListingFactory(cluster=contract.cluster, node_count=1, starts_at=hour(1))
        for binding, listing in ((allocation.listing_node, other), (other.listing_nodes.get(), contract.listing)):
            with pytest.raises(IntegrityError, match="allocation_listing_is_listing_nodes"), transaction.atomic():
                self.allocate(self.second_contract(contract), binding, binding.node, hour(10), hour(12), listing)
                with connection.cursor() as cursor:
                    cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        assert Allocation.objects.get() == allocation


@pytest.mark.django_db(transaction=True)
def test_foreign_node_allocation_fails_at_commit():
    """The composite foreign key is deferred: nothing complains until the transaction commits."""
    listing = ListingFactory(cluster=ClusterFactory(node_count=3), node_count=2, starts_at=hour(1))
    contract = book(lab=make_lab(), listing=listing, nodes=1, starts_at=hour(2), hours=4)
    binding = contract.allocations.get().listing_node
    stranger = Node.objects.filter(cluster=listing.cluster).exclude(listing_nodes__listing=listing).get()
    with pytest.raises(IntegrityError, match="allocation_node_is_listing_node"), transaction.atomic():
        Allocation.objects.create(
            contract=contract,
            listing_node=binding,
            node=stranger,
            listing=listing,
            starts_at=hour(10),
            ends_at=hour(12),
        )
    assert not Allocation.objects.filter(node=stranger).exists()
