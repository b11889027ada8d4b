"""After the sale, end to end through the API, with a real Celery worker and a real webhook
receiver: a failed node replaced and the lab told by a signed webhook; a failure with no
spare credited on the next invoice and the provider's statement; a late delivery credited.

The credits are for a month that has ended: its trades are made through the API with the
clock moved back into it, and the month is then closed by the worker's own task, on the real
clock, as beat would close it."""

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import time_machine

from billing.models import Invoice, InvoiceLine, PayoutStatement
from billing.tasks import close_previous_month
from broker.services import contracts_advance
from core.timeutils import month_of, next_hour, period_bounds, previous_month
from tests.conftest import requires_worker, wait_until
from tests.events.conftest import Receiver

pytestmark = requires_worker

D = Decimal


@pytest.fixture
def receiver(settings) -> Iterator[Receiver]:
    settings.WEBHOOK_ALLOW_LOOPBACK = True  # as the worker's (tests/conftest.py)
    receiver = Receiver()
    receiver.thread.start()
    try:
        yield receiver
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()


def subscribe(client, receiver: Receiver, path: str, event_types: list[str]) -> str:
    """Register a webhook endpoint on the receiver; returns its signing secret, shown once."""
    response = client.post(
        "/api/v1/webhook-endpoints", {"url": receiver.url(path), "event_types": event_types}, format="json"
    )
    assert response.status_code == 201, response.content
    return response.json()["secret"]


def received(receiver: Receiver, path: str, event_type: str, secret: str) -> dict:
    """The first event of a type the receiver got on a path, after checking its signature."""

    def find():
        with receiver.lock:
            requests = [r for r in receiver.requests if r["path"] == path]
        for request in requests:
            event = json.loads(request["body"])
            if event["type"] == event_type:
                assert receiver.verified(secret, request), "the signature does not verify"
                return event
        return None

    return wait_until(find, timeout=30)


def market(provider_client, lab_client, *, nodes: int, listed: int, starts_at: datetime, hours: int) -> dict:
    """A cluster of ``nodes`` nodes, ``listed`` of them offered at 2.00 with a 90% promise, and
    one node booked by the lab for ``hours`` from ``starts_at``; all through the API."""
    cluster = provider_client.post(
        "/api/v1/clusters",
        {"name": f"e2e-{starts_at:%m%d%H}", "gpu_model": "h100-sxm-80gb", "region": "us-south-1",
         "interconnect": "infiniband", "gpus_per_node": 8, "node_count": nodes},
        format="json",
    )  # fmt: skip
    assert cluster.status_code == 201, cluster.content
    listing = provider_client.post(
        "/api/v1/listings",
        {"cluster": cluster.json()["id"], "node_count": listed, "starts_at": iso(starts_at),
         "ends_at": iso(starts_at + timedelta(hours=hours)), "price_per_gpu_hour": "2.00",
         "billing_mode": "committed", "sla_availability": "90.00"},
        format="json",
    )  # fmt: skip
    assert listing.status_code == 201, listing.content
    booked = lab_client.post(
        f"/api/v1/listings/{listing.json()['id']}/book",
        {"gpu_count": 8, "starts_at": iso(starts_at), "duration_hours": hours},
        format="json",
    )
    assert booked.status_code == 201, booked.content
    contract = booked.json()
    nodes_page = provider_client.get(f"/api/v1/clusters/{cluster.json()['id']}/nodes?page_size=100").json()
    node_ids = {node["hostname"]: node["id"] for node in nodes_page["results"]}
    return {"cluster": cluster.json()["id"], "contract": contract["id"], "node_ids": node_ids}


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def serving(client, contract_id: int) -> list[str]:
    rows = client.get(f"/api/v1/contracts/{contract_id}/nodes?page_size=100").json()["results"]
    return [row["hostname"] for row in rows]


def test_a_failed_sold_node_is_replaced_and_the_lab_is_told_by_a_signed_webhook(
    real_worker, provider_client, lab_client, receiver
):
    secret = subscribe(lab_client, receiver, "/lab", ["contract.node_replaced", "incident.opened"])
    start = next_hour() + timedelta(hours=1)
    trade = market(provider_client, lab_client, nodes=3, listed=2, starts_at=start, hours=24)
    [failed] = serving(lab_client, trade["contract"])

    response = provider_client.post(
        f"/api/v1/clusters/{trade['cluster']}/nodes/{trade['node_ids'][failed]}/incidents",
        {"kind": "failure", "started_at": iso(datetime.now(UTC) - timedelta(minutes=2)), "detail": "GPU fell off"},
        format="json",
    )
    assert response.status_code == 201, response.content

    event = received(receiver, "/lab", "contract.node_replaced", secret)
    data = json.dumps(event["data"])
    [replacement] = [name for name in serving(lab_client, trade["contract"]) if name != failed]
    assert failed in data and replacement in data
    assert received(receiver, "/lab", "incident.opened", secret)["data"]
    # Nothing is lost: the contract had not started, so the spare serves all of it.
    assert serving(lab_client, trade["contract"]) == [replacement]


