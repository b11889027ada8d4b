"""Instant booking under concurrency, against pgbench on the same server in the same run.

16 client processes (each with its own Django and connection) call ``listing_book`` for a
fixed time, picking random listings of a large market and small windows, so they rarely
run out. Then pgbench's built-in TPC-B-like workload runs with the same number of clients.

    .venv/bin/python bench/booking.py [--clients 16] [--seconds 10] [--profile]

Prints one JSON line. Target: bookings per second at least 0.25 x pgbench's tps.
"""

from __future__ import annotations

import argparse
import cProfile
import multiprocessing
import random
import statistics
import time
import traceback
from datetime import timedelta
from decimal import Decimal

from _common import (
    analyze,
    backend_pid,
    cpu_meter,
    emit,
    log,
    pgbench_init,
    pgbench_tps,
    print_profile,
    setup,
    stopwatch,
    truncate,
)

DATABASE = "gpubroker_bench_broker"
MIGRATE_APPS = ("core", "marketplace", "events", "broker", "billing")  # billing: the exposure reads invoices
# A limit the labs never reach, so every booking computes its lab's exposure and claims the lab.
LAB_CREDIT_LIMIT = Decimal("1000000000.00")
TARGET_RATIO = 0.25
PROVIDERS = 8
LABS = 16
CLUSTERS = 250
NODES_PER_CLUSTER = 16
LISTINGS_PER_CLUSTER = 4  # 1,000 listings of 4 nodes each, for two weeks
HORIZON_HOURS = 14 * 24
GPUS_PER_NODE = 8
BOOKING_NODES = ([1, 2], [0.7, 0.3])
BOOKING_HOURS = (1, 8)


def build_market(rng: random.Random) -> dict:
    """Clusters through the service; listings and their reserved nodes in bulk."""
    from core.timeutils import next_hour
    from marketplace.models import GpuModel, Listing, ListingNode, Node, Organization
    from marketplace.services import cluster_create

    base = next_hour()
    h100 = GpuModel.objects.get(slug="h100-sxm-80gb")
    providers = Organization.objects.bulk_create(
        Organization(name=f"Bench provider {index:02d}", is_provider=True) for index in range(PROVIDERS)
    )
    Organization.objects.bulk_create(
        Organization(name=f"Bench lab {index:02d}", is_lab=True, credit_limit=LAB_CREDIT_LIMIT) for index in range(LABS)
    )
    clusters = [
        cluster_create(
            provider=providers[index % PROVIDERS],
            name=f"bench-{index:03d}",
            gpu_model=h100,
            region="us-south-1",
            interconnect="infiniband",
            gpus_per_node=GPUS_PER_NODE,
            node_count=NODES_PER_CLUSTER,
        )
        for index in range(CLUSTERS)
    ]
    nodes_by_cluster: dict[int, list[int]] = {}
    for cluster_id, node_id in Node.objects.order_by("id").values_list("cluster_id", "id"):
        nodes_by_cluster.setdefault(cluster_id, []).append(node_id)
    per_listing = NODES_PER_CLUSTER // LISTINGS_PER_CLUSTER
    listings, reserved = [], []
    for cluster in clusters:
        node_ids = nodes_by_cluster[cluster.pk]
        for index in range(LISTINGS_PER_CLUSTER):
            listings.append(
                Listing(
                    provider_id=cluster.provider_id,
                    cluster=cluster,
                    node_count=per_listing,
                    starts_at=base,
                    ends_at=base + timedelta(hours=HORIZON_HOURS),
                    price_per_gpu_hour=Decimal(f"{rng.uniform(1.85, 2.75):.2f}"),
                    billing_mode=rng.choice(["committed", "metered"]),
                )
            )
            reserved.append(node_ids[index * per_listing : (index + 1) * per_listing])
    Listing.objects.bulk_create(listings, batch_size=1000)
    ListingNode.objects.bulk_create(
        (
            ListingNode(listing=listing, node_id=node_id, starts_at=listing.starts_at, ends_at=listing.ends_at)
            for listing, listed in zip(listings, reserved, strict=True)
            for node_id in listed
        ),
        batch_size=5000,
    )
    return {"listings": len(listings), "nodes": sum(len(ids) for ids in nodes_by_cluster.values())}


