"""Usage ingestion throughput: N usage records through POST /api/v1/usage, against COPY.

Builds a provider with 200 metered contracts (8-64 GPUs each) whose windows cover last
month, generates N valid usage records in that month (per-node hourly records, and
per-contract ones for a quarter of the contracts), JSON-encodes them beforehand in batches
of 1,000, then times:

- ``api``: every batch POSTed to the API in-process (django.test.Client, Bearer key): the
  whole server side (middleware, authentication, JSON parsing, the service, the response);
- ``http`` (unless --no-http): the same through gunicorn on 127.0.0.1, one client thread
  per worker;
- ``service``: ``usage_ingest`` called directly on the decoded batches;
- ``copy``: the same rows loaded with PostgreSQL COPY into the same, emptied table.

Each phase starts from an empty usage table. One batch is sent again at the end to show
that duplicates are detected. Below target in-process (or with --profile) the API run is
profiled and cProfile's top 25 go to stderr.

    .venv/bin/python bench/usage_ingest.py [--records N] [--no-http] [--profile] [--seed N]

Prints one JSON line. Target: at least 20,000 records per second, and at least 20% of COPY.
The headline ``records_per_second`` and ``ratio`` (to the same COPY) are the ``http`` run, as
production serves the API with several workers; ``measured`` says so. With --no-http they are
the in-process run. The in-process figures (one request at a time: Python and PostgreSQL
take turns) are always in ``in_process_records_per_second`` and ``in_process_ratio``, and
``cpu_ratio`` compares CPU time per record of the in-process run with COPY's.
"""

from __future__ import annotations

import argparse
import cProfile
import http.client
import io
import json
import os
import pstats
import random
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from _common import (
    MARKET_TABLES,
    ROOT,
    analyze,
    backend_pid,
    emit,
    log,
    process_cpu_seconds,
    setup,
    stopwatch,
    truncate,
)

TARGET_RECORDS_PER_SECOND = 20_000
TARGET_SHARE_OF_COPY = 0.20
CONTRACTS = 200
CONTRACTS_PER_CLUSTER = 50
LABS = 20
GPUS_PER_NODE = 8
BATCH = 1000
PATH = "/api/v1/usage"
BILLING_TABLES = [
    "billing_usagerecord",
    "billing_creditnoteline",
    "billing_creditnote",
    "billing_payment",
    "billing_invoiceline",
    "billing_invoice",
    "billing_payoutstatement",
    "billing_ledgerentry",
    "billing_ledgertransaction",
    "billing_account",
    "billing_billingperiod",
    "billing_documentsequence",
]
USAGE_COLUMNS = (
    "provider_id",
    "event_id",
    "contract_id",
    "node_id",
    "started_at",
    "ended_at",
    "gpu_seconds",
    "period",
    "received_at",
)


def last_month(now: datetime) -> tuple[date, datetime, datetime]:
    first_of_this = datetime(now.year, now.month, 1, tzinfo=UTC)
    start = (first_of_this - timedelta(days=1)).replace(day=1)
    return start.date(), start, first_of_this


