"""Closing a month: billing_period_close over 10,000 contracts and 1,000,000 usage records.

Builds last month's market in bulk with COPY (50 providers, 200 labs, 100 clusters;
contracts of 8-64 GPUs chained back to back on groups of nodes, so some span the month's
start or end; half committed, half metered, some metered ones released early), then
1,000,000 usage records (hourly, per node) for the metered contracts in the month. Then it
times, each after a warm-up run:

- ``close``: ``billing_period_close(period=...)`` end to end, committed (rating, invoices,
  lines, statements, ledger, the deferred ledger checks at commit);
- ``aggregate``: the one SQL aggregate over the same rows,
  ``SELECT contract_id, SUM(gpu_seconds) ... WHERE period = %s GROUP BY contract_id``
  (median of 3).

The warm-up close runs in a transaction that is rolled back (its deferred constraints are
forced to run first). Then the invoices, statements and ledger are checked. Over the target
ratio (or with --profile) the rating query is EXPLAIN ANALYZEd and a rolled-back close is
profiled, with cProfile's top 25 on stderr.

    .venv/bin/python bench/billing_close.py [--profile] [--seed N]

Prints one JSON line. Target: close_seconds / aggregate_seconds <= 3.
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import io
import pstats
import random
import statistics
import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

from _common import MARKET_TABLES, analyze, emit, log, setup, stopwatch, truncate

TARGET_RATIO = 3.0
PROVIDERS = 50
LABS = 200
CLUSTERS_PER_PROVIDER = 2
CONTRACTS = 10_000
USAGE_RECORDS = 1_000_000
GPUS_PER_NODE = 8
MARGIN_HOURS = 12 * 24  # the chains start before the month and run past its end
NODES_PER_CONTRACT = ([1, 2, 4, 8], [0.35, 0.3, 0.2, 0.15])  # 8 to 64 GPUs
CONTRACT_HOURS = ([24, 48, 72, 120, 168, 336, 504, 720, 1080], [10, 10, 10, 12, 15, 15, 10, 10, 8])
GAP_HOURS = ([0, 0, 6, 24, 72], [3, 3, 2, 1, 1])
METERED_SHARE = 0.5
RELEASED_SHARE = 0.15  # of metered contracts: released early, inside the month
AGGREGATE_RUNS = 3
AGGREGATE_SQL = "SELECT contract_id, SUM(gpu_seconds) FROM billing_usagerecord WHERE period = %s GROUP BY contract_id"
BILLING_OUTPUT_TABLES = [
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


@dataclass(slots=True)
class PlannedContract:
    id: int
    lab_id: int
    provider_id: int
    cluster_id: int
    node_ids: list[int]
    starts_at: datetime
    ends_at: datetime
    released_at: datetime | None
    price: Decimal
    billing_mode: str

    @property
    def service_end(self) -> datetime:
        return self.released_at or self.ends_at


def last_month(now: datetime) -> tuple[date, datetime, datetime]:
    first_of_this = datetime(now.year, now.month, 1, tzinfo=UTC)
    start = (first_of_this - timedelta(days=1)).replace(day=1)
    return start.date(), start, first_of_this


def hours(delta: timedelta) -> int:
    return int(delta // timedelta(hours=1))


def copy_rows(table: str, columns: list[str], rows) -> int:
    """COPY rows (tuples of Python values) into a table; returns how many."""
    from django.db import connection

    connection.ensure_connection()
    count = 0
    with (
        connection.connection.cursor() as cursor,
        cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy,
    ):
        for row in rows:
            copy.write_row(row)
            count += 1
    return count


def reset_sequence(table: str) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT setval(pg_get_serial_sequence(%s, 'id'), COALESCE((SELECT MAX(id) FROM {table}), 0) + 1, false)",
            [table],
        )


def plan_contracts(rng: random.Random, start: datetime, end: datetime, labs, clusters):
    """Chains of back-to-back contracts on groups of nodes until CONTRACTS overlap the month."""
    contracts: list[PlannedContract] = []
    nodes_by_cluster: dict[int, int] = defaultdict(int)  # nodes planned per cluster so far
    group = 0
    while len(contracts) < CONTRACTS:
        cluster = clusters[group % len(clusters)]
        group += 1
        count = rng.choices(*NODES_PER_CONTRACT)[0]
        first = nodes_by_cluster[cluster.pk]
        nodes_by_cluster[cluster.pk] += count
        node_slots = list(range(first, first + count))
        t = start - timedelta(hours=MARGIN_HOURS - rng.randrange(0, 96))
        while t < end + timedelta(hours=MARGIN_HOURS) and len(contracts) < CONTRACTS:
            length = timedelta(hours=rng.choices(*CONTRACT_HOURS)[0])
            starts_at, ends_at = t, t + length
            t = ends_at + timedelta(hours=rng.choices(*GAP_HOURS)[0])
            if ends_at <= start or starts_at >= end:
                continue
            metered = rng.random() < METERED_SHARE
            released_at = None
            lo, hi = max(starts_at, start), min(ends_at, end)
            if metered and hours(hi - lo) > 2 and rng.random() < RELEASED_SHARE:
                released_at = lo + timedelta(hours=rng.randrange(1, hours(hi - lo)))
            contracts.append(
                PlannedContract(
                    id=len(contracts) + 1,
                    lab_id=rng.choice(labs).pk,
                    provider_id=cluster.provider_id,
                    cluster_id=cluster.pk,
                    node_ids=node_slots,  # slots for now; node ids once the nodes exist
                    starts_at=starts_at,
                    ends_at=ends_at,
                    released_at=released_at,
                    price=Decimal(f"{rng.uniform(1.5, 3.5):.2f}"),
                    billing_mode="metered" if metered else "committed",
                )
            )
    # Node ids: each cluster's nodes are numbered consecutively, clusters one after another.
    first_node_id: dict[int, int] = {}
    next_id = 1
    for cluster in clusters:
        first_node_id[cluster.pk] = next_id
        next_id += nodes_by_cluster[cluster.pk]
    for contract in contracts:
        contract.node_ids = [first_node_id[contract.cluster_id] + slot for slot in contract.node_ids]
    return contracts, dict(nodes_by_cluster), first_node_id


def build_market(rng: random.Random, start: datetime, end: datetime) -> dict:
    """Organizations and clusters with the ORM; nodes, listings, listing nodes, contracts and
    allocations with COPY and explicit ids (consistent with the composite foreign key and the
    exclusion constraints)."""
    from marketplace.models import Cluster, GpuModel, Organization

    now = datetime.now(UTC)
    providers = Organization.objects.bulk_create(
        Organization(
            name=f"Bench close provider {index:02d}",
            is_provider=True,
            # A few providers negotiated their own fee.
            platform_fee_rate=Decimal("0.0300") if index % 10 == 0 else None,
        )
        for index in range(PROVIDERS)
    )
    labs = Organization.objects.bulk_create(
        Organization(name=f"Bench close lab {index:03d}", is_lab=True) for index in range(LABS)
    )
    gpu_models = list(GpuModel.objects.order_by("id"))
    clusters = Cluster.objects.bulk_create(
        Cluster(
            provider=provider,
            name=f"bench-close-{index}",
            gpu_model=rng.choice(gpu_models),
            region=rng.choice(["us-east-1", "us-south-1", "eu-west-1"]),
            interconnect="infiniband",
            gpus_per_node=GPUS_PER_NODE,
        )
        for provider in providers
        for index in range(CLUSTERS_PER_PROVIDER)
    )
    contracts, nodes_by_cluster, first_node_id = plan_contracts(rng, start, end, labs, clusters)
    # Billing ignores the status; it is kept plausible.
    statuses = ["terminated" if c.released_at else "completed" if c.ends_at <= now else "active" for c in contracts]

    copy_rows(
        "marketplace_node",
        ["id", "cluster_id", "hostname", "status"],
        (
            (first_node_id[cluster.pk] + slot, cluster.pk, f"c{cluster.pk}-n{slot:05d}", "in_service")
            for cluster in clusters
            for slot in range(nodes_by_cluster.get(cluster.pk, 0))
        ),
    )
    copy_rows(
        "marketplace_listing",
        [
            "id",
            "provider_id",
            "cluster_id",
            "node_count",
            "starts_at",
            "ends_at",
            "price_per_gpu_hour",
            "min_duration_hours",
            "billing_mode",
            "status",
            "inventory_version",
            "created_at",
            "updated_at",
        ],  # fmt: skip
        (
            (
                c.id,
                c.provider_id,
                c.cluster_id,
                len(c.node_ids),
                c.starts_at,
                c.ends_at,
                c.price,
                1,
                c.billing_mode,
                "active",
                0,
                now,
                now,
            )
            for c in contracts
        ),  # fmt: skip
    )
    listing_node_ids: dict[tuple[int, int], int] = {}
    for contract in contracts:
        for node_id in contract.node_ids:
            listing_node_ids[(contract.id, node_id)] = len(listing_node_ids) + 1
    copy_rows(
        "marketplace_listingnode",
        ["id", "listing_id", "node_id", "starts_at", "ends_at", "released"],
        (
            (listing_node_ids[(c.id, node_id)], c.id, node_id, c.starts_at, c.ends_at, False)
            for c in contracts
            for node_id in c.node_ids
        ),
    )
    copy_rows(
        "broker_contract",
        [
            "id",
            "listing_id",
            "lab_id",
            "provider_id",
            "cluster_id",
            "gpu_count",
            "node_count",
            "starts_at",
            "ends_at",
            "price_per_gpu_hour",
            "billing_mode",
            "total_amount",
            "status",
            "released_at",
            "cancel_reason",
            "created_at",
        ],  # fmt: skip
        (
            (
                c.id,
                c.id,
                c.lab_id,
                c.provider_id,
                c.cluster_id,
                GPUS_PER_NODE * len(c.node_ids),
                len(c.node_ids),
                c.starts_at,
                c.ends_at,
                c.price,
                c.billing_mode,
                committed_total(c),
                status,
                c.released_at,
                "",
                c.starts_at - timedelta(days=1),
            )
            for c, status in zip(contracts, statuses, strict=True)
        ),  # fmt: skip
    )
    copy_rows(
        "broker_allocation",
        ["id", "contract_id", "listing_node_id", "node_id", "listing_id", "starts_at", "ends_at"],
        (
            (
                listing_node_ids[(c.id, node_id)],
                c.id,
                listing_node_ids[(c.id, node_id)],
                node_id,
                c.id,  # each contract has a listing of its own, with the same id
                c.starts_at,
                c.service_end,
            )
            for c in contracts
            for node_id in c.node_ids
        ),  # fmt: skip
    )
    for table in ["marketplace_node", "marketplace_listing", "marketplace_listingnode", "broker_contract"]:
        reset_sequence(table)
    reset_sequence("broker_allocation")
    return {
        "contracts": contracts,
        "providers": len(providers),
        "labs": len(labs),
        "clusters": len(clusters),
        "nodes": sum(nodes_by_cluster.values()),
        "allocations": len(listing_node_ids),
    }


def committed_total(contract: PlannedContract) -> Decimal | None:
    if contract.billing_mode != "committed":
        return None
    gpu_hours = GPUS_PER_NODE * len(contract.node_ids) * hours(contract.ends_at - contract.starts_at)
    return (contract.price * gpu_hours).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


def month_window(contract: PlannedContract, start: datetime, end: datetime) -> tuple[datetime, datetime]:
    return max(contract.starts_at, start), min(contract.service_end, end)


def load_usage(rng: random.Random, contracts: list[PlannedContract], period: date, start: datetime, end: datetime):
    """USAGE_RECORDS hourly per-node records for the metered contracts, spread over each
    contract's node-hours in the month in proportion to them. Returns the rows loaded."""
    from django.db import DatabaseError, connection, transaction

    from billing.services import usage_totals_rebuild

    metered = [c for c in contracts if c.billing_mode == "metered"]
    slots = {}
    for contract in metered:
        lo, hi = month_window(contract, start, end)
        slots[contract.id] = len(contract.node_ids) * hours(hi - lo)
    total_slots = sum(slots.values())
    if total_slots < USAGE_RECORDS:
        raise SystemExit(f"only {total_slots} node-hours of metered contracts for {USAGE_RECORDS} records")
    counts = {cid: max(1, USAGE_RECORDS * n // total_slots) for cid, n in slots.items()}
    short = USAGE_RECORDS - sum(counts.values())
    for cid in sorted(slots, key=slots.get, reverse=True):
        if short == 0:
            break
        step = max(-(counts[cid] - 1), min(short, slots[cid] - counts[cid]))
        counts[cid] += step
        short -= step

    month_hours = hours(end - start)
    stamps = [f"{start + timedelta(hours=h):%Y-%m-%d %H:%M:%S}+00" for h in range(month_hours + 1)]
    received = f"{datetime.now(UTC):%Y-%m-%d %H:%M:%S}+00"
    period_text = period.isoformat()
    columns = "provider_id, event_id, contract_id, node_id, started_at, ended_at, gpu_seconds, period, received_at"
    full_millis = GPUS_PER_NODE * 3_600_000
    loaded = 0
    connection.ensure_connection()
    # The rows are consistent by construction; skipping the three foreign-key checks per row
    # (a superuser's replica mode) makes the load several times faster. Not the measured part.
    with connection.cursor() as cursor:
        try:
            with transaction.atomic():
                cursor.execute("SET session_replication_role = replica")
        except DatabaseError:
            log("not a superuser: loading usage with foreign-key checks")
    with (
        connection.connection.cursor() as cursor,
        cursor.copy(f"COPY billing_usagerecord ({columns}) FROM STDIN") as copy,
    ):
        for contract in metered:
            lo, _ = month_window(contract, start, end)
            first_hour = hours(lo - start)
            nodes = contract.node_ids
            width = len(nodes)
            n, available = counts[contract.id], slots[contract.id]
            lines = []
            for index in range(n):
                slot = index * available // n
                hour = first_hour + slot // width
                millis = int(full_millis * (0.5 + 0.5 * rng.random()))
                lines.append(
                    f"{contract.provider_id}\tu{contract.id}-{index}\t{contract.id}\t{nodes[slot % width]}\t"
                    f"{stamps[hour]}\t{stamps[hour + 1]}\t{millis // 1000}.{millis % 1000:03d}\t"
                    f"{period_text}\t{received}\n"
                )
            copy.write("".join(lines))
            loaded += n
    with connection.cursor() as cursor:
        cursor.execute("RESET session_replication_role")
    # Replica mode skipped the trigger that keeps the usage totals: build them as it would.
    usage_totals_rebuild()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM billing_usagerecord u LEFT JOIN broker_contract c ON c.id = u.contract_id "
            "LEFT JOIN marketplace_node n ON n.id = u.node_id WHERE c.id IS NULL OR n.id IS NULL "
            "OR c.provider_id <> u.provider_id"
        )
        orphans = cursor.fetchone()[0]
    if orphans:
        raise SystemExit(f"{orphans} usage records do not match a contract, node or provider")
    return loaded


class Breakdown:
    """Wall time in the close's phases and in SQL, while installed (microseconds per call)."""

    PHASES = ["_close", "close_in_sql"]

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.statements: dict[str, int] = defaultdict(int)
        self.slowest: list[tuple[float, str, object]] = []

    def _timed(self, name: str, function):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - start

        return wrapper

    def _sql(self, execute, sql, params, many, context):
        kind = f"sql_{sql.split(None, 1)[0].lower()}"
        start = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            elapsed = time.perf_counter() - start
            self.seconds[kind] += elapsed
            self.statements[kind] += 1
            self.slowest.append((elapsed, sql, params))
            self.slowest = sorted(self.slowest, key=lambda item: item[0], reverse=True)[:5]

    @contextmanager
    def installed(self):
        from django.db import connection

        from billing import services

        originals = [(name, getattr(services, name)) for name in self.PHASES if hasattr(services, name)]
        for name, function in originals:
            setattr(services, name, self._timed(name.lstrip("_"), function))
        try:
            with connection.execute_wrapper(self._sql):
                yield self
        finally:
            for name, function in originals:
                setattr(services, name, function)

    def figures(self, total: float) -> dict:
        seconds = {name: round(value, 3) for name, value in sorted(self.seconds.items())}
        # What billing_period_close spends outside _close: the lookup first, the commit last,
        # where the deferred constraints run: every foreign key of the new lines, invoices and
        # ledger entries (Django makes them DEFERRABLE INITIALLY DEFERRED) and the ledger balance.
        if "close" in self.seconds:
            seconds["outside_close_incl_commit"] = round(total - self.seconds["close"], 3)
        return {
            "seconds": seconds,
            "statements": dict(sorted(self.statements.items())),
            "slowest_sql": [
                {"seconds": round(elapsed, 3), "sql": " ".join(sql.split())[:160]} for elapsed, sql, _ in self.slowest
            ],
        }


def time_aggregate(period: date) -> tuple[float, dict]:
    from django.db import connection

    with connection.cursor() as cursor, stopwatch() as seconds:
        cursor.execute(AGGREGATE_SQL, [period])
        rows = cursor.fetchall()
    return seconds(), dict(rows)


@contextmanager
def rolled_back():
    """Run inside a transaction whose deferred constraints are checked, then roll it back."""
    from django.db import connection, transaction

    with transaction.atomic():
        yield
        with connection.cursor() as cursor:
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        transaction.set_rollback(True)


def scalar(sql: str, params=()) -> object:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchone()[0]


def check(period: date, contracts: list[PlannedContract], start: datetime, end: datetime, usage: dict) -> dict:
    """Invoices add up to their lines, statements to gross = fee + net, the ledger balances,
    and every line bills what the contract and the usage say."""
    from billing.models import InvoiceLine

    line_sum = scalar(
        "SELECT COALESCE(SUM(l.amount), 0) FROM billing_invoiceline l "
        "JOIN billing_invoice i ON i.id = l.invoice_id WHERE i.period = %s",
        [period],
    )
    fee_sum = scalar(
        "SELECT COALESCE(SUM(l.fee_amount), 0) FROM billing_invoiceline l "
        "JOIN billing_invoice i ON i.id = l.invoice_id WHERE i.period = %s",
        [period],
    )
    invoice_sum = scalar("SELECT COALESCE(SUM(total), 0) FROM billing_invoice WHERE period = %s", [period])
    gross_sum = scalar("SELECT COALESCE(SUM(gross), 0) FROM billing_payoutstatement WHERE period = %s", [period])
    statement_fee_sum = scalar("SELECT COALESCE(SUM(fee), 0) FROM billing_payoutstatement WHERE period = %s", [period])
    problems = {
        "invoices_not_sum_of_lines": scalar(
            "SELECT count(*) FROM billing_invoice i WHERE i.period = %s AND i.total <> "
            "(SELECT COALESCE(SUM(amount), 0) FROM billing_invoiceline WHERE invoice_id = i.id)",
            [period],
        ),
        "statements_gross_not_fee_plus_net": scalar(
            "SELECT count(*) FROM billing_payoutstatement WHERE period = %s AND net <> gross - fee + carried_in",
            [period],
        ),
        "ledger_unbalanced_transactions": scalar(
            "SELECT count(*) FROM (SELECT transaction_id FROM billing_ledgerentry "
            "GROUP BY transaction_id HAVING SUM(amount) <> 0) unbalanced"
        ),
    }
    # What the lab receivable accounts gained from this month's invoices.
    receivable = scalar(
        "SELECT COALESCE(SUM(e.amount), 0) FROM billing_ledgerentry e "
        "JOIN billing_account a ON a.id = e.account_id "
        "JOIN billing_ledgertransaction t ON t.id = e.transaction_id "
        "JOIN billing_invoice i ON t.source_key = 'invoice:' || i.id "
        "WHERE a.kind = 'lab_receivable' AND i.period = %s",
        [period],
    )

    lines = {
        contract_id: (kind, quantity)
        for contract_id, kind, quantity in InvoiceLine.objects.filter(service_period=period).values_list(
            "contract_id", "kind", "quantity"
        )
    }
    one_micro = Decimal("0.000001")
    wrong = 0
    expected_ids: set[int] = set()
    for contract in contracts:
        lo, hi = month_window(contract, start, end)
        capacity = Decimal(GPUS_PER_NODE * len(contract.node_ids) * max(0, hours(hi - lo)))
        if contract.billing_mode == "committed":
            expected = capacity
        else:
            expected = min(usage.get(contract.id, Decimal(0)) / 3600, capacity)
        if expected <= 0:
            continue
        expected_ids.add(contract.id)
        kind, quantity = lines.get(contract.id, (None, None))
        if kind != contract.billing_mode or abs(quantity - expected) > one_micro:
            wrong += 1
    problems["lines_wrong_quantity_or_missing"] = wrong
    problems["lines_unexpected"] = len(set(lines) - expected_ids)
    return {
        "ok": (
            invoice_sum == line_sum
            and gross_sum == line_sum
            and statement_fee_sum == fee_sum
            and receivable == invoice_sum
            and not any(problems.values())
        ),
        "invoice_total_sum": invoice_sum,
        "line_amount_sum": line_sum,
        "statement_gross_sum": gross_sum,
        "statement_fee_sum": statement_fee_sum,
        "line_fee_sum": fee_sum,
        "ledger_lab_receivable": receivable,
        "lines_expected": len(expected_ids),
        **problems,
    }


def explain(sql: str, params) -> str:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS) {sql}", params)
        return "\n".join(row[0] for row in cursor.fetchall())