class Booker:
    """Books random small windows of random listings as one lab, counting the outcomes.

    ``offers``: the (listing id, provider id, starts_at, ends_at) windows to book in, every
    listing's whole window by default; ``lab_ids``: the labs that book, every lab by default.
    """

    def __init__(
        self, *, lab_index: int, seed: int, offers: list[tuple] | None = None, lab_ids: list[int] | None = None
    ):
        from broker.booking import listing_book
        from core.errors import CapacityUnavailable
        from marketplace.models import Listing, Organization

        self.listing_book, self.capacity_unavailable, self.listing_model = listing_book, CapacityUnavailable, Listing
        self.rng = random.Random(seed)
        labs = Organization.objects.filter(is_lab=True).order_by("id")
        labs = list(labs if lab_ids is None else labs.filter(pk__in=lab_ids))
        self.lab = labs[lab_index % len(labs)]
        if offers is None:
            offers = list(Listing.objects.values_list("id", "provider_id", "starts_at", "ends_at"))
        self.offers = offers
        self.booked = self.conflicts = self.errors = 0
        self.latencies: list[float] = []

    def book_one(self) -> None:
        rng = self.rng
        listing_id, provider_id, starts_at, ends_at = rng.choice(self.offers)
        hours = rng.randint(*BOOKING_HOURS)
        window = int((ends_at - starts_at) / timedelta(hours=1))
        begin = time.perf_counter()
        try:
            self.listing_book(
                lab=self.lab,
                listing=self.listing_model(pk=listing_id, provider_id=provider_id),
                gpu_count=rng.choices(*BOOKING_NODES)[0] * GPUS_PER_NODE,
                starts_at=starts_at + timedelta(hours=rng.randrange(window - hours + 1)),
                duration_hours=hours,
            )
            self.booked += 1
            self.latencies.append(time.perf_counter() - begin)
        except self.capacity_unavailable:
            self.conflicts += 1
        except Exception:
            self.errors += 1
            if self.errors <= 3:
                traceback.print_exc()


def client(index: int, seconds: float, seed: int, barrier, results, offers=None, lab_ids=None) -> None:
    """One booking client: its own process, Django and connection."""
    try:
        setup(default_database=DATABASE, prepare=False)
        booker = Booker(lab_index=index, seed=seed * 1000 + index, offers=offers, lab_ids=lab_ids)
        server_pid = backend_pid()
    except Exception:
        traceback.print_exc()
        barrier.abort()
        raise
    barrier.wait()
    with cpu_meter(server_pid) as cpu, stopwatch() as elapsed:
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            booker.book_one()
    results.put(
        {
            "booked": booker.booked,
            "conflicts": booker.conflicts,
            "errors": booker.errors,
            "seconds": elapsed(),
            "latencies": booker.latencies,
            "client_cpu": cpu["client"],
            "server_cpu": cpu["server"],
        }
    )


def profile_one_client(
    *, count: int, seed: int, offers: list[tuple] | None = None, lab_ids: list[int] | None = None
) -> dict:
    """Book ``count`` times from this process alone under cProfile; print where the CPU goes.

    CPU time, not wall: with 16 clients on a few cores, wall time mostly measures waiting
    for a core. Alone, the client's CPU per booking is what caps 16 of them.
    """
    booker = Booker(lab_index=0, seed=seed, offers=offers, lab_ids=lab_ids)
    profiler = cProfile.Profile(time.process_time)
    with cpu_meter(backend_pid()) as cpu, stopwatch() as elapsed:
        profiler.enable()
        for _ in range(count):
            booker.book_one()
        profiler.disable()
    print_profile(profiler, f"one client, {count} booking attempts, cProfile in CPU time")
    server = cpu["server"]
    return {
        "attempts": count,
        "bookings": booker.booked,
        "ms_per_attempt": round(elapsed() / count * 1000, 2),
        # under the profiler, so higher than unprofiled: compare the split, not the sum
        "cpu_ms_per_attempt": {
            "client": round(cpu["client"] / count * 1000, 2),
            "server": None if server is None else round(server / count * 1000, 2),
        },
    }


def client_outcomes(
    *, clients: int, seconds: float, seed: int, offers: list[tuple] | None = None, lab_ids: list[int] | None = None
) -> list[dict]:
    """Each client's counts, latencies and CPU seconds, booking at once (see ``Booker``)."""
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(clients + 1)
    results = context.Queue()
    processes = [
        context.Process(target=client, args=(index, seconds, seed, barrier, results, offers, lab_ids))
        for index in range(clients)
    ]
    for process in processes:
        process.start()
    barrier.wait(timeout=120)  # every client is set up and connected
    log(f"{clients} clients booking for {seconds:g}s")
    outcomes = [results.get(timeout=seconds + 120) for _ in processes]
    for process in processes:
        process.join(timeout=30)
    return outcomes