def build_market(rng: random.Random, period_start: datetime, period_end: datetime):
    """One provider (with an API key), labs, and 200 metered contracts with their listings,
    reserved nodes and allocations, in bulk: the services refuse windows in the past."""
    from django.utils import timezone

    from broker.models import Allocation, Contract
    from marketplace.models import GpuModel, Listing, ListingNode, Node, Organization
    from marketplace.services import cluster_create, organization_create

    provider, issued = organization_create(name="Bench ingest provider", role="provider")
    labs = Organization.objects.bulk_create(
        Organization(name=f"Bench ingest lab {index:02d}", is_lab=True) for index in range(LABS)
    )
    gpu_model = GpuModel.objects.filter(slug="h100-sxm-80gb").first() or GpuModel.objects.order_by("id").first()
    node_counts = [rng.randint(1, 8) for _ in range(CONTRACTS)]  # 8 to 64 GPUs

    nodes: list[int] = []
    hostnames: dict[int, str] = {}
    cluster_of: dict[int, int] = {}
    for first in range(0, CONTRACTS, CONTRACTS_PER_CLUSTER):
        cluster = cluster_create(
            provider=provider,
            name=f"bench-ingest-{first // CONTRACTS_PER_CLUSTER:02d}",
            gpu_model=gpu_model,
            region="us-east-1",
            interconnect="infiniband",
            gpus_per_node=GPUS_PER_NODE,
            node_count=sum(node_counts[first : first + CONTRACTS_PER_CLUSTER]),
        )
        for node_id, hostname in Node.objects.filter(cluster=cluster).order_by("id").values_list("id", "hostname"):
            nodes.append(node_id)
            hostnames[node_id] = hostname
            cluster_of[node_id] = cluster.pk

    now = timezone.now()
    listings, contract_nodes, contracts = [], [], []
    offset = 0
    for index, count in enumerate(node_counts):
        node_ids = nodes[offset : offset + count]
        offset += count
        starts_at = period_start - timedelta(hours=rng.choice([0, 0, 24, 72, 240]))
        ends_at = period_end + timedelta(hours=rng.choice([0, 24, 96, 240]))
        price = Decimal(f"{rng.uniform(1.85, 2.75):.2f}")
        contract_nodes.append(node_ids)
        listings.append(
            Listing(
                provider=provider,
                cluster_id=cluster_of[node_ids[0]],
                node_count=count,
                starts_at=starts_at,
                ends_at=ends_at,
                price_per_gpu_hour=price,
                billing_mode="metered",
            )
        )
        contracts.append(
            Contract(
                lab=labs[index % LABS],
                provider=provider,
                gpu_count=count * GPUS_PER_NODE,
                node_count=count,
                starts_at=starts_at,
                ends_at=ends_at,
                price_per_gpu_hour=price,
                billing_mode="metered",
                status="completed" if ends_at <= now else "active",
            )
        )
    Listing.objects.bulk_create(listings)
    listing_nodes = ListingNode.objects.bulk_create(
        ListingNode(listing=listing, node_id=node_id, starts_at=listing.starts_at, ends_at=listing.ends_at)
        for listing, node_ids in zip(listings, contract_nodes, strict=True)
        for node_id in node_ids
    )
    for contract, listing in zip(contracts, listings, strict=True):
        contract.listing = listing
        contract.cluster_id = listing.cluster_id
    Contract.objects.bulk_create(contracts)
    listing_node_of = {(row.listing_id, row.node_id): row.pk for row in listing_nodes}
    Allocation.objects.bulk_create(
        Allocation(
            contract=contract,
            listing_node_id=listing_node_of[(contract.listing_id, node_id)],
            node_id=node_id,
            listing_id=contract.listing_id,
            starts_at=contract.starts_at,
            ends_at=contract.ends_at,
        )
        for contract, node_ids in zip(contracts, contract_nodes, strict=True)
        for node_id in node_ids
    )
    market = [(contract.pk, node_ids) for contract, node_ids in zip(contracts, contract_nodes, strict=True)]
    return provider, issued.secret, market, hostnames


