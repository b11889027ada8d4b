"""Matching engine throughput: 10,000 open requests against 2,000 listings, on PostgreSQL.

Builds a two-week market (400 clusters of 8-GPU nodes, four GPU models, six regions, three
interconnects, both billing modes), writes 10,000 open requests in bulk (so nothing is
matched while loading), then times ``segment_match`` for every segment end to end, database
writes included. Afterwards SQL checks that nothing was oversold.

    .venv/bin/python bench/matching.py [--profile] [--seed N]

Prints one JSON line. Target: at least 10,000 requests per second.
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import random
import time
from collections import defaultdict
from contextlib import contextmanager
from datetime import timedelta
from decimal import Decimal

from _common import analyze, backend_pid, cpu_meter, emit, log, print_profile, setup, stopwatch, truncate

TARGET_REQUESTS_PER_SECOND = 10000
LISTINGS = 2000
CLUSTERS = 400
LISTINGS_PER_CLUSTER = LISTINGS // CLUSTERS
REQUESTS = 10_000
PROVIDERS = 24
LABS = 60
HORIZON_HOURS = 14 * 24
GPUS_PER_NODE = 8

# slug: (share of clusters and requests, price range per GPU-hour)
SEGMENTS = {
    "h100-sxm-80gb": (0.45, (1.85, 2.75)),
    "h200-sxm-141gb": (0.20, (2.30, 3.10)),
    "a100-sxm-80gb": (0.20, (1.50, 2.10)),
    "b200": (0.15, (2.80, 3.50)),
}
REGIONS = ["us-east-1", "us-south-1", "us-west-2", "eu-west-1", "eu-north-1", "ap-northeast-1"]
INTERCONNECTS = (["infiniband", "roce", "ethernet"], [0.6, 0.25, 0.15])
CLUSTER_NODES = ([16, 24, 32, 48, 64], [0.2, 0.25, 0.25, 0.15, 0.15])
REQUEST_GPUS = ([8, 16, 24, 32, 48, 64, 96, 128], [0.2, 0.18, 0.07, 0.18, 0.07, 0.14, 0.06, 0.1])
REQUEST_HOURS = ([4, 8, 12, 24, 48, 72, 96, 168], [0.1, 0.15, 0.15, 0.2, 0.15, 0.1, 0.08, 0.07])


def price(value: float) -> Decimal:
    return Decimal(f"{value:.2f}")


def split_hours(rng: random.Random, start: int, end: int, parts: int) -> list[tuple[int, int]]:
    """Cut [start, end) into ``parts`` consecutive windows, at 12-hour steps."""
    cuts = sorted(rng.sample(range(start + 24, end - 23, 12), parts - 1)) if parts > 1 else []
    bounds = [start, *cuts, end]
    return list(zip(bounds, bounds[1:], strict=False))


def build_market(rng: random.Random) -> dict:
    """Providers, labs, clusters (through the service), listings and their reserved nodes (in bulk)."""
    from broker.models import ComputeRequest
    from core.timeutils import next_hour
    from marketplace.models import GpuModel, Listing, ListingNode, Node, Organization
    from marketplace.services import cluster_create

    base = next_hour()
    gpu_models = {model.slug: model for model in GpuModel.objects.filter(slug__in=SEGMENTS)}
    slugs = list(SEGMENTS)
    shares = [SEGMENTS[slug][0] for slug in slugs]

    providers = Organization.objects.bulk_create(
        Organization(name=f"Bench provider {index:02d}", is_provider=True) for index in range(PROVIDERS)
    )
    # A limit the labs never reach: every fill is checked against its lab's exposure.
    labs = Organization.objects.bulk_create(
        Organization(name=f"Bench lab {index:02d}", is_lab=True, credit_limit=Decimal("1000000000.00"))
        for index in range(LABS)
    )

    clusters = []
    for index in range(CLUSTERS):
        clusters.append(
            cluster_create(
                provider=providers[index % PROVIDERS],
                name=f"bench-{index:03d}",
                gpu_model=gpu_models[rng.choices(slugs, shares)[0]],
                region=rng.choice(REGIONS),
                interconnect=rng.choices(*INTERCONNECTS)[0],
                gpus_per_node=GPUS_PER_NODE,
                node_count=rng.choices(*CLUSTER_NODES)[0],
            )
        )
    nodes_by_cluster: dict[int, list[int]] = {}
    for cluster_id, node_id in Node.objects.order_by("id").values_list("cluster_id", "id"):
        nodes_by_cluster.setdefault(cluster_id, []).append(node_id)

    # Each cluster's nodes are split into groups; a group is offered as consecutive listings
    # over the two weeks, so no node is ever in two listings for the same hour.
    slug_by_model_id = {model.pk: slug for slug, model in gpu_models.items()}
    listings: list[Listing] = []
    reserved: list[list[int]] = []
    for cluster in clusters:
        node_ids = nodes_by_cluster[cluster.pk]
        groups = rng.choice([1, 2, 2, 3])
        sizes = [len(node_ids) // groups] * groups
        sizes[0] += len(node_ids) - sum(sizes)
        per_group = [1] * groups
        for _ in range(LISTINGS_PER_CLUSTER - groups):
            per_group[rng.randrange(groups)] += 1
        low, high = SEGMENTS[slug_by_model_id[cluster.gpu_model_id]][1]
        offset = 0
        for size, count in zip(sizes, per_group, strict=True):
            group = node_ids[offset : offset + size]
            offset += size
            start = rng.choice([0, 0, 0, 12, 24, 48])
            for window_start, window_end in split_hours(rng, start, HORIZON_HOURS, count):
                # Most listings offer the whole group; some hold a few nodes back.
                listed = group if rng.random() < 0.8 else group[: max(2, len(group) * 3 // 4)]
                hours = window_end - window_start
                listings.append(
                    Listing(
                        provider_id=cluster.provider_id,
                        cluster=cluster,
                        node_count=len(listed),
                        starts_at=base + timedelta(hours=window_start),
                        ends_at=base + timedelta(hours=window_end),
                        price_per_gpu_hour=price(rng.uniform(low, high)),
                        min_duration_hours=rng.choices([1, 8, 24], [0.8, 0.1, 0.1])[0] if hours >= 24 else 1,
                        billing_mode=rng.choice(["committed", "metered"]),
                    )
                )
                reserved.append(listed)
    Listing.objects.bulk_create(listings, batch_size=1000)
    ListingNode.objects.bulk_create(
        (
            ListingNode(listing=listing, node_id=node_id, starts_at=listing.starts_at, ends_at=listing.ends_at)
            for listing, listed in zip(listings, reserved, strict=True)
            for node_id in listed
        ),
        batch_size=5000,
    )

    # Requests are bulk-created: compute_request_create would enqueue matching on commit.
    requests = []
    for _ in range(REQUESTS):
        slug = rng.choices(slugs, shares)[0]
        low, high = SEGMENTS[slug][1]
        gpu_count = rng.choices(*REQUEST_GPUS)[0]
        hours = rng.choices(*REQUEST_HOURS)[0]
        starts_at = base + timedelta(hours=rng.randrange(1, HORIZON_HOURS - hours))
        requests.append(
            ComputeRequest(
                lab=rng.choice(labs),
                gpu_model=gpu_models[slug],
                gpu_count=gpu_count,
                starts_at=starts_at,
                duration_hours=hours,
                ends_at=starts_at + timedelta(hours=hours),
                max_price_per_gpu_hour=price(rng.uniform(low - 0.15, high + 0.05)),
                billing_mode=rng.choice(["committed", "metered"]),
                colocated=rng.random() < (0.8 if gpu_count >= 64 else 0.5),
                region=rng.choice(REGIONS) if rng.random() < 0.25 else "",
                interconnect=rng.choices(["", "infiniband", "roce"], [0.65, 0.3, 0.05])[0],
            )
        )
    ComputeRequest.objects.bulk_create(requests, batch_size=2000)
    return {
        "clusters": len(clusters),
        "nodes": sum(len(ids) for ids in nodes_by_cluster.values()),
        "listings": len(listings),
        "requests": len(requests),
        "segments": sorted(gpu_models[slug].pk for slug in slugs),
    }


# Each query counts violations; every one must be 0.
OVERSELL_CHECKS = {
    # (a) one node, two allocations, overlapping hours
    "node_double_sold": """
        SELECT count(*) FROM broker_allocation a
        JOIN broker_allocation b ON a.node_id = b.node_id AND a.id < b.id
         AND tstzrange(a.starts_at, a.ends_at, '[)') && tstzrange(b.starts_at, b.ends_at, '[)')""",
    # (b) an hour in which a listing has more nodes allocated than it offers
    "listing_hour_oversold": """
        SELECT count(*) FROM (
            SELECT c.listing_id, hour, count(*) AS allocated
            FROM broker_allocation a
            JOIN broker_contract c ON c.id = a.contract_id
            CROSS JOIN LATERAL generate_series(a.starts_at, a.ends_at - interval '1 hour', interval '1 hour') AS hour
            WHERE a.ends_at > a.starts_at
            GROUP BY c.listing_id, hour
        ) sold JOIN marketplace_listing l ON l.id = sold.listing_id
        WHERE sold.allocated > l.node_count""",
    # (b') an allocation through another listing's node, naming another listing, or outside its
    # listing's window
    "allocation_outside_listing": """
        SELECT count(*) FROM broker_allocation a
        JOIN broker_contract c ON c.id = a.contract_id
        JOIN marketplace_listingnode ln ON ln.id = a.listing_node_id
        JOIN marketplace_listing l ON l.id = c.listing_id
        WHERE ln.listing_id <> c.listing_id OR ln.node_id <> a.node_id OR a.listing_id <> c.listing_id
           OR a.starts_at < l.starts_at OR a.ends_at > l.ends_at""",
    # (c) a filled request whose contracts do not add up to its GPUs
    "filled_request_gpu_mismatch": """
        SELECT count(*) FROM broker_computerequest r
        LEFT JOIN (SELECT request_id, sum(gpu_count) AS gpus FROM broker_contract GROUP BY request_id) s
          ON s.request_id = r.id
        WHERE r.status = 'filled' AND coalesce(s.gpus, 0) <> r.gpu_count""",
}
TERMS_CHECKS = {
    "open_request_with_contracts": """
        SELECT count(*) FROM broker_computerequest r
        WHERE r.status <> 'filled' AND EXISTS (SELECT 1 FROM broker_contract c WHERE c.request_id = r.id)""",
    "contract_nodes_mismatch": """
        SELECT count(*) FROM broker_contract c JOIN marketplace_cluster k ON k.id = c.cluster_id
        WHERE c.gpu_count <> c.node_count * k.gpus_per_node
           OR c.node_count <> (SELECT count(*) FROM broker_allocation a WHERE a.contract_id = c.id)""",
    "contract_terms_mismatch": """
        SELECT count(*) FROM broker_contract c
        JOIN broker_computerequest r ON r.id = c.request_id
        JOIN marketplace_listing l ON l.id = c.listing_id
        WHERE c.price_per_gpu_hour > r.max_price_per_gpu_hour OR c.price_per_gpu_hour <> l.price_per_gpu_hour
           OR c.billing_mode <> r.billing_mode OR c.starts_at <> r.starts_at OR c.ends_at <> r.ends_at
           OR c.cluster_id <> l.cluster_id""",
    "colocated_request_split": """
        SELECT count(*) FROM (
            SELECT r.id FROM broker_computerequest r JOIN broker_contract c ON c.request_id = r.id
            WHERE r.colocated GROUP BY r.id HAVING count(DISTINCT c.cluster_id) > 1
        ) split""",
}


def run_checks(queries: dict[str, str]) -> dict[str, int]:
    from django.db import connection

    found = {}
    with connection.cursor() as cursor:
        for name, query in queries.items():
            cursor.execute(query)
            found[name] = cursor.fetchone()[0]
    return found


class Breakdown:
    """Wall time spent in the engine's phases and inside database calls, while installed.

    Wraps the engine's own functions (loading, refreshing, planning, writing) and every SQL
    statement; costs a few microseconds per call, so the figures stay honest. ``sql_*`` time
    (client-side query building, the round trip and the server's work) is part of the phase
    that issued it; COPY is not seen by the wrapper. A phase the engine no longer has is skipped.
    """

    PHASES = [("OrderBook", "load"), ("OrderBook", "refresh"), ("OrderBook", "plan"), (None, "_write_fills")]

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.statements: dict[str, int] = defaultdict(int)

    def _timed(self, name: str, function):
        seconds = self.seconds

        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                seconds[name] += time.perf_counter() - start

        return wrapper

    def _sql(self, execute, sql, params, many, context):
        kind = f"sql_{sql.split(None, 1)[0].lower()}"
        start = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            self.seconds[kind] += time.perf_counter() - start
            self.statements[kind] += 1

    @contextmanager
    def installed(self):
        from django.db import connection

        from broker import matching

        originals = []
        for owner_name, name in self.PHASES:
            owner = getattr(matching, owner_name) if owner_name else matching
            if not hasattr(owner, name):
                continue
            originals.append((owner, name, getattr(owner, name)))
            setattr(owner, name, self._timed(name.lstrip("_"), getattr(owner, name)))
        try:
            with connection.execute_wrapper(self._sql):
                yield self
        finally:
            for owner, name, original in originals:
                setattr(owner, name, original)

    def figures(self) -> dict:
        return {
            "seconds": {name: round(value, 3) for name, value in sorted(self.seconds.items())},
            "statements": dict(sorted(self.statements.items())),
        }


def _match_one(gpu_model_id: int) -> dict:
    from django.db import connections

    from broker.matching import segment_match

    try:
        with stopwatch() as seconds:
            result = segment_match(gpu_model_id=gpu_model_id, wait=True)
        return {**result.__dict__, "seconds": round(seconds(), 3)}
    finally:
        connections.close_all()


def match_in_parallel(segments: list[int], workers: int) -> tuple[list[dict], float]:
    """Match segments in separate processes, largest first, like several Celery workers."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from django.db import connections

    from broker.models import ComputeRequest

    sizes = {
        gpu_model_id: ComputeRequest.objects.filter(gpu_model_id=gpu_model_id, status="open").count()
        for gpu_model_id in segments
    }
    connections.close_all()  # children open their own
    ordered = sorted(segments, key=lambda segment: -sizes[segment])
    with stopwatch() as seconds, ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        results = list(pool.map(_match_one, ordered))
    for result in results:
        log(f"segment {result['segment']}: {result}")
    return results, seconds()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", action="store_true", help="run the matching under cProfile (slower)")
    parser.add_argument("--seed", type=int, default=20250601)
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="processes matching different segments at once, as Celery workers do (1: all in this process)",
    )
    args = parser.parse_args()

    setup(default_database="gpubroker_bench_broker", apps=("core", "marketplace", "events", "broker", "billing"))

    from broker.matching import segment_match
    from broker.selectors import segments_with_open_requests

    rng = random.Random(args.seed)
    truncate()
    log("building the market")
    with stopwatch() as setup_seconds:
        market = build_market(rng)
        analyze()
    log(f"market ready in {setup_seconds():.1f}s: {market}")

    segments = segments_with_open_requests()
    profiler = cProfile.Profile() if args.profile else None
    breakdown = Breakdown()
    server_pid = backend_pid()
    if args.workers > 1 and not args.profile:
        per_segment, elapsed = match_in_parallel(segments, args.workers)
        cpu = {"client": None, "server": None}  # spread over several processes
    else:
        per_segment = []
        with breakdown.installed(), cpu_meter(server_pid) as cpu, stopwatch() as match_seconds:
            for gpu_model_id in segments:
                with stopwatch() as seconds:
                    if profiler:
                        profiler.enable()
                    result = segment_match(gpu_model_id=gpu_model_id, wait=True)
                    if profiler:
                        profiler.disable()
                per_segment.append({**result.__dict__, "seconds": round(seconds(), 3)})
                log(f"segment {gpu_model_id}: {result.__dict__} in {seconds():.2f}s")
        elapsed = match_seconds()
    if profiler:
        print_profile(profiler, "segment_match under cProfile (wall time: database waits show as psycopg wait)")

    log("checking for overselling")
    oversell = run_checks(OVERSELL_CHECKS)
    terms = run_checks(TERMS_CHECKS)
    processed = sum(item["requests_seen"] for item in per_segment)
    filled = sum(item["requests_filled"] for item in per_segment)
    rate = processed / elapsed
    emit(
        {
            "benchmark": "matching",
            "listings": market["listings"],
            "clusters": market["clusters"],
            "nodes": market["nodes"],
            "requests": processed,
            "seconds": round(elapsed, 3),
            "requests_per_second": round(rate, 1),
            "target_requests_per_second": TARGET_REQUESTS_PER_SECOND,
            "meets_target": rate >= TARGET_REQUESTS_PER_SECOND,
            "requests_filled": filled,
            "fill_rate": round(filled / processed, 3) if processed else 0,
            "contracts": sum(item["contracts_created"] for item in per_segment),
            "allocations": sum(item["nodes_allocated"] for item in per_segment),
            "retries": sum(item["retries"] for item in per_segment),
            "oversold": any(oversell.values()),
            "oversell_checks": oversell,
            "terms_violations": terms,
            # Where the wall clock went: this process (Python, Django) and its PostgreSQL backend.
            "cpu_seconds": {side: value and round(value, 3) for side, value in cpu.items()},
            # The engine waits on each statement, so on an unshared machine this is about its wall-clock rate.
            "requests_per_cpu_second": cpu["server"] and round(processed / (cpu["client"] + cpu["server"]), 1),
            "breakdown": breakdown.figures(),
            "segments": per_segment,
            "workers": 1 if args.profile else args.workers,
            "profiled": bool(profiler),
            "seed": args.seed,
        }
    )


if __name__ == "__main__":
    main()