def latency_ms(latencies: list[float]) -> dict:
    """p50 and p99 of booking latencies given in seconds, in milliseconds."""
    latencies = sorted(latencies)
    return {
        "p50": round(statistics.median(latencies) * 1000, 2) if latencies else None,
        "p99": round(latencies[int(len(latencies) * 0.99)] * 1000, 2) if latencies else None,
    }


def summary(outcomes: list[dict]) -> dict:
    """The clients' outcomes of one run as figures: bookings per second, latencies, CPU per attempt."""
    latencies = [value for outcome in outcomes for value in outcome["latencies"]]
    booked = sum(outcome["booked"] for outcome in outcomes)
    attempts = booked + sum(outcome["conflicts"] + outcome["errors"] for outcome in outcomes)
    elapsed = max(outcome["seconds"] for outcome in outcomes)
    client_cpu = sum(outcome["client_cpu"] for outcome in outcomes)
    server_cpus = [outcome["server_cpu"] for outcome in outcomes]
    server_cpu = None if None in server_cpus else sum(server_cpus)
    return {
        "bookings": booked,
        "conflicts": sum(outcome["conflicts"] for outcome in outcomes),
        "errors": sum(outcome["errors"] for outcome in outcomes),
        "seconds": round(elapsed, 3),
        "bookings_per_second": round(booked / elapsed, 1),
        "latency_ms": latency_ms(latencies),
        # CPU per attempt, in the client processes (Python, Django) and their PostgreSQL backends:
        # on a small or shared machine these say more than wall-clock rates.
        "cpu_ms_per_attempt": {
            "client": round(client_cpu / attempts * 1000, 2) if attempts else None,
            "server": round(server_cpu / attempts * 1000, 2) if attempts and server_cpu is not None else None,
        },
    }


def run_clients(*, clients: int, seconds: float, seed: int) -> dict:
    return summary(client_outcomes(clients=clients, seconds=seconds, seed=seed))


def oversold() -> bool:
    """Any node sold twice for an hour at one depth (a resale, broker.resale, sells again at the
    next depth hours sold at its own), or sold through another listing's reservation."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            """SELECT count(*) FROM broker_allocation a JOIN broker_allocation b
               ON a.node_id = b.node_id AND a.depth = b.depth AND a.id < b.id
              AND tstzrange(a.starts_at, a.ends_at, '[)') && tstzrange(b.starts_at, b.ends_at, '[)')"""
        )
        double_sold = cursor.fetchone()[0]
        cursor.execute(
            """SELECT count(*) FROM broker_allocation a JOIN marketplace_listingnode ln ON ln.id = a.listing_node_id
               JOIN broker_contract c ON c.id = a.contract_id
               WHERE ln.listing_id <> c.listing_id OR a.listing_id <> c.listing_id"""
        )
        foreign = cursor.fetchone()[0]
    return bool(double_sold or foreign)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--profile", action="store_true", help="then profile one client alone (figures on stderr)")
    parser.add_argument("--no-pgbench", action="store_true", help="skip the reference (no ratio); for quick iterations")
    parser.add_argument("--seed", type=int, default=20250601)
    args = parser.parse_args()

    url = setup(default_database=DATABASE, apps=MIGRATE_APPS)
    truncate()
    log("building the market")
    with stopwatch() as setup_seconds:
        market = build_market(random.Random(args.seed))
        analyze()
    log(f"market ready in {setup_seconds():.1f}s: {market}")
    if not args.no_pgbench:
        pgbench_init(url, scale=16)

    from django.db import connection

    connection.close()  # the clients are separate processes; keep the parent's idle connection out of it
    booking = run_clients(clients=args.clients, seconds=args.seconds, seed=args.seed)
    log(f"booking: {booking}")
    profile = profile_one_client(count=300, seed=args.seed) if args.profile else None
    tps = ratio = None
    if not args.no_pgbench:
        tps = pgbench_tps(url, clients=args.clients, threads=2, seconds=args.seconds)
        log(f"pgbench: {tps:.1f} tps")
        ratio = booking["bookings_per_second"] / tps
    emit(
        {
            "benchmark": "booking",
            "clients": args.clients,
            **booking,
            "pgbench_tps": tps and round(tps, 1),
            "ratio": ratio and round(ratio, 3),
            "target_ratio": TARGET_RATIO,
            "meets_target": ratio is not None and ratio >= TARGET_RATIO,
            "oversold": oversold(),
            **market,
            "profile_one_client": profile,
            "seed": args.seed,
        }
    )


if __name__ == "__main__":
    main()
