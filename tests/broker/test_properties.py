"""A property: whatever listings, bookings, requests, matching runs and releases happen, in any
order, no node-hour is sold twice, and the free spans booking reads are exactly their definition
(broker.free_spans). Checked from the database after every step."""

from datetime import timedelta
from decimal import Decimal

import pytest
import time_machine
from django.db import transaction
from django.db.models import F
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

from broker.booking import listing_book
from broker.free_spans import free_spans_drift
from broker.matching import segment_match
from broker.models import ComputeRequest, Contract
from broker.services import contract_cancel, contract_terminate
from core.errors import DomainError
from core.timeutils import current_hour
from marketplace.models import Listing, Node
from marketplace.services import listing_create, listing_update, listing_withdraw, node_set_status
from tests.broker.factories import oversell_violations, request_create
from tests.marketplace.factories import NOW, ClusterFactory, OrganizationFactory, gpu_model

PRICES = ["1.00", "1.50", "2.00"]
MODES = ["committed", "metered"]

listing_op = st.tuples(
    st.just("list"),
    st.integers(0, 1),  # cluster
    st.integers(1, 3),  # nodes
    st.integers(0, 3),  # start, hours from now
    st.integers(2, 10),  # length in hours
    st.sampled_from(PRICES),
    st.sampled_from(MODES),
)
booking_op = st.tuples(
    st.just("book"),
    st.integers(0, 2),  # lab
    st.integers(0, 7),  # listing
    st.integers(1, 3),  # nodes
    st.integers(0, 3),  # start, hours into the listing's window
    st.integers(1, 4),  # hours
)
request_op = st.tuples(
    st.just("request"),
    st.integers(0, 2),  # lab
    st.sampled_from([8, 16, 24, 4, 12]),  # GPUs
    st.integers(0, 7),  # a listing whose window the request aims at
    st.integers(0, 3),  # start, hours into that window
    st.integers(1, 4),  # hours
    st.sampled_from(["same", "1.50", "3.00"]),  # the lab's max price ("same": the aimed-at listing's)
    st.sampled_from(["same", *MODES]),  # billing mode
    st.booleans(),  # colocated
    st.booleans(),  # run the matching engine right away, as the commit would
)
STEPS = st.lists(
    st.one_of(
        listing_op,
        listing_op,
        booking_op,
        booking_op,
        request_op,
        request_op,
        st.just(("match",)),
        st.tuples(st.sampled_from(["terminate", "cancel"]), st.integers(0, 15)),
        st.tuples(st.sampled_from(["pause", "resume", "withdraw"]), st.integers(0, 7)),
        st.tuples(st.sampled_from(["maintenance", "in_service"]), st.integers(0, 6)),
        st.just(("tick",)),
    ),
    min_size=10,
    max_size=30,
)
# A few listings first, so that most runs have something to sell.
OPERATIONS = st.tuples(st.lists(listing_op, min_size=1, max_size=3), STEPS).map(lambda parts: parts[0] + parts[1])


