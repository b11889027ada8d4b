"""Market data latency: the order book, the trades and the daily price index of a GPU model,
on the search benchmark's market (1,000 clusters, 100,000 nodes, 5,000 listings, 20,000
contracts), in a database of its own.

Builds (or reuses, as bench/search.py does) that market, spreads its contracts' signing times
over the last 60 days, adds 2,000 open compute requests, computes the price index of every
completed day with the hourly job's service (timed), then times requests through the HTTP API,
in process, as a lab with a Bearer key:

- book: a random GPU model and window of 1 to 336 hours, a region one time in three;
- trades: a random model, `since` the default (24 hours) three times in four, else up to 31
  days back, a random page size;
- index: a random model, the default 30 days or a random stretch of up to 366.

    .venv/bin/python bench/market_data.py [--rebuild] [--requests N] [--seed N]

Prints one JSON line. Target: p99 under 20 ms for each. Beside them: a trivial authenticated
request's latency (the reference, same run) and the queries per request.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from datetime import timedelta
from decimal import Decimal

from _common import analyze, emit, log, setup, stopwatch, truncate
from search import (
    GPU_MODELS,
    HORIZON_HOURS,
    LAB_NAME,
    REGIONS,
    build_market,
    market_counts,
    market_is_reusable,
    percentile,
)

TARGET_P99_MS = 20
OPEN_REQUESTS = 2_000
SIGNED_OVER_DAYS = 60
BOOK_HOURS = [1, 4, 8, 24, 72, 168, 336]


def sign_over_the_last_days(now) -> None:
    """Contracts signed over the last SIGNED_OVER_DAYS days, spread by id (deterministic)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE broker_contract SET created_at = %s - ((id * 7919) %% %s) * INTERVAL '1 second'",
            [now, SIGNED_OVER_DAYS * 86400],
        )


def open_requests(rng: random.Random, base) -> None:
    from broker.models import ComputeRequest
    from marketplace.models import GpuModel, Organization

    ComputeRequest.objects.all().delete()
    models = {model.slug: model for model in GpuModel.objects.filter(slug__in=GPU_MODELS)}
    labs = list(Organization.objects.filter(is_lab=True))
    requests = []
    for _ in range(OPEN_REQUESTS):
        slug = rng.choices(list(GPU_MODELS), [share for share, _ in GPU_MODELS.values()])[0]
        low, high = GPU_MODELS[slug][1]
        hours = rng.choice([4, 8, 24, 72, 168])
        starts_at = base + timedelta(hours=rng.randrange(1, HORIZON_HOURS - 400))
        requests.append(
            ComputeRequest(
                lab=rng.choice(labs),
                gpu_model=models[slug],
                gpu_count=rng.choice([8, 16, 32, 64, 128, 256, 512]),
                starts_at=starts_at,
                duration_hours=hours,
                ends_at=starts_at + timedelta(hours=hours),
                max_price_per_gpu_hour=Decimal(f"{rng.uniform(low * 0.8, high):.2f}"),
                billing_mode=rng.choice(["committed", "metered"]),
                region=rng.choice(REGIONS) if rng.random() < 0.3 else "",
            )
        )
    ComputeRequest.objects.bulk_create(requests, batch_size=1000)


