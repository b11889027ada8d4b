"""Builders for broker tests: organizations, clusters and listings made through the services.

Clusters and listings go through ``cluster_create`` and ``listing_create`` so nodes and
ListingNode reservations exist exactly as in production. ``oversell_violations`` reads the
database and lists every way capacity was sold twice (it should always return ``[]``).
"""

import threading
from collections import Counter, defaultdict
from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import Decimal

import time_machine
from django.db import connections

from broker.booking import listing_book
from broker.models import Allocation, ComputeRequest, Contract
from broker.services import compute_request_create
from core.timeutils import HOUR
from marketplace.models import BillingMode, Listing, Organization
from tests.marketplace.factories import DEFAULT_GPU_MODEL, OrganizationFactory, gpu_model


def make_lab(name: str | None = None) -> Organization:
    return OrganizationFactory(lab=True, **({"name": name} if name else {}))


def request_create(
    *,
    lab: Organization,
    gpu_count: int,
    starts_at: datetime,
    duration_hours: int = 4,
    max_price: str | Decimal = "10",
    billing_mode: str = BillingMode.COMMITTED,
    slug: str = DEFAULT_GPU_MODEL,
    **extra,
) -> ComputeRequest:
    """A compute request through the service (which queues matching on commit)."""
    return compute_request_create(
        lab=lab,
        gpu_model=gpu_model(slug),
        gpu_count=gpu_count,
        starts_at=starts_at,
        duration_hours=duration_hours,
        max_price_per_gpu_hour=Decimal(max_price),
        billing_mode=billing_mode,
        **extra,
    )


def book(*, lab: Organization, listing: Listing, nodes: int, starts_at: datetime, hours: int) -> Contract:
    """Book ``nodes`` whole nodes of a listing through the service."""
    return listing_book(
        lab=lab,
        listing=listing,
        gpu_count=nodes * listing.cluster.gpus_per_node,
        starts_at=starts_at,
        duration_hours=hours,
    )


def book_running(*, lab: Organization, listing: Listing, nodes: int, starts_at: datetime, hours: int) -> Contract:
    """A contract that has already started: booked a minute before ``starts_at``, when a lab
    still could (no booking starts in the past), then the clock goes back to where it was."""
    with time_machine.travel(starts_at - timedelta(minutes=1), tick=False):
        return book(lab=lab, listing=listing, nodes=nodes, starts_at=starts_at, hours=hours)


def sold_nodes(listing: Listing, starts_at: datetime, ends_at: datetime) -> int:
    """How many of the listing's nodes are sold for some hour of [starts_at, ends_at)."""
    return (
        Allocation.objects.holding_during(starts_at, ends_at)
        .filter(contract__listing=listing)
        .values("node_id")
        .distinct()
        .count()
    )


def oversell_violations() -> list[str]:
    """Every double sale the database holds; ``[]`` when capacity was sold at most once.

    Checks that no node is in two allocations of one depth for overlapping hours (a resale,
    broker.resale, sells again at the next depth hours sold at its own), that for every listing
    and every hour its allocations do not exceed its node_count, that an allocation's node and
    listing are the ones its reservation names, inside that listing's window, and that a
    contract's allocations match its node_count.
    """
    problems: list[str] = []
    rows = Allocation.objects.holding().values_list(
        "id",
        "node_id",
        "depth",
        "starts_at",
        "ends_at",
        "listing_id",
        "contract__listing_id",
        "listing_node__node_id",
        "listing_node__listing_id",
        "listing_node__listing__node_count",
        "listing_node__listing__starts_at",
        "listing_node__listing__ends_at",
    )
    by_node: dict[tuple[int, int], list[tuple[datetime, datetime, int]]] = defaultdict(list)
    per_listing_hour: Counter = Counter()
    capacity: dict[int, int] = {}
    for (
        allocation_id,
        node_id,
        depth,
        starts_at,
        ends_at,
        listing_id,
        contract_listing_id,
        reserved_node_id,
        reserved_listing_id,
        node_count,
        listing_starts,
        listing_ends,
    ) in rows:
        if node_id != reserved_node_id:
            problems.append(f"allocation {allocation_id}: node {node_id} is not its reservation's {reserved_node_id}")
        if contract_listing_id != reserved_listing_id:
            problems.append(f"allocation {allocation_id}: reservation of another listing")
        if listing_id != reserved_listing_id:
            problems.append(
                f"allocation {allocation_id}: listing {listing_id} is not its reservation's {reserved_listing_id}"
            )
        if starts_at < listing_starts or ends_at > listing_ends:
            problems.append(f"allocation {allocation_id}: outside its listing's window")
        by_node[(node_id, depth)].append((starts_at, ends_at, allocation_id))
        capacity[reserved_listing_id] = node_count
        moment = starts_at
        while moment < ends_at:
            per_listing_hour[(reserved_listing_id, moment)] += 1
            moment += HOUR
    for (node_id, _), spans in by_node.items():
        spans.sort()
        for (_, first_end, first_id), (second_start, _, second_id) in zip(spans, spans[1:], strict=False):
            if second_start < first_end:
                problems.append(f"node {node_id}: allocations {first_id} and {second_id} overlap")
    for (listing_id, moment), count in per_listing_hour.items():
        if count > capacity[listing_id]:
            problems.append(f"listing {listing_id} at {moment:%Y-%m-%d %H:00}: {count} > {capacity[listing_id]}")
    allocation_counts = Counter(Allocation.objects.values_list("contract_id", flat=True))
    for contract_id, node_count in Contract.objects.values_list("id", "node_count"):
        if allocation_counts[contract_id] != node_count:
            problems.append(f"contract {contract_id}: {allocation_counts[contract_id]} allocations for {node_count}")
    return problems


def run_at_once(*calls: Callable[[], object], timeout: float = 120) -> list[object]:
    """Run each call in its own thread (its own database connection), all released together.

    Returns each call's result, or the exception it raised, in the order given.
    """
    barrier = threading.Barrier(len(calls))
    results: list[object] = [None] * len(calls)

    def run(index: int, call: Callable[[], object]) -> None:
        try:
            barrier.wait(timeout=30)
            results[index] = call()
        except BaseException as exc:  # handed to the test, which reports it
            results[index] = exc
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(index, call), daemon=True) for index, call in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    assert not any(thread.is_alive() for thread in threads), "a racing thread did not finish"
    return results