def last_month_at(day: int, hour: int) -> datetime:
    """A moment of the month before this one (real clock)."""
    first = period_bounds(previous_month(month_of(datetime.now(UTC))))[0]
    return first + timedelta(days=day - 1, hours=hour)


def close_on_the_worker(lab, provider) -> tuple[Invoice, PayoutStatement]:
    """The beat task that closes ended months, run by the worker on the real clock."""
    close_previous_month.delay()
    period = previous_month(month_of(datetime.now(UTC)))
    invoice = wait_until(lambda: Invoice.objects.filter(lab=lab, period=period).first(), timeout=60)
    return invoice, PayoutStatement.objects.get(provider=provider, period=period)


def test_a_failure_with_no_spare_is_credited_on_the_next_invoice_and_statement(
    real_worker, provider_client, lab_client, receiver
):
    lab_secret = subscribe(lab_client, receiver, "/lab", ["invoice.issued"])
    provider_secret = subscribe(provider_client, receiver, "/provider", ["payout_statement.issued"])
    start = last_month_at(10, 0)
    with time_machine.travel(start - timedelta(hours=2), tick=False):
        trade = market(provider_client, lab_client, nodes=1, listed=1, starts_at=start, hours=48)
    [node] = serving(lab_client, trade["contract"])
    with time_machine.travel(start + timedelta(minutes=5), tick=False):
        assert provider_client.post(
            f"/api/v1/contracts/{trade['contract']}/delivered", {"endpoint": "ssh://login.e2e.example:22"},
            format="json",
        ).status_code in (200, 201)  # fmt: skip
    with time_machine.travel(start + timedelta(hours=5, minutes=1), tick=False):
        incident = provider_client.post(
            f"/api/v1/clusters/{trade['cluster']}/nodes/{trade['node_ids'][node]}/incidents",
            {"kind": "failure", "started_at": iso(start + timedelta(hours=5)), "detail": "PSU"},
            format="json",
        ).json()
    with time_machine.travel(start + timedelta(hours=8, minutes=30), tick=False):
        resolved = provider_client.post(f"/api/v1/incidents/{incident['id']}/resolve", {}, format="json")
        assert resolved.status_code == 200, resolved.content

    invoice, statement = close_on_the_worker(lab_client.organization, provider_client.organization)

    # By hand: 3 h 30 min x 8 GPUs = 28 GPU-hours lost, no spare; 28 <= 10% of 384 GPU-hours
    # promised, so at the price: 28 x 2.00 = 56.00, of which the 5% fee 2.80.
    credit = InvoiceLine.objects.get(invoice=invoice, kind=InvoiceLine.Kind.SLA_CREDIT)
    assert (credit.contract_id, credit.quantity, credit.amount, credit.fee_amount) == (
        trade["contract"],
        D("28"),
        D("-56.00"),
        D("-2.80"),
    )
    assert invoice.total == D("768.00") - D("56.00")  # 48 h x 8 GPUs x 2.00, less the credit
    assert statement.sla_credits == D("-56.00") and statement.gross == D("712.00")
    seen = lab_client.get(f"/api/v1/invoices/{invoice.pk}").json()
    assert any(line["kind"] == "sla_credit" and line["amount"] == "-56.00" for line in seen["lines"]), seen
    assert provider_client.get(f"/api/v1/payouts/{statement.pk}").json()["sla_credits"] == "-56.00"
    assert received(receiver, "/lab", "invoice.issued", lab_secret)["data"]["total"] == "712.00"
    assert received(receiver, "/provider", "payout_statement.issued", provider_secret)["data"]["number"]


def test_a_late_delivery_is_credited(real_worker, provider_client, lab_client, receiver):
    lab_secret = subscribe(lab_client, receiver, "/lab", ["contract.delivery_late", "contract.delivered"])
    start = last_month_at(12, 0)
    with time_machine.travel(start - timedelta(hours=2), tick=False):
        trade = market(provider_client, lab_client, nodes=1, listed=1, starts_at=start, hours=24)
    with time_machine.travel(start + timedelta(minutes=45), tick=False):
        contracts_advance()  # the lifecycle's sweep, run every minute by beat: past the grace, late
    late = received(receiver, "/lab", "contract.delivery_late", lab_secret)
    assert late["data"]["id"] == trade["contract"]
    with time_machine.travel(start + timedelta(hours=2), tick=False):
        delivered = provider_client.post(
            f"/api/v1/contracts/{trade['contract']}/delivered",
            {"endpoint": "ssh://login.e2e.example:22", "detail": "user lab"},
            format="json",
        )
        assert delivered.status_code in (200, 201), delivered.content
    assert received(receiver, "/lab", "contract.delivered", lab_secret)

    invoice, statement = close_on_the_worker(lab_client.organization, provider_client.organization)

    # By hand: 2 h undelivered x 8 GPUs = 16 GPU-hours x 2.00 = 32.00.
    credit = InvoiceLine.objects.get(invoice=invoice, kind=InvoiceLine.Kind.SLA_CREDIT)
    assert (credit.quantity, credit.amount) == (D("16"), D("-32.00"))
    assert statement.sla_credits == D("-32.00")
