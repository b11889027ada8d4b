"""A rack fails: 32 nodes of a 12,500-node cluster, holding 2,000 contracts between them.

Builds one provider's 12,500-node cluster with one listing reserving 12,000 of its nodes for
a little over five days; the 32 nodes of the "rack" (the listing's first nodes) are sold to
2,000 one-node contracts of two hours, back to back (62 or 63 per node, the first running
now). Then each rack node is reported failed (``incident_open``: one transaction per node,
as a monitoring agent would report them) and every contract holding it from the next whole
hour is replaced by a spare of the listing. Beside it, the same node-hours booked afresh:
the same 2,000 windows (from the next whole hour) through ``listing_book`` on the same listing.

    .venv/bin/python bench/rack_failure.py [--contracts 2000] [--rack 32]

Prints one JSON line: seconds to replace everything (and per failed node), how many
contracts were replaced, and seconds to book the same windows afresh.
"""

from __future__ import annotations

import argparse
import statistics
from datetime import timedelta
from decimal import Decimal

from _common import MARKET_TABLES, analyze, emit, log, setup, stopwatch, truncate

DATABASE = "gpubroker_bench_incidents"
MIGRATE_APPS = ("core", "marketplace", "events", "broker", "billing")
CLUSTER_NODES = 12_500
LISTED_NODES = 12_000
CONTRACT_HOURS = 2
GPUS_PER_NODE = 8


def build_market(*, rack: int, contracts: int) -> dict:
    from broker.models import Allocation, Contract
    from core.timeutils import HOUR, current_hour
    from marketplace.models import GpuModel, Listing, ListingNode, Node, Organization
    from marketplace.services import cluster_create

    now_hour = current_hour()
    per_node = -(-contracts // rack)
    window_end = now_hour + (per_node * CONTRACT_HOURS + 2) * HOUR
    provider = Organization.objects.create(name="Bench rack provider", is_provider=True)
    lab = Organization.objects.create(name="Bench rack lab", is_lab=True, credit_limit=None)
    cluster = cluster_create(
        provider=provider,
        name="bench-rack",
        gpu_model=GpuModel.objects.get(slug="h100-sxm-80gb"),
        region="us-south-1",
        interconnect="infiniband",
        gpus_per_node=GPUS_PER_NODE,
        node_count=CLUSTER_NODES,
    )
    node_ids = list(Node.objects.filter(cluster=cluster).order_by("id").values_list("id", flat=True))
    listing = Listing.objects.create(
        provider=provider,
        cluster=cluster,
        node_count=LISTED_NODES,
        starts_at=now_hour,
        ends_at=window_end,
        price_per_gpu_hour=Decimal("2.10"),
        billing_mode="committed",
    )
    ListingNode.objects.bulk_create(
        (
            ListingNode(listing=listing, node_id=node_id, starts_at=now_hour, ends_at=window_end)
            for node_id in node_ids[:LISTED_NODES]
        ),
        batch_size=5000,
    )
    bindings = dict(
        ListingNode.objects.filter(listing=listing, node_id__in=node_ids[:rack]).values_list("node_id", "id")
    )
    shapes = []  # (node, start) of each contract: node by node, back to back from the current hour
    for index in range(contracts):
        node_id = node_ids[index % rack]
        starts_at = now_hour + (index // rack) * CONTRACT_HOURS * HOUR
        shapes.append((node_id, starts_at))
    price = listing.price_per_gpu_hour
    written = Contract.objects.bulk_create(
        (
            Contract(
                listing=listing,
                lab=lab,
                provider=provider,
                cluster=cluster,
                gpu_count=GPUS_PER_NODE,
                node_count=1,
                starts_at=starts_at,
                ends_at=starts_at + CONTRACT_HOURS * HOUR,
                price_per_gpu_hour=price,
                billing_mode="committed",
                total_amount=GPUS_PER_NODE * CONTRACT_HOURS * price,
                status=Contract.Status.ACTIVE if starts_at <= now_hour else Contract.Status.SCHEDULED,
            )
            for _, starts_at in shapes
        ),
        batch_size=2000,
    )
    Allocation.objects.bulk_create(
        (
            Allocation(
                contract=contract,
                listing_node_id=bindings[node_id],
                node_id=node_id,
                listing=listing,
                starts_at=starts_at,
                ends_at=starts_at + CONTRACT_HOURS * HOUR,
            )
            for contract, (node_id, starts_at) in zip(written, shapes, strict=True)
        ),
        batch_size=2000,
    )
    return {"provider": provider, "lab": lab, "listing": listing, "rack": node_ids[:rack]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contracts", type=int, default=2000)
    parser.add_argument("--rack", type=int, default=32)
    args = parser.parse_args()
    setup(default_database=DATABASE, apps=MIGRATE_APPS)

    from django.db import connection
    from django.utils import timezone

    from broker.booking import listing_book
    from broker.incidents import incident_open
    from broker.models import Allocation, Replacement
    from core.timeutils import next_hour
    from marketplace.models import Node

    truncate(["broker_replacement", "broker_incident", "events_event", "broker_freespan", *MARKET_TABLES])
    log(f"building a {CLUSTER_NODES:,}-node cluster, {args.contracts:,} contracts on {args.rack} nodes")
    with stopwatch() as built:
        market = build_market(rack=args.rack, contracts=args.contracts)
    analyze()
    log(f"built in {built():.1f}s")

    from_hour = next_hour()
    windows = list(
        Allocation.objects.filter(node_id__in=market["rack"], ends_at__gt=from_hour).values_list("starts_at", "ends_at")
    )
    per_node: list[float] = []
    with stopwatch() as replacing:
        for node in Node.objects.filter(pk__in=market["rack"]).order_by("id"):
            with stopwatch() as one:
                incident_open(
                    provider=market["provider"],
                    node=node,
                    kind="failure",
                    started_at=timezone.now() - timedelta(minutes=2),
                    detail="rack power",
                )
            per_node.append(one())
    replaced = Replacement.objects.values("contract_id").distinct().count()
    replacements = Replacement.objects.count()
    log(f"replaced {replaced} of {len(windows)} contracts ({replacements} replacements) in {replacing():.2f}s")

    with stopwatch() as booking:
        for starts_at, ends_at in windows:
            begin = max(starts_at, from_hour)
            listing_book(
                lab=market["lab"],
                listing=market["listing"],
                gpu_count=GPUS_PER_NODE,
                starts_at=begin,
                duration_hours=int((ends_at - begin).total_seconds() // 3600),
            )
    log(f"booked the same {len(windows)} windows afresh in {booking():.2f}s")
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM broker_freespan")
        spans = cursor.fetchone()[0]
    emit(
        {
            "benchmark": "rack_failure",
            "cluster_nodes": CLUSTER_NODES,
            "listed_nodes": LISTED_NODES,
            "rack_nodes": args.rack,
            "affected_contracts": len(windows),
            "replaced_contracts": replaced,
            # A contract whose spare was another rack node, which failed later, is replaced twice.
            "replacements": replacements,
            "replace_seconds": round(replacing(), 3),
            "replace_seconds_per_node_p50": round(statistics.median(per_node), 3),
            "replace_seconds_per_node_max": round(max(per_node), 3),
            "replace_ms_per_contract": round(1000 * replacing() / max(len(windows), 1), 2),
            "book_afresh_seconds": round(booking(), 3),
            "book_afresh_ms_per_contract": round(1000 * booking() / max(len(windows), 1), 2),
            "free_spans_after": spans,
        }
    )


if __name__ == "__main__":
    main()
