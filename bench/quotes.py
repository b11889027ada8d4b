"""Quotes on the matching benchmark's market: how long asking for a quote and accepting it take.

Builds the market of bench/matching.py (2,000 listings on 400 clusters, four GPU models) and
lets the engine fill its 10,000 open requests, so the book is as busy as after a day of
trading. Then labs ask for quotes on random terms (drawn as that benchmark draws its
requests) and accept every other quote they get, one call at a time, each timed. For
comparison it times loading each segment's whole book, as a matching run does: what every
quote would cost if it loaded its segment.

    .venv/bin/python bench/quotes.py [--quotes 400] [--seed N]

Prints one JSON line. Target: a quote answers in tens of milliseconds (median under 50 ms).
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from datetime import timedelta

from _common import analyze, emit, log, setup, stopwatch, truncate
from matching import HORIZON_HOURS, OVERSELL_CHECKS, REGIONS, REQUEST_GPUS, REQUEST_HOURS, SEGMENTS, build_market
from matching import run_checks as count_violations

DATABASE = "gpubroker_bench_quotes"
TARGET_MEDIAN_MS = 50


def milliseconds(values: list[float]) -> dict:
    if not values:
        return {}
    ordered = sorted(values)
    return {
        "median": round(statistics.median(ordered) * 1000, 2),
        "p95": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))] * 1000, 2),
        "max": round(ordered[-1] * 1000, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quotes", type=int, default=400)
    parser.add_argument("--seed", type=int, default=20250601)
    args = parser.parse_args()

    setup(default_database=DATABASE, apps=("core", "marketplace", "events", "broker", "billing"))

    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from broker.matching import OrderBook, segment_match
    from broker.models import Quote
    from broker.quotes import quote_accept, quote_create
    from broker.selectors import segments_with_open_requests
    from core.errors import DomainError
    from core.timeutils import next_hour
    from marketplace.models import GpuModel, Organization

    rng = random.Random(args.seed)
    truncate()  # and, by CASCADE, the quotes and events of the organizations
    log("building the market")
    market = build_market(rng)
    analyze()
    log("filling its open requests")
    with stopwatch() as matching_seconds:
        for gpu_model_id in segments_with_open_requests():
            segment_match(gpu_model_id=gpu_model_id, wait=True)
    analyze(vacuum=("broker_allocation", "broker_freespan"))
    log(f"market ready, matched in {matching_seconds():.1f}s: {market}")

    gpu_models = {model.slug: model for model in GpuModel.objects.filter(slug__in=SEGMENTS)}
    slugs = list(SEGMENTS)
    shares = [SEGMENTS[slug][0] for slug in slugs]
    labs = list(Organization.objects.filter(is_lab=True).order_by("id"))

    segment_loads = []
    for model in gpu_models.values():
        book = OrderBook(model.pk)
        with stopwatch() as seconds:
            book.load()
        segment_loads.append(seconds())

    base = next_hour()

    def terms() -> dict:
        slug = rng.choices(slugs, shares)[0]
        gpu_count = rng.choices(*REQUEST_GPUS)[0]
        hours = rng.choices(*REQUEST_HOURS)[0]
        return {
            "lab": rng.choice(labs),
            "gpu_model": gpu_models[slug],
            "gpu_count": gpu_count,
            "starts_at": base + timedelta(hours=rng.randrange(1, HORIZON_HOURS - hours)),
            "duration_hours": hours,
            "billing_mode": rng.choice(["committed", "metered"]),
            "colocated": rng.random() < (0.8 if gpu_count >= 64 else 0.5),
            "region": rng.choice(REGIONS) if rng.random() < 0.25 else "",
        }

    with CaptureQueriesContext(connection) as queries:
        for _ in range(20):
            try:
                quote_create(**terms())
                break
            except DomainError:
                continue
    queries_per_quote = len(queries.captured_queries)

    quote_seconds, accept_seconds = [], []
    quoted = refused = accepted = accept_refused = 0
    refusals: dict[str, int] = {}
    for index in range(args.quotes):
        asked = terms()
        begin = time.perf_counter()
        try:
            quote = quote_create(**asked)
            quote_seconds.append(time.perf_counter() - begin)
            quoted += 1
        except DomainError as refusal:
            quote_seconds.append(time.perf_counter() - begin)
            refused += 1
            refusals[refusal.code] = refusals.get(refusal.code, 0) + 1
            continue
        if index % 2:
            continue
        begin = time.perf_counter()
        try:
            quote_accept(quote=quote, lab=asked["lab"])
            accepted += 1
        except DomainError:
            accept_refused += 1
        accept_seconds.append(time.perf_counter() - begin)
    log(f"{quoted} quoted, {refused} refused {refusals}; {accepted} accepted, {accept_refused} refused")

    oversell = count_violations(OVERSELL_CHECKS)
    median_ms = statistics.median(quote_seconds) * 1000
    emit(
        {
            "benchmark": "quotes",
            "listings": market["listings"],
            "nodes": market["nodes"],
            "quotes_asked": args.quotes,
            "quoted": quoted,
            "refused": refusals,
            "quote_ms": milliseconds(quote_seconds),
            "queries_per_quote": queries_per_quote,
            "target_median_ms": TARGET_MEDIAN_MS,
            "meets_target": median_ms < TARGET_MEDIAN_MS,
            "accepted": accepted,
            "accept_refused": accept_refused,
            "accept_ms": milliseconds(accept_seconds),
            "whole_segment_load_ms": milliseconds(segment_loads),
            "quotes_stored": Quote.objects.count(),
            "oversold": any(oversell.values()),
            "seed": args.seed,
        }
    )


if __name__ == "__main__":
    main()
