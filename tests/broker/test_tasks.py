"""The broker's Celery tasks are safe to run twice, one after the other or at the same time."""

import pytest

from broker.matching import segment_match
from broker.models import Allocation, ComputeRequest, Contract
from broker.tasks import advance_lifecycle, match_segment, rematch_open_requests
from tests.broker.factories import book, make_lab, oversell_violations, request_create, run_at_once
from tests.marketplace.factories import ClusterFactory, ListingFactory, gpu_model, hour

pytestmark = pytest.mark.usefixtures("frozen")


def sales() -> tuple[list, list]:
    contracts = sorted(Contract.objects.values_list("id", "request_id", "listing_id", "node_count"))
    allocations = sorted(Allocation.objects.values_list("id", "contract_id", "node_id", "starts_at", "ends_at"))
    return contracts, allocations


@pytest.mark.django_db
def test_match_segment_twice_in_a_row_writes_one_set_of_contracts():
    ListingFactory(node_count=2, starts_at=hour(1))
    ListingFactory(node_count=2, starts_at=hour(1))
    requests = [request_create(lab=make_lab(), gpu_count=16, starts_at=hour(2)) for _ in range(3)]
    first = match_segment.delay(gpu_model().pk).get()
    assert (first["requests_filled"], first["contracts_created"], first["nodes_allocated"]) == (2, 2, 4)
    after_first = sales()
    second = match_segment.delay(gpu_model().pk).get()
    assert (second["requests_filled"], second["contracts_created"], second["nodes_allocated"]) == (0, 0, 0)
    assert sales() == after_first
    assert ComputeRequest.objects.filter(pk__in=[r.pk for r in requests], status="open").count() == 1


@pytest.mark.django_db(transaction=True)
def test_match_segment_delivered_twice_at_once_writes_one_set_of_contracts():
    """Two workers pick up the same task: the segment lock lets one of them fill each request."""
    requests = [request_create(lab=make_lab(), gpu_count=8, starts_at=hour(2)) for _ in range(6)]
    # The listing comes after the requests, so the matching their commits queued found nothing.
    listing = ListingFactory(cluster=ClusterFactory(node_count=4), node_count=4, starts_at=hour(1))
    gpu_model_id = gpu_model().pk
    for _ in range(3):
        results = run_at_once(
            lambda: match_segment.apply(args=[gpu_model_id]).get(),
            lambda: match_segment.apply(args=[gpu_model_id]).get(),
        )
        assert not [r for r in results if isinstance(r, BaseException)], results
    assert Contract.objects.filter(listing=listing).count() == 4
    assert Allocation.objects.count() == 4
    assert ComputeRequest.objects.filter(pk__in=[r.pk for r in requests], status="filled").count() == 4
    assert oversell_violations() == []


@pytest.mark.django_db(transaction=True)
def test_matchers_that_do_not_wait_skip_a_locked_segment():
    requests = [request_create(lab=make_lab(), gpu_count=8, starts_at=hour(2)) for _ in range(3)]
    ListingFactory(cluster=ClusterFactory(node_count=2), node_count=2, starts_at=hour(1))
    gpu_model_id = gpu_model().pk
    results = run_at_once(*[lambda: segment_match(gpu_model_id=gpu_model_id, wait=False)] * 4)
    assert not [r for r in results if isinstance(r, BaseException)], results
    assert sum(r.requests_filled for r in results) == 2
    assert all(r.requests_filled == 0 for r in results if r.skipped_locked)
    assert Contract.objects.count() == 2
    assert ComputeRequest.objects.filter(pk__in=[r.pk for r in requests], status="open").count() == 1


@pytest.mark.django_db
def test_advance_lifecycle_twice_changes_nothing_the_second_time(frozen):
    listing = ListingFactory(node_count=3, starts_at=hour(1), ends_at=hour(24))
    lab = make_lab()
    ending = book(lab=lab, listing=listing, nodes=1, starts_at=hour(1), hours=2)
    starting = book(lab=lab, listing=listing, nodes=1, starts_at=hour(3), hours=2)
    stale = request_create(lab=lab, gpu_count=8, starts_at=hour(1))
    frozen.move_to(hour(3))

    def snapshot():
        return (
            sorted(Contract.objects.values_list("id", "status", "released_at")),
            sorted(ComputeRequest.objects.values_list("id", "status", "closed_at")),
        )

    assert advance_lifecycle.delay().get() == {"expired_requests": 1, "activated": 1, "completed": 1}
    after_first = snapshot()
    assert advance_lifecycle.delay().get() == {"expired_requests": 0, "activated": 0, "completed": 0}
    assert snapshot() == after_first
    ending.refresh_from_db()
    starting.refresh_from_db()
    stale.refresh_from_db()
    assert (ending.status, starting.status, stale.status) == ("completed", "active", "expired")


@pytest.mark.django_db
def test_rematch_open_requests_queues_each_open_segment():
    request = request_create(lab=make_lab(), gpu_count=8, starts_at=hour(2))
    request_create(lab=make_lab(), gpu_count=8, starts_at=hour(2), slug="a100-sxm-80gb")
    ListingFactory(node_count=1, starts_at=hour(1))
    assert rematch_open_requests.delay().get() == sorted([gpu_model().pk, gpu_model("a100-sxm-80gb").pk])
    request.refresh_from_db()
    assert request.status == "filled"
