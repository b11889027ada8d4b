"""The matching engine: which listings fill a compute request, and how."""

from decimal import Decimal

import pytest

from broker.matching import segment_match
from broker.models import Allocation, ComputeRequest, Contract
from marketplace.models import Interconnect, Listing
from marketplace.services import listing_update, listing_withdraw, node_set_status
from tests.broker.factories import book, make_lab, oversell_violations, request_create
from tests.marketplace.factories import ClusterFactory, ListingFactory, OrganizationFactory, gpu_model, hour

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("frozen")]


def match(slug: str = "h100-sxm-80gb"):
    return segment_match(gpu_model_id=gpu_model(slug).pk, wait=True)


def listing(price: str, *, nodes: int = 2, cluster=None, **kwargs) -> Listing:
    kwargs.setdefault("starts_at", hour(1))
    kwargs.setdefault("ends_at", hour(25))
    if cluster is None:
        cluster = ClusterFactory(**kwargs.pop("cluster_kwargs", {}))
    return ListingFactory(cluster=cluster, node_count=nodes, price_per_gpu_hour=Decimal(price), **kwargs)


def contracts_of(request: ComputeRequest) -> list[Contract]:
    return list(Contract.objects.filter(request=request).order_by("price_per_gpu_hour", "listing_id"))


def status_of(request: ComputeRequest) -> str:
    request.refresh_from_db()
    return request.status


@pytest.fixture
def lab():
    return make_lab()


class TestPrice:
    def test_cheapest_listing_fills(self, lab):
        listing("3.00")
        cheap = listing("2.00")
        listing("2.50")
        request = request_create(lab=lab, gpu_count=16, starts_at=hour(2), max_price="5")
        result = match()
        assert (result.requests_filled, result.contracts_created, result.nodes_allocated) == (1, 1, 2)
        [contract] = contracts_of(request)
        assert contract.listing == cheap
        assert contract.price_per_gpu_hour == Decimal("2.00")
        assert status_of(request) == "filled"

    def test_listing_above_max_price_is_not_used(self, lab):
        listing("3.01")
        request = request_create(lab=lab, gpu_count=8, starts_at=hour(2), max_price="3.00")
        match()
        assert status_of(request) == "open"
        assert not Contract.objects.exists()

    def test_listing_at_exactly_max_price_is_used(self, lab):
        exact = listing("3.00")
        request = request_create(lab=lab, gpu_count=8, starts_at=hour(2), max_price="3.00")
        match()
        assert [c.listing for c in contracts_of(request)] == [exact]

    def test_equal_prices_earliest_listed_first(self, lab, frozen):
        first = listing("2.00")
        frozen.shift(60)
        listing("2.00")
        request = request_create(lab=lab, gpu_count=16, starts_at=hour(2))
        match()
        assert [c.listing for c in contracts_of(request)] == [first]

    def test_each_listing_charges_its_own_price(self, lab):
        cheap = listing("1.00", nodes=1)
        dear = listing("1.50", nodes=2)
        request = request_create(lab=lab, gpu_count=24, starts_at=hour(2), duration_hours=3, colocated=False)
        match()
        contracts = contracts_of(request)
        assert [(c.listing, c.price_per_gpu_hour, c.gpu_count) for c in contracts] == [
            (cheap, Decimal("1.00"), 8),
            (dear, Decimal("1.50"), 16),
        ]
        assert [c.total_amount for c in contracts] == [Decimal("24.00"), Decimal("72.00")]


class TestAllOrNothing:
    def test_unfillable_request_writes_nothing(self, lab):
        listing("2.00", nodes=3)
        listing("2.00", nodes=2)
        request = request_create(lab=lab, gpu_count=48, starts_at=hour(2), colocated=False)
        match()
        assert status_of(request) == "open"
        assert not Contract.objects.exists()
        assert not Allocation.objects.exists()

    def test_colocated_request_does_not_span_clusters(self, lab):
        listing("1.00", nodes=2)
        listing("1.00", nodes=2)
        request = request_create(lab=lab, gpu_count=32, starts_at=hour(2))
        match()
        assert status_of(request) == "open"
        assert not Contract.objects.exists()

    def test_colocated_request_may_use_several_listings_of_one_cluster(self, lab):
        cluster = ClusterFactory(node_count=4)
        first = listing("2.00", nodes=1, cluster=cluster)
        second = listing("2.20", nodes=2, cluster=cluster)
        listing("2.50", nodes=4)  # one listing, but dearer as a whole
        request = request_create(lab=lab, gpu_count=24, starts_at=hour(2))
        match()
        contracts = contracts_of(request)
        assert [(c.listing, c.node_count) for c in contracts] == [(first, 1), (second, 2)]
        assert {c.cluster_id for c in contracts} == {cluster.pk}

    def test_colocated_takes_the_cheapest_complete_cluster(self, lab):
        listing("1.00", nodes=1)  # cheapest, but too small
        whole = listing("2.00", nodes=3)
        request = request_create(lab=lab, gpu_count=24, starts_at=hour(2))
        match()
        assert [c.listing for c in contracts_of(request)] == [whole]

    def test_spread_request_spans_clusters_and_providers_one_contract_per_listing(self, lab):
        provider = OrganizationFactory()
        a = listing("1.00", nodes=1, cluster=ClusterFactory(provider=provider))
        b = listing("1.10", nodes=1, cluster=ClusterFactory(provider=provider))
        c = listing("1.20", nodes=2)
        listing("9.00", nodes=4)
        request = request_create(lab=lab, gpu_count=32, starts_at=hour(2), colocated=False)
        match()
        contracts = contracts_of(request)
        assert [(x.listing, x.node_count) for x in contracts] == [(a, 1), (b, 1), (c, 2)]
        assert len({x.cluster_id for x in contracts}) == 3
        assert {x.provider_id for x in contracts} == {provider.pk, c.provider_id}
        assert sum(x.gpu_count for x in contracts) == 32
        assert oversell_violations() == []


