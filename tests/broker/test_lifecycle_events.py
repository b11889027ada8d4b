"""Each step of a contract's and a request's life publishes its event to the organizations that
must act, with a snapshot of the object, once however often the job that publishes it runs;
and an event written in a transaction that rolls back vanishes with it."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import transaction

from broker.handover import contract_data
from broker.matching import segment_match
from broker.models import ComputeRequest, Contract
from broker.services import compute_requests_expire, contract_cancel, contract_terminate, contracts_advance
from broker.tasks import advance_lifecycle
from core.errors import CapacityUnavailable
from events.models import Event
from tests.broker.factories import book, make_lab, request_create
from tests.marketplace.factories import ClusterFactory, ListingFactory, gpu_model, hour, iso

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("frozen")]


@pytest.fixture
def provider():
    return ClusterFactory(node_count=4).provider


@pytest.fixture
def listing(provider):
    cluster = ClusterFactory(provider=provider, node_count=4)
    return ListingFactory(
        cluster=cluster, node_count=4, starts_at=hour(0), ends_at=hour(72), price_per_gpu_hour=Decimal("2.4000")
    )


@pytest.fixture
def lab():
    return make_lab("Lab Events")


def published(type: str | None = None) -> list[tuple[int, str, dict]]:
    events = Event.objects.order_by("id")
    if type:
        events = events.filter(type=type)
    return list(events.values_list("organization_id", "type", "data"))


def snapshot(contract: Contract, **changes) -> dict:
    return {
        "object": "contract",
        "id": contract.pk,
        "status": contract.status,
        "request_id": contract.request_id,
        "listing_id": contract.listing_id,
        "lab_id": contract.lab_id,
        "provider_id": contract.provider_id,
        "cluster_id": contract.cluster_id,
        "gpu_count": contract.gpu_count,
        "node_count": contract.node_count,
        "billing_mode": contract.billing_mode,
        "price_per_gpu_hour": str(contract.price_per_gpu_hour),
        "starts_at": iso(contract.starts_at),
        "ends_at": iso(contract.ends_at),
        **changes,
    }


def to_both(contract: Contract, type: str, data: dict) -> list[tuple[int, str, dict]]:
    return [(contract.lab_id, type, data), (contract.provider_id, type, data)]


def test_a_booking_tells_the_lab_and_the_provider(lab, listing):
    contract = book(lab=lab, listing=listing, nodes=2, starts_at=hour(2), hours=5)
    stored = Contract.objects.get(pk=contract.pk)
    assert published() == to_both(stored, "contract.created", snapshot(stored, status="scheduled"))
    # The booking statement builds its snapshot in SQL: the same one every other contract event carries.
    assert published()[0][2] == contract_data(stored)
    assert published()[0][2] == {
        "object": "contract",
        "id": stored.pk,
        "status": "scheduled",
        "request_id": None,
        "listing_id": listing.pk,
        "lab_id": lab.pk,
        "provider_id": listing.provider_id,
        "cluster_id": listing.cluster_id,
        "gpu_count": 16,
        "node_count": 2,
        "billing_mode": "committed",
        "price_per_gpu_hour": "2.4000",
        "starts_at": iso(hour(2)),
        "ends_at": iso(hour(7)),
    }


def test_a_refused_booking_tells_nobody(lab, listing):
    book(lab=lab, listing=listing, nodes=4, starts_at=hour(2), hours=5)
    with pytest.raises(CapacityUnavailable):
        book(lab=lab, listing=listing, nodes=1, starts_at=hour(2), hours=5)
    assert len(published()) == 2


def test_a_fill_tells_both_parties_of_each_contract_and_the_lab_of_its_request(lab, provider, listing):
    other = ListingFactory(
        cluster=ClusterFactory(provider=provider, node_count=2),
        node_count=2,
        starts_at=hour(0),
        ends_at=hour(72),
        price_per_gpu_hour=Decimal("2.5000"),
    )
    request = request_create(lab=lab, gpu_count=48, starts_at=hour(3), duration_hours=4, colocated=False)
    segment_match(gpu_model_id=gpu_model().pk, wait=True)  # nothing is queued on commit in a test transaction
    request.refresh_from_db()
    assert request.status == "filled"
    contracts = list(Contract.objects.filter(request=request).order_by("id"))
    assert [contract.listing_id for contract in contracts] == [listing.pk, other.pk]  # the cheaper first
    created = published("contract.created")
    assert created == [
        item for contract in contracts for item in to_both(contract, "contract.created", snapshot(contract))
    ]
    assert created[0][2]["request_id"] == request.pk
    [(organization, _, data)] = published("compute_request.filled")
    assert organization == lab.pk
    assert data == {
        "object": "compute_request",
        "id": request.pk,
        "status": "filled",
        "lab_id": lab.pk,
        "gpu_model_id": gpu_model().pk,
        "gpu_count": 48,
        "starts_at": iso(hour(3)),
        "ends_at": iso(hour(7)),
        "duration_hours": 4,
        "billing_mode": "committed",
        "max_price_per_gpu_hour": "10.0000",
        "colocated": False,
        "unfilled_reason": "",
        "filled_at": iso(request.filled_at),
        "contract_ids": [contract.pk for contract in contracts],
    }


def test_activation_completion_and_the_day_before_the_end_each_told_once(lab, listing, frozen):
    contract = book(lab=lab, listing=listing, nodes=1, starts_at=hour(1), hours=30)
    Event.objects.all().delete()
    frozen.move_to(hour(1) - timedelta(seconds=1))
    contracts_advance()
    assert published() == []
    frozen.move_to(hour(1))
    for _ in range(2):
        assert advance_lifecycle.delay().get()["activated"] in (0, 1)
    contract.refresh_from_db()
    assert published("contract.activated") == to_both(contract, "contract.activated", snapshot(contract))
    assert contract.status == "active"
    # 24 hours before its end, not a second earlier.
    frozen.move_to(hour(31) - timedelta(hours=24, seconds=1))
    contracts_advance()
    assert published("contract.ending") == []
    frozen.move_to(hour(31) - timedelta(hours=24))
    contracts_advance()
    assert published("contract.ending") == to_both(contract, "contract.ending", snapshot(contract))
    frozen.move_to(hour(31) - timedelta(hours=1))
    contracts_advance()
    assert len(published("contract.ending")) == 2
    frozen.move_to(hour(31))
    contracts_advance()
    contracts_advance()
    contract.refresh_from_db()
    assert contract.status == "completed"
    assert published("contract.completed") == to_both(contract, "contract.completed", snapshot(contract))
    assert [type for _, type, _ in published()] == [
        *["contract.activated"] * 2,
        *["contract.delivery_late"] * 2,  # never delivered
        *["contract.ending"] * 2,
        *["contract.completed"] * 2,
    ]


def test_a_contract_ending_within_a_day_of_its_start_is_told_at_its_start(lab, listing, frozen):
    contract = book(lab=lab, listing=listing, nodes=1, starts_at=hour(1), hours=4)
    contracts_advance()
    assert published("contract.ending") == []  # not yet begun
    frozen.move_to(hour(1))
    contracts_advance()
    contract.refresh_from_db()
    assert published("contract.ending") == to_both(contract, "contract.ending", snapshot(contract))


def test_termination_tells_both_with_the_release(lab, provider, frozen):
    listing = ListingFactory(
        cluster=ClusterFactory(provider=provider),
        node_count=2,
        starts_at=hour(0),
        ends_at=hour(48),
        billing_mode="metered",
    )
    contract = book(lab=lab, listing=listing, nodes=1, starts_at=hour(1), hours=10)
    frozen.move_to(hour(2) + timedelta(minutes=5))
    contract_terminate(contract=contract, lab=lab)
    contract_terminate(contract=contract, lab=lab)  # again: nothing new
    contract.refresh_from_db()
    assert published("contract.terminated") == to_both(
        contract, "contract.terminated", snapshot(contract, status="terminated", released_at=iso(hour(3)))
    )


def test_cancellation_tells_both_with_the_reason(lab, listing):
    contract = book(lab=lab, listing=listing, nodes=1, starts_at=hour(5), hours=10)
    contract_cancel(contract=contract, reason="Provider lost power")
    contract.refresh_from_db()
    assert published("contract.cancelled") == to_both(
        contract,
        "contract.cancelled",
        snapshot(contract, status="cancelled", released_at=iso(hour(5)), cancel_reason="Provider lost power"),
    )


def test_an_expired_request_tells_its_lab_once(lab, frozen):
    request = request_create(lab=lab, gpu_count=8, starts_at=hour(2), duration_hours=4)  # no listing: stays open
    frozen.move_to(hour(2) + timedelta(seconds=1))
    assert compute_requests_expire() == 1
    assert compute_requests_expire() == 0
    request.refresh_from_db()
    [(organization, _, data)] = published("compute_request.expired")
    assert organization == lab.pk
    assert data == {
        "object": "compute_request",
        "id": request.pk,
        "status": "expired",
        "lab_id": lab.pk,
        "gpu_model_id": gpu_model().pk,
        "gpu_count": 8,
        "starts_at": iso(hour(2)),
        "ends_at": iso(hour(6)),
        "duration_hours": 4,
        "billing_mode": "committed",
        "max_price_per_gpu_hour": "10.0000",
        "colocated": True,
        "unfilled_reason": "",  # no matching run saw it (nothing runs on commit in a test's transaction)
    }
    assert ComputeRequest.objects.get().status == "expired"


def test_events_of_a_change_rolled_back_vanish_with_it(lab, listing):
    with pytest.raises(RuntimeError), transaction.atomic():
        book(lab=lab, listing=listing, nodes=1, starts_at=hour(2), hours=5)
        assert len(published()) == 2
        raise RuntimeError("the caller fails after the booking")
    assert (Contract.objects.count(), published()) == (0, [])


def test_a_lifecycle_run_that_fails_publishes_nothing(lab, listing, frozen, monkeypatch):
    book(lab=lab, listing=listing, nodes=1, starts_at=hour(1), hours=2)
    Event.objects.all().delete()
    frozen.move_to(hour(3))

    def fail(changed, now):
        raise RuntimeError("the events could not be written")

    monkeypatch.setattr("broker.services._publish_advanced", fail)
    with pytest.raises(RuntimeError):
        contracts_advance()
    assert (Contract.objects.get().status, published()) == ("scheduled", [])
