from datetime import UTC, date, datetime
from decimal import Decimal
from types import SimpleNamespace

import pytest
import time_machine
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import connection, transaction
from django.test import Client, TestCase

from backoffice.demo import LAB, seed_demo_market
from billing.models import Invoice, PayoutStatement
from billing.services import billing_period_close, credit_note_create, invoice_record_payment
from broker.services import contracts_advance
from core.services import audit_record
from core.timeutils import next_hour
from events.services import event_publish, webhook_endpoint_create
from marketplace.models import IdempotencyRecord, Organization
from marketplace.services import membership_add
from tests.backoffice import factories

OPERATOR = "ops-alice"


@pytest.fixture
def operator(db):
    """A staff superuser: the operators run the market with full rights. The client logs in
    with ``force_login``, so no password (hashing one takes a second)."""
    return get_user_model().objects.create_superuser(OPERATOR, "alice@ops.example", None)


@pytest.fixture
def operator_client(operator) -> Client:
    client = Client()
    client.force_login(operator)
    return client


@pytest.fixture(scope="module")
def demo_market(django_db_setup, django_db_blocker):
    """The demo market plus a row of every model the admin shows, built once per test module.

    It lives in a transaction that is rolled back after the module; each test runs inside it
    in a savepoint of its own (pytest-django's ``db``), so tests may change it freely.
    """
    with django_db_blocker.unblock(), transaction.atomic():
        with TestCase.captureOnCommitCallbacks(execute=True):  # the matching queued by the seed runs
            keys = seed_demo_market()
        lab = Organization.objects.get(name=LAB)
        invoice = Invoice.objects.get(lab=lab, status=Invoice.Status.ISSUED)
        invoice_record_payment(invoice=invoice, amount=Decimal("100.00"), reference="wire 1")
        credit_note_create(invoice=invoice, reason="goodwill", amount=Decimal("50.00"))
        membership_add(organization=lab, username="lab-owner", role="owner")
        IdempotencyRecord.objects.create(organization=lab, key="k-1", fingerprint="0" * 64, response_status=201)
        audit_record(action="seeded", target=lab, actor_label="demo-seed")
        # A webhook endpoint and a delivery waiting to be sent (never sent: nothing here commits).
        webhook_endpoint_create(
            organization=lab, url="https://hooks.frontier.example/gpb", event_types=["contract.node_replaced"]
        )
        event_publish(organization_id=lab.pk, type="contract.node_replaced", data={"object": "contract", "id": 1})
        Group.objects.create(name="Support")
        clerk = get_user_model().objects.create_user("ops-bob", is_staff=True)
        LogEntry.objects.log_actions(user_id=clerk.pk, queryset=[lab], action_flag=CHANGE, change_message="seeded")
        check_deferred_constraints()
        yield keys
        transaction.set_rollback(True)


# A Tuesday morning near the end of September: contracts written now run into October,
# so closing September invoices part of them.
NOW = datetime(2026, 9, 29, 10, 17, 23, tzinfo=UTC)
SEPTEMBER = date(2026, 9, 1)


@pytest.fixture
def frozen():
    """The clock stopped at ``NOW``; ``frozen.move_to(...)`` moves it."""
    with time_machine.travel(NOW, tick=False) as traveller:
        yield traveller


@pytest.fixture
def market(frozen, db) -> SimpleNamespace:
    """A provider with a 4-node H100 cluster listed from the next hour for 5 days (committed,
    2.0000 per GPU-hour), and a lab. Keys: ``provider_secret``, ``lab_secret``."""
    provider, provider_secret = factories.organization("Colossus", "provider")
    lab, lab_secret = factories.organization("Frontier", "lab")
    cluster = factories.cluster(provider=provider, nodes=4)
    listing = factories.listing(cluster=cluster, starts_at=next_hour(), hours=120, nodes=4)
    yield SimpleNamespace(
        provider=provider,
        provider_secret=provider_secret,
        lab=lab,
        lab_secret=lab_secret,
        cluster=cluster,
        listing=listing,
    )
    check_deferred_constraints()


def check_deferred_constraints() -> None:
    """Fire PostgreSQL's deferred checks now (balanced ledger transactions, allocations on their
    listing's nodes): a test's transaction is rolled back, never committed, so they would not run."""
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")


@pytest.fixture
def september_closed(market, frozen) -> SimpleNamespace:
    """``market`` plus a contract of 2 nodes for 96 hours from 11:00 on 29 September, and
    September closed at 00:30 on 1 October: its invoice (37 hours x 16 GPUs x 2.0000 =
    1,184.00) is issued and unpaid, its payout statement issued. The clock then stands at
    14:20 on 1 October, while the contract runs."""
    market.contract = factories.contract(
        lab=market.lab, listing=market.listing, starts_at=next_hour(), hours=96, nodes=2
    )
    frozen.move_to(datetime(2026, 10, 1, 0, 30, tzinfo=UTC))
    contracts_advance()
    billing_period_close(period=SEPTEMBER)
    market.invoice = Invoice.objects.get(lab=market.lab, period=SEPTEMBER)
    market.statement = PayoutStatement.objects.get(provider=market.provider, period=SEPTEMBER)
    assert market.invoice.status == Invoice.Status.ISSUED and market.invoice.total == Decimal("1184.00")
    frozen.move_to(datetime(2026, 10, 1, 14, 20, tzinfo=UTC))
    market.contract.refresh_from_db()
    return market
