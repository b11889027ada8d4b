"""List pages run a fixed number of queries, whether a table holds 4 rows or 10,000.

Rows are written with bulk_create straight into the tables (the services would take minutes
for 10,000 contracts), respecting every database constraint: ledger transactions balance,
invoices are one per lab and month, accounts one per kind and organization.
"""

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from types import SimpleNamespace

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from billing.models import Account, Invoice, LedgerEntry, LedgerTransaction, UsageRecord
from broker.models import ComputeRequest, Contract
from core.timeutils import HOUR
from marketplace.models import Cluster, GpuModel, Listing, Node, Organization
from tests.backoffice.conftest import check_deferred_constraints
from tests.backoffice.factories import changelist_url

SMALL, LARGE = 4, 10_000
START = datetime(2026, 3, 2, tzinfo=UTC)
PRICE = Decimal("2.0000")

# Queries of one changelist page for a logged-in superuser, the same at 4 and 10,000 rows and
# on both backends. Every page: the session and the user, then the page of rows (related rows
# joined in). Then, where the admin has them: a GPU-model filter's choices (1), the filtered
# and the full result counts (2; 1 where show_full_result_count is off), and the date
# hierarchy's bounds and buckets (2).
PINNED = {
    "contracts": 8,  # 2 + rows + filter choices + 2 counts + 2 date hierarchy
    "usage records": 6,  # 2 + rows + 1 count + 2 date hierarchy
    "ledger entries": 4,  # 2 + rows + 1 count
    "nodes": 4,  # 2 + rows + 1 count
    "listings": 8,  # 2 + rows + filter choices + 2 counts + 2 date hierarchy
    "compute requests": 8,  # 2 + rows + filter choices + 2 counts + 2 date hierarchy
    "invoices": 7,  # 2 + rows + 2 counts + 2 date hierarchy
    "accounts": 5,  # 2 + rows (balances summed in the same query) + 2 counts
}


@pytest.fixture
def base(db) -> SimpleNamespace:
    provider = Organization.objects.create(name="Provider", is_provider=True)
    lab = Organization.objects.create(name="Lab", is_lab=True)
    gpu_model = GpuModel.objects.get(slug="h100-sxm-80gb")
    cluster = Cluster.objects.create(
        provider=provider, name="c1", gpu_model=gpu_model, region="us-south-1", interconnect="infiniband",
        gpus_per_node=8,
    )  # fmt: skip
    listing = Listing.objects.create(
        provider=provider, cluster=cluster, node_count=100, starts_at=START, ends_at=START + 24 * 365 * HOUR,
        price_per_gpu_hour=PRICE, billing_mode="metered",
    )  # fmt: skip
    contract = Contract.objects.create(
        listing=listing, lab=lab, provider=provider, cluster=cluster, gpu_count=800, node_count=100,
        starts_at=START, ends_at=listing.ends_at, price_per_gpu_hour=PRICE, billing_mode="metered",
    )  # fmt: skip
    return SimpleNamespace(
        provider=provider, lab=lab, gpu_model=gpu_model, cluster=cluster, listing=listing, contract=contract
    )


def build_contracts(base, start: int, count: int) -> None:
    statuses = list(Contract.Status)
    Contract.objects.bulk_create(
        (
            Contract(
                listing=base.listing,
                lab=base.lab,
                provider=base.provider,
                cluster=base.cluster,
                gpu_count=8,
                node_count=1,
                starts_at=START + i * HOUR,
                ends_at=START + (i + 24) * HOUR,
                price_per_gpu_hour=PRICE,
                billing_mode="committed",
                total_amount=Decimal("384.00"),
                status=statuses[i % len(statuses)],
                cancel_reason="because" if i % len(statuses) == 4 else "",
            )
            for i in range(start, start + count)
        ),
        batch_size=2000,
    )