def iso(moment) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def random_request(rng: random.Random, kind: str, base, today) -> tuple[str, dict]:
    slug = rng.choices(list(GPU_MODELS), [share for share, _ in GPU_MODELS.values()])[0]
    params: dict[str, object] = {}
    if kind == "book":
        start = base + timedelta(hours=rng.randrange(0, HORIZON_HOURS - 400))
        params = {"starts_at": iso(start), "ends_at": iso(start + timedelta(hours=rng.choice(BOOK_HOURS)))}
        if rng.random() < 1 / 3:
            params["region"] = rng.choice(REGIONS)
    elif kind == "trades":
        if rng.random() < 0.25:
            params["since"] = iso(base - timedelta(hours=rng.randrange(25, 31 * 24 - 2)))
        params["page_size"] = rng.choice([10, 50, 50, 100])
    elif rng.random() < 0.5:
        last = today - timedelta(days=rng.randrange(1, 30))
        params = {"from": str(last - timedelta(days=rng.randrange(0, 366))), "to": str(last)}
    return f"/api/v1/market/{slug}/{kind}", params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rebuild", action="store_true", help="build the market even if one exists")
    parser.add_argument("--requests", type=int, default=300, help="timed requests of each kind")
    parser.add_argument("--seed", type=int, default=20261203)
    args = parser.parse_args()

    setup(default_database="gpubroker_bench_market", apps=("core", "marketplace", "broker", "market"))
    from django.db import connection
    from django.db.models import Min
    from django.test import Client
    from django.test.utils import CaptureQueriesContext
    from django.utils import timezone

    from core.timeutils import next_hour
    from market.index import price_index_catch_up
    from marketplace.models import Listing, Organization
    from marketplace.services import api_key_create

    rng = random.Random(args.seed)
    counts = market_counts()
    reused = not args.rebuild and market_is_reusable(counts)
    if reused:
        log(f"reusing the market: {counts}")
    else:
        log("building the market")
        truncate()
        build_market(rng)
        counts = market_counts()
        log(f"market ready: {counts}")
    now = timezone.now()
    base = max(Listing.objects.aggregate(first=Min("starts_at"))["first"], next_hour())
    sign_over_the_last_days(now)
    open_requests(rng, base)
    truncate(["market_priceindex", "market_priceindexday"])
    analyze(vacuum=("broker_allocation", "marketplace_listingnode", "marketplace_node", "broker_contract"))
    with stopwatch() as elapsed:
        days = price_index_catch_up()
    index_seconds = elapsed()
    log(f"price index: {len(days)} days in {index_seconds:.2f} s")
    with stopwatch() as elapsed:
        again = price_index_catch_up()
    catch_up_again_seconds = elapsed()
    assert again == []

    lab = Organization.objects.get(name=LAB_NAME)
    client = Client(HTTP_AUTHORIZATION=f"Bearer {api_key_create(organization=lab, name='bench-market').secret}")
    today = now.date()
    kinds = ("book", "trades", "index")
    plans = {kind: [random_request(rng, kind, base, today) for _ in range(args.requests)] for kind in kinds}
    for kind in kinds:  # warm the connection, the caches and the key's last use
        for path, params in plans[kind][:20]:
            assert client.get(path, params).status_code == 200, (path, params)

    reference_ms = []
    for _ in range(200):
        with stopwatch() as elapsed:
            assert client.get("/api/v1/organization").status_code == 200
        reference_ms.append(elapsed() * 1000)

    figures = {}
    for kind in kinds:
        latencies_ms, queries, sizes = [], [], []
        for path, params in plans[kind]:
            with CaptureQueriesContext(connection) as captured, stopwatch() as elapsed:
                response = client.get(path, params)
            if response.status_code != 200:
                raise SystemExit(f"{path} {params} answered {response.status_code}: {response.content[:300]!r}")
            latencies_ms.append(elapsed() * 1000)
            touches = sum(1 for q in captured.captured_queries if q["sql"].startswith('UPDATE "marketplace_apikey"'))
            queries.append(len(captured) - touches)
            body = response.json()
            sizes.append(
                len(body["asks"]) + len(body["bids"])
                if kind == "book"
                else body["count"]
                if kind == "trades"
                else len(body["days"])
            )
        p99 = percentile(latencies_ms, 0.99)
        figures[kind] = {
            "p50_ms": round(percentile(latencies_ms, 0.50), 2),
            "p90_ms": round(percentile(latencies_ms, 0.90), 2),
            "p99_ms": round(p99, 2),
            "max_ms": round(max(latencies_ms), 2),
            "mean_ms": round(statistics.fmean(latencies_ms), 2),
            "meets_target": p99 < TARGET_P99_MS,
            "queries_per_request": sorted(set(queries)),
            "p50_over_reference": round(percentile(latencies_ms, 0.50) / percentile(reference_ms, 0.50), 1),
            # book: price levels answered (both sides); trades: trades in the window; index: days
            "answer_size_mean": round(statistics.fmean(sizes), 1),
        }
        log(f"{kind}: {figures[kind]}")

    emit(
        {
            "benchmark": "market_data",
            **counts,
            "open_requests": OPEN_REQUESTS,
            "requests_per_kind": args.requests,
            "target_p99_ms": TARGET_P99_MS,
            **figures,
            "reference_request_p50_ms": round(percentile(reference_ms, 0.50), 2),
            "reference_request_p99_ms": round(percentile(reference_ms, 0.99), 2),
            "price_index_days": len(days),
            "price_index_seconds": round(index_seconds, 3),
            "price_index_again_seconds": round(catch_up_again_seconds, 4),
            "market_reused": reused,
            "seed": args.seed,
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
    )


if __name__ == "__main__":
    main()