def print_profile(profiler: cProfile.Profile, title: str) -> None:
    for sort in ("tottime", "cumulative"):
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).strip_dirs().sort_stats(sort).print_stats(25)
        print(f"--- {title}: cProfile, top 25 by {sort} ---\n{out.getvalue()}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", action="store_true", help="profile the close even when on target")
    parser.add_argument("--seed", type=int, default=20261031)
    args = parser.parse_args()

    setup(default_database="gpubroker_bench_billing", apps=("core", "marketplace", "events", "broker", "billing"))
    from django.db import connection

    from billing.close_sql import RATE_LINES, rate_lines_params
    from billing.models import Invoice, InvoiceLine, PayoutStatement
    from billing.services import billing_period_close
    from core.timeutils import previous_month
    from marketplace.models import IdempotencyRecord

    rng = random.Random(args.seed)
    period, start, end = last_month(datetime.now(UTC))
    truncate(["billing_usagerecord", *BILLING_OUTPUT_TABLES, IdempotencyRecord._meta.db_table, *MARKET_TABLES])
    log(f"building {period:%Y-%m}: {CONTRACTS} contracts, {USAGE_RECORDS} usage records")
    with stopwatch() as market_seconds:
        market = build_market(rng, start, end)
    contracts = market.pop("contracts")
    log(f"market in {market_seconds():.1f}s: {market}")
    with stopwatch() as usage_seconds:
        loaded = load_usage(rng, contracts, period, start, end)
    log(f"{loaded} usage records generated and copied in {usage_seconds():.1f}s")
    with stopwatch() as analyze_seconds, connection.cursor() as cursor:
        cursor.execute("VACUUM (ANALYZE) billing_usagerecord")
        analyze()
    log(f"vacuum + analyze in {analyze_seconds():.1f}s")

    # Contracts that began in the month before are billed for those hours by its close, which
    # must come first (months close in order, from the first month sold); it is not timed.
    with stopwatch() as previous_seconds:
        billing_period_close(period=previous_month(period))
    log(f"{previous_month(period):%Y-%m} closed first in {previous_seconds():.2f}s (not timed)")
    analyze()  # statistics that include its documents, as autovacuum would keep them

    log("warm-up: the aggregate, and a close rolled back")
    warm_aggregate, usage = time_aggregate(period)
    with stopwatch() as warm_close, rolled_back():
        billing_period_close(period=period)

    aggregate_runs = [time_aggregate(period)[0] for _ in range(AGGREGATE_RUNS)]
    aggregate_seconds = statistics.median(aggregate_runs)
    log(f"aggregate: {[round(s, 3) for s in aggregate_runs]} (warm-up {warm_aggregate:.3f}s)")

    breakdown = Breakdown()
    with breakdown.installed(), stopwatch() as close_seconds:
        result = billing_period_close(period=period)
    log(f"close: {close_seconds():.3f}s (warm-up, rolled back: {warm_close():.3f}s)")
    if not result.created:
        raise SystemExit("the close did not run: the period was already closed")
    ratio = close_seconds() / aggregate_seconds

    checks = check(period, contracts, start, end, usage)
    log(f"checks: {checks}")
    invoices = Invoice.objects.filter(period=period).count()
    lines = InvoiceLine.objects.filter(invoice__period=period).count()
    statements = PayoutStatement.objects.filter(period=period).count()

    profiled = args.profile or ratio > TARGET_RATIO
    if profiled:
        # Back to the books before this close: the previous month closed, this one open.
        truncate(BILLING_OUTPUT_TABLES)
        billing_period_close(period=previous_month(period))
        rating = explain(RATE_LINES, rate_lines_params(period=period))
        print(f"--- EXPLAIN ANALYZE, the rating statement ---\n{rating}", file=sys.stderr)
        print(f"--- EXPLAIN ANALYZE, the aggregate ---\n{explain(AGGREGATE_SQL, [period])}", file=sys.stderr)
        profiler = cProfile.Profile()
        with rolled_back():
            profiler.enable()
            billing_period_close(period=period)
            profiler.disable()
        print_profile(profiler, "billing_period_close (rolled back)")

    committed = sum(1 for c in contracts if c.billing_mode == "committed")
    emit(
        {
            "benchmark": "billing_close",
            "period": f"{period:%Y-%m}",
            "contracts": len(contracts),
            "committed_contracts": committed,
            "metered_contracts": len(contracts) - committed,
            "released_early": sum(1 for c in contracts if c.released_at),
            "spanning_month_start": sum(1 for c in contracts if c.starts_at < start),
            "spanning_month_end": sum(1 for c in contracts if c.ends_at > end),
            "usage_records": loaded,
            **market,
            "load_seconds": {
                "market": round(market_seconds(), 2),
                "usage": round(usage_seconds(), 2),
                "vacuum_analyze": round(analyze_seconds(), 2),
            },
            "close_seconds": round(close_seconds(), 3),
            "close_warmup_rolled_back_seconds": round(warm_close(), 3),
            "aggregate_seconds": round(aggregate_seconds, 4),
            "aggregate_runs": [round(s, 4) for s in aggregate_runs],
            "ratio": round(ratio, 2),
            "target_ratio": TARGET_RATIO,
            "meets_target": ratio <= TARGET_RATIO,
            "invoices": invoices,
            "lines": lines,
            "statements": statements,
            "checks": checks,
            "breakdown": breakdown.figures(close_seconds()),
            "profiled": profiled,
            "seed": args.seed,
        }
    )


if __name__ == "__main__":
    main()