class Market:
    """A small market: a provider's 4 x 8-GPU cluster, a lab-and-provider's 3 x 4-GPU cluster."""

    def __init__(self, traveller):
        self.traveller = traveller
        provider = OrganizationFactory()
        both = OrganizationFactory(both=True)
        self.labs = [OrganizationFactory(lab=True), OrganizationFactory(lab=True), both]
        self.clusters = [
            ClusterFactory(provider=provider, node_count=4, gpus_per_node=8),
            ClusterFactory(provider=both, node_count=3, gpus_per_node=4),
        ]
        self.nodes = list(Node.objects.filter(cluster__in=self.clusters).order_by("id"))
        self.listings: list[Listing] = []
        self.gpu_model_id = gpu_model().pk

    def hours(self, offset: int):
        return current_hour() + timedelta(hours=offset)

    def apply(self, operation: tuple) -> None:
        kind, *args = operation
        try:
            getattr(self, f"do_{kind}")(*args)
        except DomainError:
            event(f"{kind} refused")  # a rule may refuse a step; nothing may be oversold either way
        else:
            event(f"{kind} done")

    def do_list(self, cluster_index, nodes, start, length, price, mode):
        cluster = self.clusters[cluster_index]
        self.listings.append(
            listing_create(
                provider=cluster.provider,
                cluster=cluster,
                node_count=nodes,
                starts_at=self.hours(start),
                ends_at=self.hours(start + length),
                price_per_gpu_hour=Decimal(price),
                billing_mode=mode,
            )
        )

    def listing(self, index) -> Listing | None:
        return self.listings[index % len(self.listings)] if self.listings else None

    def start_in(self, listing: Listing | None, offset: int):
        """``offset`` hours into the listing's window (or from now), never before the current hour."""
        base = listing.starts_at if listing is not None else current_hour()
        return max(base + timedelta(hours=offset), current_hour())

    def do_book(self, lab_index, listing_index, nodes, offset, hours):
        listing = self.listing(listing_index)
        if listing is not None:
            listing_book(
                lab=self.labs[lab_index],
                listing=listing,
                gpu_count=nodes * listing.cluster.gpus_per_node,
                starts_at=self.start_in(listing, offset),
                duration_hours=hours,
            )
            event("a booking was made")

    def do_request(self, lab_index, gpus, listing_index, offset, hours, price, mode, colocated, match_now):
        aim = self.listing(listing_index)
        request_create(
            lab=self.labs[lab_index],
            gpu_count=gpus,
            starts_at=self.start_in(aim, offset),
            duration_hours=hours,
            max_price=aim.price_per_gpu_hour if aim and price == "same" else Decimal(price.replace("same", "2.00")),
            billing_mode=aim.billing_mode if aim and mode == "same" else mode.replace("same", "committed"),
            colocated=colocated,
        )
        if match_now:
            self.do_match()

    def do_match(self):
        result = segment_match(gpu_model_id=self.gpu_model_id, wait=True)
        if result.requests_filled:
            event("a request was filled")

    def contract(self, index) -> Contract | None:
        contracts = list(Contract.objects.order_by("id"))
        return contracts[index % len(contracts)] if contracts else None

    def do_terminate(self, index):
        if (contract := self.contract(index)) is not None:
            contract_terminate(contract=contract, lab=contract.lab)

    def do_cancel(self, index):
        if (contract := self.contract(index)) is not None:
            contract_cancel(contract=contract, reason="operator test")

    def do_pause(self, index):
        if (listing := self.listing(index)) is not None:
            listing_update(listing=listing, status=Listing.Status.PAUSED)

    def do_resume(self, index):
        if (listing := self.listing(index)) is not None:
            listing_update(listing=listing, status=Listing.Status.ACTIVE)

    def do_withdraw(self, index):
        if (listing := self.listing(index)) is not None:
            listing_withdraw(listing=listing)

    def do_maintenance(self, index):
        node_set_status(node=self.nodes[index % len(self.nodes)], status=Node.Status.MAINTENANCE)

    def do_in_service(self, index):
        node_set_status(node=self.nodes[index % len(self.nodes)], status=Node.Status.IN_SERVICE)

    def do_tick(self):
        self.traveller.shift(timedelta(hours=1))


def fill_violations() -> list[str]:
    """Fills must be whole, within the lab's price and billing mode, colocated when asked, never self-dealt."""
    problems = []
    for request in ComputeRequest.objects.prefetch_related("contracts"):
        contracts = list(request.contracts.all())
        if request.status == ComputeRequest.Status.FILLED:
            if sum(c.gpu_count for c in contracts) != request.gpu_count:
                problems.append(f"request {request.pk}: filled with {sum(c.gpu_count for c in contracts)} GPUs")
            if request.colocated and len({c.cluster_id for c in contracts}) != 1:
                problems.append(f"request {request.pk}: colocated across clusters")
        elif contracts:
            problems.append(f"request {request.pk}: {request.status} with contracts")
        for contract in contracts:
            if contract.price_per_gpu_hour > request.max_price_per_gpu_hour:
                problems.append(f"contract {contract.pk}: above the lab's price")
            if contract.billing_mode != request.billing_mode:
                problems.append(f"contract {contract.pk}: wrong billing mode")
            if (contract.starts_at, contract.ends_at) != (request.starts_at, request.ends_at):
                problems.append(f"contract {contract.pk}: window differs from the request's")
    for contract in Contract.objects.filter(lab_id=F("provider_id")):
        problems.append(f"contract {contract.pk}: lab {contract.lab_id} bought from itself")
    return problems


@pytest.mark.django_db
@settings(
    max_examples=40,
    deadline=None,
    database=None,
    # No "explain" phase: its line tracing makes shrinking a failure of this slow test take minutes.
    phases=[Phase.explicit, Phase.generate, Phase.target, Phase.shrink],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(operations=OPERATIONS)
def test_no_node_hour_is_ever_sold_twice(operations):
    with transaction.atomic(), time_machine.travel(NOW, tick=False) as traveller:
        market = Market(traveller)
        for step, operation in enumerate(operations):
            market.apply(operation)
            problems = oversell_violations()
            assert problems == [], (step, operation, problems)
            drift = free_spans_drift()
            assert drift == [], (step, operation, drift)
        assert fill_violations() == []
        transaction.set_rollback(True)