def build_usage_records(base, start: int, count: int) -> None:
    UsageRecord.objects.bulk_create(
        (
            UsageRecord(
                provider=base.provider,
                event_id=f"evt-{i:06d}",
                contract=base.contract,
                started_at=START + i * timedelta(minutes=5),
                ended_at=START + (i + 1) * timedelta(minutes=5),
                gpu_seconds=Decimal("2400.000"),
                period=date(2026, 3 + i * 5 // (60 * 24 * 31), 1),
            )
            for i in range(start, start + count)
        ),
        batch_size=2000,
    )


def build_ledger_entries(base, start: int, count: int) -> None:
    """``count`` entries: half as many transactions, each a balanced pair of legs."""
    receivable, _ = Account.objects.get_or_create(kind=Account.Kind.LAB_RECEIVABLE, organization=base.lab)
    payable, _ = Account.objects.get_or_create(kind=Account.Kind.PROVIDER_PAYABLE, organization=base.provider)
    transactions = LedgerTransaction.objects.bulk_create(
        (
            LedgerTransaction(kind=LedgerTransaction.Kind.INVOICE, source_key=f"test:{i}", memo=f"Entry pair {i}")
            for i in range(start // 2, (start + count) // 2)
        ),
        batch_size=2000,
    )
    LedgerEntry.objects.bulk_create(
        (
            LedgerEntry(transaction=txn, account=account, amount=amount)
            for txn in transactions
            for account, amount in ((receivable, Decimal("10.00")), (payable, Decimal("-10.00")))
        ),
        batch_size=2000,
    )
    check_deferred_constraints()  # every transaction balances


def build_nodes(base, start: int, count: int) -> None:
    Node.objects.bulk_create(
        (Node(cluster=base.cluster, hostname=f"node-{i:05d}") for i in range(start, start + count)), batch_size=2000
    )


def build_listings(base, start: int, count: int) -> None:
    statuses = list(Listing.Status)
    Listing.objects.bulk_create(
        (
            Listing(
                provider=base.provider,
                cluster=base.cluster,
                node_count=1 + i % 8,
                starts_at=START + i * HOUR,
                ends_at=START + (i + 48) * HOUR,
                price_per_gpu_hour=PRICE + i % 100,
                billing_mode="committed",
                status=statuses[i % len(statuses)],
            )
            for i in range(start, start + count)
        ),
        batch_size=2000,
    )


def build_compute_requests(base, start: int, count: int) -> None:
    statuses = list(ComputeRequest.Status)
    ComputeRequest.objects.bulk_create(
        (
            ComputeRequest(
                lab=base.lab,
                gpu_model=base.gpu_model,
                gpu_count=8 * (1 + i % 16),
                starts_at=START + i * HOUR,
                duration_hours=24,
                ends_at=START + (i + 24) * HOUR,
                max_price_per_gpu_hour=PRICE,
                billing_mode="metered",
                status=statuses[i % len(statuses)],
            )
            for i in range(start, start + count)
        ),
        batch_size=2000,
    )


def _organizations(prefix: str, start: int, count: int) -> list[Organization]:
    return Organization.objects.bulk_create(
        (Organization(name=f"{prefix} {i:05d}", is_lab=True, is_provider=True) for i in range(start, start + count)),
        batch_size=2000,
    )


def build_invoices(base, start: int, count: int) -> None:
    """One invoice per lab and month: lab i % 100, month i // 100 (100 labs, up to 100 months)."""
    labs = {org.name: org for org in Organization.objects.filter(name__startswith="Billed lab")}
    missing = [i for i in range(100) if f"Billed lab {i:05d}" not in labs]
    labs |= {org.name: org for org in _organizations("Billed lab", missing[0], len(missing))} if missing else {}
    Invoice.objects.bulk_create(
        (
            Invoice(
                lab=labs[f"Billed lab {i % 100:05d}"],
                period=date(2018 + i // 100 // 12, i // 100 % 12 + 1, 1),
                number=f"INV-T-{i:06d}",
                status=Invoice.Status.ISSUED,
                total=Decimal("100.00"),
                issued_at=START + i * HOUR,
            )
            for i in range(start, start + count)
        ),
        batch_size=2000,
    )


def build_accounts(base, start: int, count: int) -> None:
    """A receivable and a payable account for each of ``count / 2`` organizations."""
    organizations = _organizations("Account holder", start // 2, count // 2)
    Account.objects.bulk_create(
        (
            Account(kind=kind, organization=organization)
            for organization in organizations
            for kind in (Account.Kind.LAB_RECEIVABLE, Account.Kind.PROVIDER_PAYABLE)
        ),
        batch_size=2000,
    )


CHANGELISTS = {
    "contracts": (Contract, build_contracts),
    "usage records": (UsageRecord, build_usage_records),
    "ledger entries": (LedgerEntry, build_ledger_entries),
    "nodes": (Node, build_nodes),
    "listings": (Listing, build_listings),
    "compute requests": (ComputeRequest, build_compute_requests),
    "invoices": (Invoice, build_invoices),
    "accounts": (Account, build_accounts),
}


def queries_of(client, url: str) -> tuple[int, object]:
    with CaptureQueriesContext(connection) as captured:
        response = client.get(url)
    assert response.status_code == 200, response.content[:500]
    return len(captured), response


@pytest.mark.parametrize("name", CHANGELISTS)
def test_changelist_queries_stay_constant_at_10000_rows(operator_client, base, django_assert_max_num_queries, name):
    model, build = CHANGELISTS[name]
    url = changelist_url(model)
    existing = model.objects.count()  # the base's own contract and listing
    build(base, 0, SMALL)
    small, response = queries_of(operator_client, url)
    assert len(response.context["cl"].result_list) == existing + SMALL

    build(base, SMALL, LARGE - SMALL)
    assert model.objects.count() == existing + LARGE
    large, response = queries_of(operator_client, url)
    assert len(response.context["cl"].result_list) == 100  # one page
    assert large == small, f"{name}: {small} queries with {SMALL} rows, {large} with {LARGE}"

    with django_assert_max_num_queries(PINNED[name]):
        operator_client.get(url)
    assert small == PINNED[name], f"re-pin {name}: it now takes {small} queries"