class TestEligibility:
    def test_cluster_whose_node_size_does_not_divide_the_request_is_skipped(self, lab):
        listing("1.00", nodes=4)  # 8 GPUs a node: 12 is not whole nodes
        fours = listing("2.00", nodes=4, cluster=ClusterFactory(gpus_per_node=4, node_count=4))
        request = request_create(lab=lab, gpu_count=12, starts_at=hour(2), colocated=False)
        match()
        [contract] = contracts_of(request)
        assert (contract.listing, contract.gpu_count, contract.node_count) == (fours, 12, 3)

    def test_spread_request_over_mixed_node_sizes_is_filled_when_possible(self, lab):
        listing("1.00", nodes=1, cluster=ClusterFactory(gpus_per_node=8, node_count=1))
        sixteens = listing("2.00", nodes=2, cluster=ClusterFactory(gpus_per_node=16, node_count=2))
        request = request_create(lab=lab, gpu_count=32, starts_at=hour(2), colocated=False)
        match()
        assert status_of(request) == "filled"
        assert sum(c.gpu_count for c in contracts_of(request)) == 32
        assert sixteens in [c.listing for c in contracts_of(request)]

    def test_billing_mode_must_match(self, lab):
        metered = listing("1.00", billing_mode="metered")
        committed = listing("2.00", billing_mode="committed")
        wants_committed = request_create(lab=lab, gpu_count=8, starts_at=hour(2), billing_mode="committed")
        wants_metered = request_create(lab=lab, gpu_count=8, starts_at=hour(2), billing_mode="metered")
        match()
        [c1] = contracts_of(wants_committed)
        [c2] = contracts_of(wants_metered)
        assert (c1.listing, c1.billing_mode, c1.total_amount) == (committed, "committed", Decimal("64.00"))
        assert (c2.listing, c2.billing_mode, c2.total_amount) == (metered, "metered", None)

    def test_region_filter(self, lab):
        listing("1.00", cluster_kwargs={"region": "eu-west-1"})
        us = listing("2.00", cluster_kwargs={"region": "us-south-1"})
        request = request_create(lab=lab, gpu_count=8, starts_at=hour(2), region="us-south-1")
        match()
        assert [c.listing for c in contracts_of(request)] == [us]

    def test_interconnect_filter(self, lab):
        listing("1.00", cluster_kwargs={"interconnect": Interconnect.ETHERNET})
        roce = listing("2.00", cluster_kwargs={"interconnect": Interconnect.ROCE})
        request = request_create(lab=lab, gpu_count=8, starts_at=hour(2), interconnect="roce")
        match()
        assert [c.listing for c in contracts_of(request)] == [roce]

    def test_paused_and_withdrawn_listings_are_not_used(self, lab):
        paused = listing("1.00", status=Listing.Status.PAUSED)
        listing("1.00", status=Listing.Status.WITHDRAWN)
        request = request_create(lab=lab, gpu_count=8, starts_at=hour(2))
        match()
        assert status_of(request) == "open"
        listing_update(listing=paused, status=Listing.Status.ACTIVE)
        match()
        assert [c.listing for c in contracts_of(request)] == [paused]

    def test_listing_withdrawn_after_the_book_was_loaded_is_not_used(self, lab, monkeypatch):
        """The engine re-reads listing status under the lock before each chunk."""
        from broker import matching

        target = listing("1.00")
        request = request_create(lab=lab, gpu_count=8, starts_at=hour(2))
        original = matching.OrderBook.refresh

        def withdraw_then_refresh(book):
            listing_withdraw(listing=target)
            original(book)

        monkeypatch.setattr(matching.OrderBook, "refresh", withdraw_then_refresh)
        match()
        assert status_of(request) == "open"

    def test_a_lab_never_buys_from_itself(self, lab):
        both = OrganizationFactory(both=True)
        listing("1.00", cluster=ClusterFactory(provider=both))
        other = listing("3.00")
        own_request = request_create(lab=both, gpu_count=8, starts_at=hour(2))
        match()
        assert [c.listing for c in contracts_of(own_request)] == [other]
        assert not Contract.objects.filter(lab=both, provider=both).exists()

    def test_listing_window_must_cover_the_request(self, lab):
        listing("1.00", starts_at=hour(3), ends_at=hour(10))
        late = request_create(lab=lab, gpu_count=8, starts_at=hour(8), duration_hours=4)  # runs past 10:00
        early = request_create(lab=lab, gpu_count=8, starts_at=hour(2), duration_hours=2)  # starts before
        match()
        assert status_of(late) == "open"
        assert status_of(early) == "open"

    def test_min_duration_is_respected(self, lab):
        listing("1.00", min_duration_hours=6)
        short = request_create(lab=lab, gpu_count=8, starts_at=hour(2), duration_hours=5)
        long = request_create(lab=lab, gpu_count=8, starts_at=hour(2), duration_hours=6)
        match()
        assert status_of(short) == "open"
        assert status_of(long) == "filled"

    def test_other_gpu_model_is_another_market(self, lab):
        listing("1.00", cluster_kwargs={"gpu_model": gpu_model("a100-sxm-80gb")})
        request = request_create(lab=lab, gpu_count=8, starts_at=hour(2))
        match()
        match("a100-sxm-80gb")
        assert status_of(request) == "open"

    def test_nodes_in_maintenance_are_not_sold(self, lab):
        target = listing("1.00", nodes=2, cluster=ClusterFactory(node_count=2))
        node_set_status(node=target.listing_nodes.first().node, status="maintenance")
        request = request_create(lab=lab, gpu_count=16, starts_at=hour(2))
        match()
        assert status_of(request) == "open"


