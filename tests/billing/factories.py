"""Builders for billing tests: organizations, contracts in the past, usage records.

Contracts go through ``cluster_create``, ``listing_create`` and ``listing_book`` exactly as in
production. Those services refuse windows that start before the current hour, so
``contract_create`` travels to the contract's start to list and book it; a test then travels
forward (time-machine, ``tick=False``) to report usage and close months.
"""

import itertools
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import time_machine

from billing.models import BillingPeriod, Invoice, InvoiceLine, LedgerEntry, PayoutStatement, UsageRecord
from billing.services import billing_period_close, usage_ingest
from broker.booking import listing_book
from broker.models import Contract
from core.db import bulk_insert
from core.timeutils import HOUR, month_of
from marketplace.models import BillingMode, GpuModel, Interconnect, Node, Organization
from marketplace.services import cluster_create, listing_create

COMMITTED = BillingMode.COMMITTED
METERED = BillingMode.METERED

_sequence = itertools.count(1)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


AUGUST, SEPTEMBER, OCTOBER, NOVEMBER, DECEMBER = (date(2026, month, 1) for month in range(8, 13))
REPORTED_AT = utc(2026, 10, 20, 12)  # after the fixtures' contracts (tests/billing/conftest.py)


def iso(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def gpu_model() -> GpuModel:
    """The H100 of the catalog. Transactional tests flush the migrated catalog, so create it if missing."""
    model, _ = GpuModel.objects.get_or_create(
        slug="h100-sxm-80gb",
        defaults={"name": "H100 SXM 80GB", "vendor": "NVIDIA", "memory_gb": 80, "bf16_tflops": 989},
    )
    return model


def make_provider(name: str | None = None, *, fee_rate: str | None = None) -> Organization:
    return Organization.objects.create(
        name=name or f"Billing Provider {next(_sequence)}",
        is_provider=True,
        platform_fee_rate=None if fee_rate is None else Decimal(fee_rate),
    )


def make_lab(name: str | None = None) -> Organization:
    return Organization.objects.create(name=name or f"Billing Lab {next(_sequence)}", is_lab=True)


def contract_create(
    *,
    lab: Organization,
    provider: Organization,
    starts_at: datetime,
    hours: int,
    nodes: int = 1,
    gpus_per_node: int = 8,
    price: str = "2.5000",
    mode: str = COMMITTED,
    hostnames: list[str] | None = None,
) -> Contract:
    """Book ``nodes`` whole nodes of a fresh cluster for [starts_at, starts_at + hours), as of starts_at."""
    with time_machine.travel(starts_at, tick=False):
        cluster = cluster_create(
            provider=provider,
            name=f"billing-{next(_sequence)}",
            gpu_model=gpu_model(),
            region="us-south-1",
            interconnect=Interconnect.INFINIBAND,
            gpus_per_node=gpus_per_node,
            node_count=nodes,
            hostnames=hostnames,
        )
        listing = listing_create(
            provider=provider,
            cluster=cluster,
            node_count=nodes,
            starts_at=starts_at,
            ends_at=starts_at + hours * HOUR,
            price_per_gpu_hour=Decimal(price),
            billing_mode=mode,
        )
        return listing_book(
            lab=lab, listing=listing, gpu_count=nodes * gpus_per_node, starts_at=starts_at, duration_hours=hours
        )


def record(
    event_id: str,
    contract: Contract,
    started_at: datetime,
    ended_at: datetime,
    gpu_seconds,
    node: str | None = None,
) -> dict:
    """One usage record as a provider sends it."""
    body = {
        "id": event_id,
        "contract": contract.pk,
        "started_at": iso(started_at),
        "ended_at": iso(ended_at),
        "gpu_seconds": gpu_seconds,
    }
    if node is not None:
        body["node"] = node
    return body


def ingest(provider: Organization, *records: dict, at: datetime = REPORTED_AT) -> None:
    """Report usage as the provider does, at ``at``; every record must be accepted."""
    with time_machine.travel(at, tick=False):
        result = usage_ingest(provider=provider, records=list(records))
    assert (len(result.accepted), result.duplicates, result.rejected) == (len(records), [], []), result


def store_unchecked(provider: Organization, *records: dict, at: datetime = REPORTED_AT) -> None:
    """Store usage past what ingestion accepts (more GPUs in use than exist), straight into the
    table as a fault or an import might: the rating's cap is the last line of defence, and
    these records test it. The totals trigger counts them as it counts any insert."""
    nodes = dict(Node.objects.values_list("hostname", "id"))
    rows = []
    for body in records:
        started_at, ended_at = (datetime.fromisoformat(body[key]) for key in ("started_at", "ended_at"))
        rows.append(
            (provider.pk, body["id"], body["contract"], nodes.get(body.get("node")), started_at, ended_at,
             Decimal(str(body["gpu_seconds"])), month_of(started_at), at)
        )  # fmt: skip
    bulk_insert(
        UsageRecord,
        ("provider_id", "event_id", "contract_id", "node_id", "started_at", "ended_at", "gpu_seconds", "period",
         "received_at"),
        rows,
    )  # fmt: skip


def close(period: date) -> None:
    """Close a month as of the first second after it (its close is allowed from then)."""
    end_year, end_month = period.year + (period.month == 12), period.month % 12 + 1
    with time_machine.travel(utc(end_year, end_month, 1, 0, 0, 1), tick=False):
        billing_period_close(period=period)


def billing_snapshot() -> dict:
    """Everything a close or a preview could write, to compare before and after."""
    return {
        "periods": list(BillingPeriod.objects.order_by("pk").values_list("pk", "period", "usage_watermark")),
        "invoices": list(Invoice.objects.order_by("pk").values_list("pk", "number", "status", "total")),
        "lines": list(InvoiceLine.objects.order_by("pk").values_list("pk", "invoice_id", "quantity", "amount")),
        "statements": list(PayoutStatement.objects.order_by("pk").values_list("pk", "gross", "fee", "net")),
        "entries": list(LedgerEntry.objects.order_by("pk").values_list("pk", "account_id", "amount")),
    }


def invoice_of(lab: Organization, period: date) -> Invoice:
    return Invoice.objects.get(lab=lab, period=period)


def line_figures(invoice: Invoice) -> list[tuple]:
    """(contract id, kind, service period, quantity, unit price, amount) of each line, in order."""
    return list(
        invoice.lines.order_by("id").values_list(
            "contract_id", "kind", "service_period", "quantity", "unit_price", "amount"
        )
    )


def hours_later(moment: datetime, hours: int) -> datetime:
    return moment + timedelta(hours=hours)
