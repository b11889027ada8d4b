"""Resale booking against primary booking, on the search benchmark's market, in the same run.

The market is bench/search.py's (1,000 clusters, 100,000 nodes, 5,000 listings, 20,000 sold
blocks), built in a database of its own, ``gpubroker_bench_resale_market``, and reused by
search.py's rule (same shape, under a week old). Each run works on a fresh copy of it (CREATE
DATABASE ... TEMPLATE), since a run adds contracts and listings that the rule would not
reuse. search.py's own database is left alone: its searches must not see these sales.

On the copy, committed listings of 8-GPU nodes selling single hours are paired by how many
of their nodes are free (and in service) for a week from their start or from now; one of each
pair goes to the resale pool, the other to the primary pool (``--pool`` pairs). Each resale
listing's free nodes are bought for that week by a holder lab (one per provider, through
``listing_book``), which resells them all for it (``resale_create``): a listing of depth 1 of
those nodes. Then, as bench/booking.py does, 16 client processes book random small windows
(1-8 hours, 1-2 nodes) inside the pool's weeks for 10 seconds, as 16 labs: the primary pool
(A), then the resale pool (B), in the order A B A B; a round's two phases make the same
choices (same seed, the pools in pair order).

    .venv/bin/python bench/resale_booking.py [--pool 500] [--clients 16] [--seconds 10] [--rounds 2]
        [--rebuild] [--profile] [--explain] [--seed N]

Prints one JSON line. Target: resale bookings per second at least 0.9 x primary bookings per
second. ``--profile`` then books from one process under cProfile on each pool, ``--explain``
prints EXPLAIN ANALYZE of the booking statement on a resale listing and on its primary pair
(rolled back), both on stderr.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import queue
import random
import sys
from datetime import datetime, timedelta
from decimal import Decimal
from urllib.parse import urlsplit

import search
from _common import analyze, database_url, emit, log, server_url, setup, stopwatch, truncate
from booking import GPUS_PER_NODE, LAB_CREDIT_LIMIT, client_outcomes, latency_ms, oversold, profile_one_client, summary

DATABASE = "gpubroker_bench_resale"
MIGRATE_APPS = ("core", "marketplace", "events", "broker", "billing")  # billing: the exposure reads invoices
TARGET_RATIO = 0.9
WINDOW_HOURS = 7 * 24  # what the holders buy and resell, and the bookings fall in
RESALE_MARKUP = Decimal("1.20")
HOLDER_NAME = "Bench resale holder {provider:02d}"


def market_url(url: str) -> str:
    """The untouched market: the working database's name with ``_market``."""
    return server_url(url, f"{urlsplit(url).path.lstrip('/')}_market")


def prepare_market(url: str, rebuild: bool, seed: int, answers) -> None:
    """Build the search benchmark's market at ``url``, or reuse it by search.py's rule.

    Runs in a process of its own, so that no session of this script is left on the database
    when it is copied.
    """
    os.environ["DATABASE_URL"] = url
    setup(default_database="", apps=MIGRATE_APPS)
    counts = search.market_counts()
    reused = not rebuild and search.market_is_reusable(counts)
    build_seconds = 0.0
    if reused:
        log(f"reusing the market: {counts}")
    else:
        log("building the market (bench/search.py's)")
        truncate()
        with stopwatch() as elapsed:
            search.build_market(random.Random(seed))
            analyze(vacuum=("broker_allocation", "marketplace_listingnode", "marketplace_node"))
        build_seconds = elapsed()
        counts = search.market_counts()
        log(f"market ready in {build_seconds:.1f}s: {counts}")
    answers.put({**counts, "market_reused": reused, "build_seconds": round(build_seconds, 1)})


