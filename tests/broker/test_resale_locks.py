"""A resale and its parent listing share every node, and the resale has the higher id. The
matching engine's refresh and quote acceptance lock listings in id order; withdrawing a resale
and cancelling a resold contract must lock in that order too (the free spans' rebuild locks
every listing reserving the nodes), or they deadlock with them and answer 500.

Each test lets a writer that locks in id order take the parent listing, starts the other
operation, waits (in pg_stat_activity, no timing) until it is blocked on a listing's lock, then
lets the first go on: both must finish."""

import threading
from decimal import Decimal as D

import pytest
from django.db import connection, connections, transaction

from broker.resale import resale_create
from broker.services import contract_cancel
from tests.broker.factories import book
from tests.conftest import make_client
from tests.marketplace.factories import ClusterFactory, ListingFactory, hour


def _someone_waits_on_a_listing_lock() -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query ILIKE %s",
            ["%marketplace_listing%"],
        )
        return cursor.fetchone()[0] > 0


def race_with_an_id_order_locker(*, first: int, second: int, operation) -> dict:
    """Lock listing ``first`` then ``second`` (as the engine does) in one thread, run
    ``operation`` in another once ``first`` is held; each thread's outcome."""
    outcome: dict[str, object] = {}
    holds_first = threading.Event()
    other_blocked = threading.Event()

    def locker():
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute("SELECT id FROM marketplace_listing WHERE id = %s FOR UPDATE", [first])
                holds_first.set()
                other_blocked.wait(30)
                cursor.execute("SELECT id FROM marketplace_listing WHERE id = %s FOR UPDATE", [second])
            outcome["locker"] = "ok"
        except BaseException as exc:
            outcome["locker"] = repr(exc)
        finally:
            connections.close_all()

    def other():
        try:
            holds_first.wait(30)
            outcome["operation"] = operation()
        except BaseException as exc:
            outcome["operation"] = repr(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=locker), threading.Thread(target=other)]
    for thread in threads:
        thread.start()
    for _ in range(3000):  # until the operation waits for a listing's lock (at most 30 s)
        if _someone_waits_on_a_listing_lock():
            break
        threading.Event().wait(0.01)
    other_blocked.set()
    for thread in threads:
        thread.join(60)
    return outcome


def resold(nodes_bought: int, nodes_resold: int):
    provider = make_client("Lock Provider", "provider").organization
    seller = make_client("Lock Seller", "lab")
    listing = ListingFactory(
        cluster=ClusterFactory(provider=provider, node_count=4), node_count=4, starts_at=hour(15), ends_at=hour(63)
    )
    contract = book(lab=seller.organization, listing=listing, nodes=nodes_bought, starts_at=hour(15), hours=48)
    resale = resale_create(
        holder=seller.organization, contract_id=contract.pk, node_count=nodes_resold, starts_at=hour(39),
        ends_at=hour(63), price_per_gpu_hour=D("3"),
    )  # fmt: skip
    assert listing.pk < resale.pk
    return listing, contract, resale, seller


@pytest.mark.django_db(transaction=True)
def test_withdrawing_a_resale_waits_for_a_writer_locking_listings_in_id_order(frozen):
    listing, _, resale, seller = resold(2, 2)
    outcome = race_with_an_id_order_locker(
        first=listing.pk,
        second=resale.pk,
        operation=lambda: seller.post(f"/api/v1/listings/{resale.pk}/withdraw").status_code,
    )
    assert outcome == {"locker": "ok", "operation": 200}, outcome


@pytest.mark.django_db(transaction=True)
def test_cancelling_a_resold_contract_waits_for_a_writer_locking_listings_in_id_order(frozen):
    listing, contract, resale, _ = resold(3, 1)
    outcome = race_with_an_id_order_locker(
        first=listing.pk,
        second=resale.pk,
        operation=lambda: contract_cancel(contract=contract, reason="fraud review").status,
    )
    assert outcome == {"locker": "ok", "operation": "cancelled"}, outcome