class TestSharingCapacity:
    def test_oldest_request_is_served_first(self, lab, frozen):
        listing("1.00", nodes=2)
        first = request_create(lab=lab, gpu_count=16, starts_at=hour(2))
        frozen.shift(1)
        second = request_create(lab=make_lab(), gpu_count=8, starts_at=hour(2))
        match()
        assert (status_of(first), status_of(second)) == ("filled", "open")

    def test_requests_for_different_hours_share_nodes(self, lab):
        target = listing("1.00", nodes=1)
        morning = request_create(lab=lab, gpu_count=8, starts_at=hour(2), duration_hours=3)
        evening = request_create(lab=lab, gpu_count=8, starts_at=hour(5), duration_hours=3)
        match()
        nodes = {c.allocations.get().node_id for c in Contract.objects.filter(listing=target)}
        assert (status_of(morning), status_of(evening)) == ("filled", "filled")
        assert len(nodes) == 1
        assert oversell_violations() == []

    def test_a_sale_under_way_keeps_its_node_for_the_hours_it_has_left(self, lab, frozen):
        target = listing("1.00", nodes=1)
        book(lab=make_lab(), listing=target, nodes=1, starts_at=hour(1), hours=4)
        frozen.shift(2 * 3600)  # the sale started an hour before the engine's first hour
        during = request_create(lab=lab, gpu_count=8, starts_at=hour(4), duration_hours=1)
        after = request_create(lab=lab, gpu_count=8, starts_at=hour(5), duration_hours=1)
        match()
        assert (status_of(during), status_of(after)) == ("open", "filled")
        assert oversell_violations() == []

    def test_sold_nodes_are_not_sold_again(self, lab):
        target = listing("1.00", nodes=2)
        book(lab=make_lab(), listing=target, nodes=1, starts_at=hour(3), hours=2)
        too_big = request_create(lab=lab, gpu_count=16, starts_at=hour(4), duration_hours=2)
        fits = request_create(lab=lab, gpu_count=8, starts_at=hour(4), duration_hours=2)
        match()
        assert (status_of(too_big), status_of(fits)) == ("open", "filled")
        assert oversell_violations() == []

    def test_contract_terms_copy_the_request_window(self, lab):
        target = listing("2.50", nodes=2)
        request = request_create(lab=lab, gpu_count=16, starts_at=hour(2), duration_hours=10, max_price="4")
        match()
        [contract] = contracts_of(request)
        assert (contract.starts_at, contract.ends_at) == (hour(2), hour(12))
        assert (contract.lab, contract.provider, contract.cluster_id) == (lab, target.provider, target.cluster_id)
        assert contract.status == Contract.Status.SCHEDULED
        assert contract.total_amount == Decimal("400.00")  # 16 GPUs x 10 h x 2.50
        allocations = list(contract.allocations.all())
        assert len(allocations) == 2
        assert all((a.starts_at, a.ends_at) == (hour(2), hour(12)) for a in allocations)