def copy_database(url: str, template_url: str) -> None:
    """Replace the working database with a copy of the template. Bench databases only."""
    import psycopg
    from psycopg import sql

    name, template = (urlsplit(value).path.lstrip("/") for value in (url, template_url))
    if "bench" not in name:
        raise SystemExit(f"each run replaces its database: {name!r} does not look like a bench database")
    with psycopg.connect(server_url(url, "postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template)))


def candidates(*, earliest) -> list[tuple[int, int, int, Decimal, datetime]]:
    """Listings whose free nodes could be bought and resold for a window of WINDOW_HOURS from
    ``earliest`` or their start: (id, provider, nodes free for all of it, price, window start).

    Committed, active, of a provider not suspended, depth 0, 8-GPU nodes, selling single hours
    (as the bookings are), with at least one node in service and free for the whole window.
    """
    from django.db import connection

    from marketplace.models import BillingMode, Listing, Node, Organization

    with connection.cursor() as cursor:
        cursor.execute(
            """WITH window_of AS (
                   SELECT l.id, l.provider_id, l.price_per_gpu_hour, greatest(l.starts_at, %(earliest)s) AS starts_at
                   FROM marketplace_listing l
                   JOIN marketplace_cluster c ON c.id = l.cluster_id
                   JOIN marketplace_organization p ON p.id = l.provider_id
                   WHERE l.status = %(active)s AND p.status <> %(suspended)s AND l.billing_mode = %(committed)s
                     AND l.depth = 0 AND c.gpus_per_node = %(gpus_per_node)s AND l.min_duration_hours = 1
                     AND l.ends_at >= greatest(l.starts_at, %(earliest)s) + %(hours)s * INTERVAL '1 hour'
               )
               SELECT w.id, w.provider_id, count(*), w.price_per_gpu_hour, w.starts_at
               FROM window_of w
               JOIN broker_freespan f ON f.listing_id = w.id AND f.starts_at <= w.starts_at
                AND f.ends_at >= w.starts_at + %(hours)s * INTERVAL '1 hour'
               JOIN marketplace_node n ON n.id = f.node_id AND n.status = %(in_service)s
               GROUP BY w.id, w.provider_id, w.price_per_gpu_hour, w.starts_at
               ORDER BY w.id""",
            {
                "active": Listing.Status.ACTIVE,
                "suspended": Organization.Status.SUSPENDED,
                "committed": BillingMode.COMMITTED,
                "gpus_per_node": GPUS_PER_NODE,
                "in_service": Node.Status.IN_SERVICE,
                "earliest": earliest,
                "hours": WINDOW_HOURS,
            },
        )
        return cursor.fetchall()


def make_pools(rng: random.Random, *, pairs: int) -> dict:
    """The two pools, the resale one resold by its holders; offers in pair order."""
    from broker.booking import listing_book
    from broker.resale import resale_create
    from core.timeutils import next_hour
    from marketplace.models import Listing, Organization

    # Two hours ahead: every booking window still lies ahead when the run ends.
    found = candidates(earliest=next_hour() + timedelta(hours=2))
    if len(found) < 2 * pairs:
        raise SystemExit(f"only {len(found)} listings can be resold for a window; at most --pool {len(found) // 2}")
    # Paired by size: neighbours in size order, ties in random order.
    found.sort(key=lambda row: (row[2], rng.random()))
    chosen = sorted(rng.sample(range(len(found) // 2), pairs))
    primary, resold = [], []
    for index in chosen:
        pair = [found[2 * index], found[2 * index + 1]]
        rng.shuffle(pair)
        primary.append(pair[0])
        resold.append(pair[1])

    holders = {
        provider_id: Organization.objects.create(
            name=HOLDER_NAME.format(provider=provider_id), is_lab=True, credit_limit=None
        )
        for provider_id in sorted({row[1] for row in resold})
    }
    resale_offers = []
    with stopwatch() as elapsed:
        for listing_id, provider_id, nodes, price, starts_at in resold:
            holder = holders[provider_id]
            contract = listing_book(
                lab=holder,
                listing=Listing(pk=listing_id, provider_id=provider_id),
                gpu_count=nodes * GPUS_PER_NODE,
                starts_at=starts_at,
                duration_hours=WINDOW_HOURS,
            )
            ends_at = starts_at + timedelta(hours=WINDOW_HOURS)
            resale = resale_create(
                holder=holder,
                contract_id=contract.pk,
                node_count=nodes,
                starts_at=starts_at,
                ends_at=ends_at,
                price_per_gpu_hour=(price * RESALE_MARKUP).quantize(Decimal("0.01")),
            )
            resale_offers.append((resale.pk, holder.pk, starts_at, ends_at))
    log(f"{pairs} listings' free nodes bought for {WINDOW_HOURS} hours and resold in {elapsed():.1f}s")

    # The market's labs book (16 of them, as bench/booking.py's), with a limit they never reach,
    # so every booking computes its lab's exposure and claims the lab.
    labs = Organization.objects.filter(is_lab=True).exclude(pk__in=[holder.pk for holder in holders.values()])
    labs.update(credit_limit=LAB_CREDIT_LIMIT)
    sizes = sorted(row[2] for row in primary)
    return {
        "offers": {
            "primary": [
                (listing_id, provider_id, starts_at, starts_at + timedelta(hours=WINDOW_HOURS))
                for listing_id, provider_id, _, _, starts_at in primary
            ],
            "resale": resale_offers,
        },
        "pairs": list(zip((row[0] for row in primary), (offer[0] for offer in resale_offers), strict=True)),
        "lab_ids": list(labs.order_by("id").values_list("id", flat=True)),
        "figures": {
            "candidate_listings": len(found),
            "pool_listings": pairs,
            # nodes free for the whole window, on offer in each pool (the pairs have the same)
            "pool_nodes": {
                "primary": sum(sizes),
                "resale": sum(row[2] for row in resold),
                "min": sizes[0],
                "median": sizes[len(sizes) // 2],
                "max": sizes[-1],
            },
            "holder_labs": len(holders),
            "window_hours": WINDOW_HOURS,
        },
    }


def resold_unheld() -> int:
    """Allocations of a resale outside what its resold contract holds, one depth down."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            """SELECT count(*) FROM broker_allocation a JOIN broker_resale r ON r.listing_id = a.listing_id
               WHERE NOT EXISTS (
                   SELECT 1 FROM broker_allocation h
                   WHERE h.contract_id = r.contract_id AND h.node_id = a.node_id AND h.depth = a.depth - 1
                     AND h.starts_at <= a.starts_at AND h.ends_at >= a.ends_at)"""
        )
        return cursor.fetchone()[0]


def combined(outcomes: list[dict], seconds: float) -> dict:
    """One pool's phases together: bookings over the phases' seconds, latencies merged."""
    booked = sum(outcome["booked"] for outcome in outcomes)
    attempts = booked + sum(outcome["conflicts"] + outcome["errors"] for outcome in outcomes)
    server = [outcome["server_cpu"] for outcome in outcomes]
    return {
        "bookings": booked,
        "conflicts": sum(outcome["conflicts"] for outcome in outcomes),
        "errors": sum(outcome["errors"] for outcome in outcomes),
        "seconds": round(seconds, 3),
        "bookings_per_second": round(booked / seconds, 1),
        "latency_ms": latency_ms([value for outcome in outcomes for value in outcome["latencies"]]),
        "cpu_ms_per_attempt": {
            "client": round(sum(outcome["client_cpu"] for outcome in outcomes) / attempts * 1000, 2),
            "server": None if None in server else round(sum(server) / attempts * 1000, 2),
        },
    }


def explain_booking(*, listing_id: int, lab_id: int, starts_at, hours: int, title: str) -> None:
    """EXPLAIN ANALYZE of the booking statement for 8 GPUs of a listing, rolled back, on stderr."""
    from django.db import connection, transaction
    from django.utils import timezone

    from broker.booking import _STATUSES, LISTING_BOOK, LISTING_BOOK_PARAMETERS

    values = [listing_id, lab_id, GPUS_PER_NODE, hours, starts_at, starts_at + timedelta(hours=hours), timezone.now()]
    params = dict(zip(LISTING_BOOK_PARAMETERS, [*values, *_STATUSES], strict=True))
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS) {LISTING_BOOK}", params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
        transaction.set_rollback(True)
    print(f"--- EXPLAIN ANALYZE of the booking statement on the {title} {listing_id} ---\n{plan}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", type=int, default=500, help="listings in each pool")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=int, default=10, help="per phase")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of primary then resale")
    parser.add_argument("--rebuild", action="store_true", help="build the market even if one exists")
    parser.add_argument("--profile", action="store_true", help="then profile one client alone on each pool")
    parser.add_argument("--explain", action="store_true", help="then EXPLAIN ANALYZE a booking of each pool")
    parser.add_argument("--seed", type=int, default=20250601)
    args = parser.parse_args()
    load_at_start = [round(value, 2) for value in os.getloadavg()]

    url = database_url(DATABASE)
    context = multiprocessing.get_context("spawn")
    answers = context.Queue()
    builder = context.Process(target=prepare_market, args=(market_url(url), args.rebuild, args.seed, answers))
    builder.start()
    while True:
        try:
            market = answers.get(timeout=5)
            break
        except queue.Empty:
            if not builder.is_alive():
                raise SystemExit("the market could not be prepared (see above)") from None
    builder.join(timeout=60)
    with stopwatch() as copy_seconds:
        copy_database(url, market_url(url))
    log(f"market copied in {copy_seconds():.1f}s")
    setup(default_database=DATABASE, apps=MIGRATE_APPS)

    from django.db import connection

    rng = random.Random(args.seed)
    pools = make_pools(rng, pairs=args.pool)
    analyze(vacuum=("broker_allocation", "broker_freespan", "marketplace_listingnode"))
    connection.close()  # the clients are separate processes; keep the parent's idle connection out of it

    phases, outcomes, seconds = [], {"primary": [], "resale": []}, {"primary": 0.0, "resale": 0.0}
    for round_index in range(args.rounds):
        for pool in ("primary", "resale"):
            clients = client_outcomes(
                clients=args.clients,
                seconds=args.seconds,
                seed=args.seed + round_index,
                offers=pools["offers"][pool],
                lab_ids=pools["lab_ids"],
            )
            phase = {"round": round_index + 1, "pool": pool, **summary(clients)}
            log(f"{pool}: {phase}")
            phases.append(phase)
            outcomes[pool] += clients
            seconds[pool] += phase["seconds"]
    figures = {pool: combined(outcomes[pool], seconds[pool]) for pool in outcomes}
    rates = {pool: figures[pool]["bookings_per_second"] for pool in figures}
    ratio = rates["resale"] / rates["primary"] if rates["primary"] else None
    rounds = [
        round(resale["bookings_per_second"] / primary["bookings_per_second"], 3)
        for primary, resale in zip(phases[::2], phases[1::2], strict=True)
        if primary["bookings_per_second"]
    ]

    profiles = None
    if args.profile:
        profiles = {
            pool: profile_one_client(count=300, seed=args.seed, offers=pools["offers"][pool], lab_ids=pools["lab_ids"])
            for pool in ("primary", "resale")
        }
    if args.explain:
        for pool, title in (("primary", "primary listing"), ("resale", "resale listing")):
            listing_id, _, window_start, _ = pools["offers"][pool][0]
            starts_at = window_start + timedelta(hours=WINDOW_HOURS // 2)
            explain_booking(
                listing_id=listing_id, lab_id=pools["lab_ids"][0], starts_at=starts_at, hours=4, title=title
            )

    emit(
        {
            "benchmark": "resale_booking",
            "clients": args.clients,
            "seconds_per_phase": args.seconds,
            "primary": figures["primary"],
            "resale": figures["resale"],
            "ratio": ratio and round(ratio, 3),
            "ratio_per_round": rounds,
            "target_ratio": TARGET_RATIO,
            "meets_target": ratio is not None and ratio >= TARGET_RATIO,
            "phases": phases,
            "oversold": oversold(),
            "resold_unheld": resold_unheld(),
            **pools["figures"],
            "market": market,
            "market_copy_seconds": round(copy_seconds(), 1),
            "profile_one_client": profiles,
            "load_average_at_start": load_at_start,
            "seed": args.seed,
        }
    )


if __name__ == "__main__":
    main()