def generate_records(rng: random.Random, market, hostnames, period: date, period_start: datetime, total: int):
    """Hour by hour across all contracts: one record per node, or one per contract for a quarter
    of them. Returns the API records and the same rows for COPY (node ids resolved)."""
    per_contract = {contract_id: index % 4 == 0 for index, (contract_id, _) in enumerate(market)}
    records, rows = [], []
    hour = 0
    while len(records) < total:
        started_at = period_start + timedelta(hours=hour)
        if started_at.month != period.month:
            raise SystemExit(f"{total} records do not fit in {period:%Y-%m}; ask for fewer")
        ended_at = started_at + timedelta(hours=1)
        started_text, ended_text = f"{started_at:%Y-%m-%dT%H:%M:%SZ}", f"{ended_at:%Y-%m-%dT%H:%M:%SZ}"
        for contract_id, node_ids in market:
            if per_contract[contract_id]:
                slots = [(None, len(node_ids) * GPUS_PER_NODE)]
            else:
                slots = [(node_id, GPUS_PER_NODE) for node_id in node_ids]
            for node_id, gpus in slots:
                if len(records) == total:
                    break
                millis = rng.randint(gpus * 3_600_000 // 2, gpus * 3_600_000)
                gpu_seconds = Decimal(millis).scaleb(-3)
                event_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
                record = {
                    "id": event_id,
                    "contract": contract_id,
                    "started_at": started_text,
                    "ended_at": ended_text,
                    "gpu_seconds": float(gpu_seconds),
                }
                if node_id is not None:
                    record["node"] = hostnames[node_id]
                records.append(record)
                rows.append([event_id, contract_id, node_id, started_at, ended_at, gpu_seconds, period])
        hour += 1
    return records, rows, hour


class SqlTimer:
    """Time spent inside SQL statements, by statement kind (a few microseconds per statement)."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.count: dict[str, int] = defaultdict(int)

    def __call__(self, execute, sql, params, many, context):
        kind = sql.split(None, 1)[0].lower()
        start = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            self.seconds[kind] += time.perf_counter() - start
            self.count[kind] += 1

    def figures(self) -> dict:
        return {
            kind: {"statements": self.count[kind], "seconds": round(self.seconds[kind], 3)}
            for kind in sorted(self.seconds)
        }


@contextmanager
def cpu_meter(records: int):
    """CPU milliseconds per 1,000 records spent by this process (the in-process server) and by
    its PostgreSQL backend. Unlike wall time, barely skewed by other work on a shared machine."""
    figures: dict = {}
    pid = backend_pid()
    python_start, backend_start = time.process_time(), process_cpu_seconds(pid)
    yield figures
    python = time.process_time() - python_start
    backend_end = process_cpu_seconds(pid)
    figures["python_cpu_ms_per_1000"] = round(1e6 * python / records, 1)
    if backend_start is not None and backend_end is not None:
        postgres = backend_end - backend_start
        figures["postgres_cpu_ms_per_1000"] = round(1e6 * postgres / records, 1)
        figures["cpu_ms_per_1000"] = round(1e6 * (python + postgres) / records, 1)


def empty_usage() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE billing_usagerecord, billing_usagetotal RESTART IDENTITY")


def usage_count() -> int:
    from billing.models import UsageRecord

    return UsageRecord.objects.count()


def tally(results: list[dict]) -> dict:
    return {
        "accepted": sum(len(body["accepted"]) for body in results),
        "duplicates": sum(len(body["duplicates"]) for body in results),
        "rejected": sum(len(body["rejected"]) for body in results),
    }


def post_in_process(client, bodies: list[bytes], secret: str) -> tuple[list[dict], list[float]]:
    results, latencies = [], []
    headers = {"authorization": f"Bearer {secret}"}
    for body in bodies:
        start = time.perf_counter()
        response = client.post(PATH, body, content_type="application/json", headers=headers)
        latencies.append(time.perf_counter() - start)
        if response.status_code != 200:
            raise SystemExit(f"API answered {response.status_code}: {response.content[:500]!r}")
        results.append(json.loads(response.content))
    return results, latencies


def latency_figures(latencies: list[float]) -> dict:
    ordered = sorted(latencies)
    return {
        "batch_p50_ms": round(1000 * statistics.median(ordered), 1),
        "batch_p95_ms": round(1000 * ordered[int(0.95 * (len(ordered) - 1))], 1),
        "batch_max_ms": round(1000 * ordered[-1], 1),
    }


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def http_post(port: int, body: bytes, secret: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {secret}"}
        conn.request("POST", PATH, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@contextmanager
def gunicorn(workers: int):
    """A gunicorn serving the project on 127.0.0.1; stopped (by its pid) on exit."""
    port = free_port()
    env = {**os.environ, "LOG_LEVEL": "WARNING"}
    command = [
        str(ROOT / ".venv" / "bin" / "gunicorn"),
        "config.wsgi:application",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
        "--timeout",
        "120",
        "--log-level",
        "warning",
    ]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=sys.stderr, stderr=sys.stderr)
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise SystemExit(f"gunicorn exited with {process.returncode}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/api/v1/usage")
                conn.getresponse().read()
                conn.close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("gunicorn did not start within 60 s")
                time.sleep(0.2)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def post_over_http(port: int, bodies: list[bytes], secret: str, clients: int) -> list[dict]:
    def send(body: bytes) -> dict:
        status, content = http_post(port, body, secret)
        if status != 200:
            raise SystemExit(f"gunicorn answered {status}: {content[:500]!r}")
        return json.loads(content)

    with ThreadPoolExecutor(max_workers=clients) as pool:
        return list(pool.map(send, bodies))


def copy_rows(provider_id: int, rows: list[list]) -> None:
    from django.db import connection
    from django.utils import timezone

    now = timezone.now()
    connection.ensure_connection()
    raw = connection.connection  # psycopg 3, autocommit: the COPY is its own transaction
    columns = ", ".join(USAGE_COLUMNS)
    with raw.cursor() as cursor, cursor.copy(f"COPY billing_usagerecord ({columns}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row((provider_id, *row, now))


def print_profile(profiler: cProfile.Profile, title: str) -> None:
    for sort in ("tottime", "cumulative"):
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).strip_dirs().sort_stats(sort).print_stats(25)
        print(f"--- {title}: cProfile, top 25 by {sort} ---\n{out.getvalue()}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--no-http", action="store_true", help="skip the gunicorn run")
    parser.add_argument("--http-workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--profile", action="store_true", help="profile the API run even when on target")
    parser.add_argument("--seed", type=int, default=20261001)
    args = parser.parse_args()
    if not BATCH <= args.records <= 2_000_000:
        raise SystemExit(f"--records must be {BATCH} to 2,000,000")

    setup(default_database="gpubroker_bench_billing", apps=("core", "marketplace", "broker", "billing"))
    from django.db import connection
    from django.test import Client
    from django.utils import timezone

    from billing.services import usage_ingest
    from marketplace.models import IdempotencyRecord

    rng = random.Random(args.seed)
    period, period_start, period_end = last_month(timezone.now())
    truncate([*BILLING_TABLES, IdempotencyRecord._meta.db_table, *MARKET_TABLES])
    log(f"building the market; usage for {period:%Y-%m}")
    with stopwatch() as setup_seconds:
        provider, secret, market, hostnames = build_market(rng, period_start, period_end)
        records, rows, hours = generate_records(rng, market, hostnames, period, period_start, args.records)
        batches = [records[i : i + BATCH] for i in range(0, len(records), BATCH)]
        bodies = [json.dumps({"records": batch}, separators=(",", ":")).encode() for batch in batches]
        analyze()
    log(
        f"{len(market)} contracts, {len(records)} records over {hours} hours in {len(bodies)} batches "
        f"({sum(map(len, bodies)) / len(bodies) / 1024:.0f} KiB each), ready in {setup_seconds():.1f}s"
    )

    client = Client()
    figures: dict = {}

    # Warm-up: the first request builds the URL resolver, DRF settings and the connection.
    post_in_process(client, bodies[:2], secret)
    empty_usage()

    log("api: POST /api/v1/usage in-process")
    sql = SqlTimer()
    with connection.execute_wrapper(sql), cpu_meter(len(records)) as api_cpu, stopwatch() as api_seconds:
        results, latencies = post_in_process(client, bodies, secret)
    api = tally(results)
    api_rate = len(records) / api_seconds()
    stored = usage_count()
    log(f"api: {api} in {api_seconds():.2f}s = {api_rate:,.0f} records/s; {stored} rows stored")
    if api["accepted"] != len(records) or stored != len(records):
        raise SystemExit(f"expected {len(records)} accepted and stored records, got {api} and {stored}")
    figures["api"] = {
        "seconds": round(api_seconds(), 3),
        "records_per_second": round(api_rate),
        **latency_figures(latencies),
        **api_cpu,
        "sql": sql.figures(),
    }

    log("duplicates: resending batch 0")
    (resent,), _ = post_in_process(client, bodies[:1], secret)
    duplicates = {key: len(value) for key, value in resent.items()}
    if duplicates["duplicates"] != len(batches[0]) or usage_count() != len(records):
        raise SystemExit(f"resent batch not detected as duplicates: {duplicates}")

    log("service: usage_ingest on decoded batches")
    empty_usage()
    decoded = [json.loads(body)["records"] for body in bodies]
    with cpu_meter(len(records)) as service_cpu, stopwatch() as service_seconds:
        service = [usage_ingest(provider=provider, records=batch) for batch in decoded]
    service_accepted = sum(len(result.accepted) for result in service)
    figures["service"] = {
        "seconds": round(service_seconds(), 3),
        "records_per_second": round(len(records) / service_seconds()),
        "accepted": service_accepted,
        **service_cpu,
    }
    log(f"service: {service_accepted} accepted in {service_seconds():.2f}s")

    http_rate = None
    if not args.no_http:
        empty_usage()
        workers = max(1, args.http_workers)
        log(f"http: gunicorn, {workers} workers, {workers} client threads")
        with gunicorn(workers) as port:
            post_over_http(port, bodies[: 2 * workers], secret, workers)  # warm every worker
            empty_usage()
            with stopwatch() as http_seconds:
                http_results = post_over_http(port, bodies, secret, workers)
        http_counts = tally(http_results)
        http_rate = len(records) / http_seconds()
        log(f"http: {http_counts} in {http_seconds():.2f}s = {http_rate:,.0f} records/s")
        figures["http"] = {
            "workers": workers,
            "seconds": round(http_seconds(), 3),
            "records_per_second": round(http_rate),
            **http_counts,
        }

    log("copy: the same rows with COPY")
    empty_usage()
    with cpu_meter(len(rows)) as copy_cpu, stopwatch() as copy_seconds:
        copy_rows(provider.pk, rows)
    copy_rate = len(rows) / copy_seconds()
    log(f"copy: {usage_count()} rows in {copy_seconds():.2f}s = {copy_rate:,.0f} records/s")

    if http_rate is not None:
        measured_as = f"http: POST {PATH} through gunicorn, {workers} workers, {workers} client threads"
        rate = http_rate
    else:
        measured_as = f"in_process: POST {PATH} through django.test.Client, one thread (--no-http)"
        rate = api_rate
    ratio = rate / copy_rate
    # The same comparison in CPU time per record (both sides), robust to a busy machine.
    measured = "cpu_ms_per_1000" in api_cpu and "cpu_ms_per_1000" in copy_cpu
    cpu_ratio = copy_cpu["cpu_ms_per_1000"] / api_cpu["cpu_ms_per_1000"] if measured else None
    meets = rate >= TARGET_RECORDS_PER_SECOND and ratio >= TARGET_SHARE_OF_COPY
    in_process_meets = api_rate >= TARGET_RECORDS_PER_SECOND and api_rate / copy_rate >= TARGET_SHARE_OF_COPY
    profiled = args.profile or not in_process_meets
    if profiled:
        empty_usage()
        sample = bodies[: min(20, len(bodies))]
        profiler = cProfile.Profile()
        profiler.enable()
        post_in_process(client, sample, secret)
        profiler.disable()
        print_profile(profiler, f"API, {len(sample)} batches of {BATCH}")

    emit(
        {
            "benchmark": "usage_ingest",
            "contracts": len(market),
            "records": len(records),
            "batch_size": BATCH,
            "batches": len(bodies),
            "measured": measured_as,
            "records_per_second": round(rate),
            "copy_records_per_second": round(copy_rate),
            "ratio": round(ratio, 3),
            "target_records_per_second": TARGET_RECORDS_PER_SECOND,
            "target_ratio": TARGET_SHARE_OF_COPY,
            "meets_target": meets,
            "in_process_records_per_second": round(api_rate),
            "in_process_ratio": round(api_rate / copy_rate, 3),
            "in_process_meets_target": in_process_meets,
            "cpu_ratio": round(cpu_ratio, 3) if cpu_ratio else None,
            "duplicates": duplicates["duplicates"],
            "resend": duplicates,
            "copy": {"seconds": round(copy_seconds(), 3), "records_per_second": round(copy_rate), **copy_cpu},
            **figures,
            "profiled": profiled,
            "period": f"{period:%Y-%m}",
            "seed": args.seed,
        }
    )


if __name__ == "__main__":
    main()
