"""SLA credits: GPU-hours lost to failures and late delivery, credited by the close without a
claim, on the lab's invoice, the provider's statement and the ledger (billing.sla)."""

from datetime import timedelta
from decimal import Decimal

import pytest
import time_machine
from django.db.models import Sum

from billing.models import InvoiceLine, LedgerEntry, PayoutStatement
from billing.services import billing_period_preview
from broker.models import Allocation, Contract, Incident
from marketplace.models import Listing
from tests.billing.factories import (
    COMMITTED,
    METERED,
    NOVEMBER,
    OCTOBER,
    close,
    contract_create,
    invoice_of,
    make_lab,
    make_provider,
    utc,
)

pytestmark = pytest.mark.django_db

D = Decimal
START = utc(2026, 10, 10)  # 48 hours: October 10th 00:00 to 12th 00:00


def sold(*, mode=COMMITTED, nodes=2, hours=48, price="2.0000", promise=None, rate=None, starts_at=START):
    """A contract of ``nodes`` x 8 GPUs, delivered at its start unless a test says otherwise."""
    provider, lab = make_provider(), make_lab()
    contract = contract_create(
        lab=lab, provider=provider, starts_at=starts_at, hours=hours, nodes=nodes, price=price, mode=mode
    )
    if promise is not None or rate is not None:
        # The promise a contract keeps is the one its listing made when it was written.
        Listing.objects.filter(pk=contract.listing_id).update(
            sla_availability=D(promise or "99"), sla_breach_credit_rate=D(rate or "1.5")
        )
        Contract.objects.filter(pk=contract.pk).update(
            sla_availability=D(promise or "99"), sla_breach_credit_rate=D(rate or "1.5")
        )
    Contract.objects.filter(pk=contract.pk).update(delivered_at=contract.starts_at)
    contract.refresh_from_db()
    return contract


def usage(contract, node, start, end):
    """The node's 8 GPUs busy from start to end, reported the day after the contract's start."""
    from tests.billing.factories import ingest, record

    seconds = int((end - start).total_seconds()) * 8
    ingest(contract.provider, record(f"u-{node.pk}-{start:%H}", contract, start, end, seconds, node=node.hostname),
           at=START + timedelta(days=3))  # fmt: skip


def node_of(contract, index=0):
    return Allocation.objects.filter(contract=contract).order_by("node_id")[index].node


def fail(contract, *, node_index=0, started_at, resolved_at=None, kind=Incident.Kind.FAILURE):
    node = node_of(contract, node_index)
    return Incident.objects.create(
        provider_id=contract.provider_id,
        cluster_id=contract.cluster_id,
        node=node,
        kind=kind,
        started_at=started_at,
        resolved_at=resolved_at,
    )


def credit_lines(contract):
    return list(
        InvoiceLine.objects.filter(contract=contract, kind=InvoiceLine.Kind.SLA_CREDIT)
        .order_by("id")
        .values_list("service_period", "quantity", "unit_price", "amount", "fee_amount")
    )


def test_a_contract_inherits_its_listings_promise_when_it_is_written():
    contract = sold()
    assert (contract.sla_availability, contract.sla_breach_credit_rate) == (D("99.00"), D("1.50"))
    Listing.objects.filter(pk=contract.listing_id).update(sla_availability=D("95"))
    contract.refresh_from_db()
    assert contract.sla_availability == D("99.00")  # a later change of the listing is not the contract's


def test_a_failure_without_replacement_is_credited_at_the_price_within_the_promise():
    # 2 nodes x 8 GPUs, 48 h: 768 GPU-hours; a 90% promise allows 76.8 lost GPU-hours.
    contract = sold(promise="90")
    fail(contract, started_at=START + timedelta(hours=5), resolved_at=START + timedelta(hours=8, minutes=30))
    close(OCTOBER)
    # 3 h 30 min x 8 GPUs = 28 GPU-hours x 2.0000 = 56.00, fee 5% = 2.80
    assert credit_lines(contract) == [(OCTOBER, D("28"), D("2.0000"), D("-56.00"), D("-2.80"))]
    invoice = invoice_of(contract.lab, OCTOBER)
    assert invoice.total == D("1536.00") - D("56.00")
    statement = PayoutStatement.objects.get(provider=contract.provider, period=OCTOBER)
    assert (statement.gross, statement.fee, statement.sla_credits) == (D("1480.00"), D("74.00"), D("-56.00"))
    assert statement.net == D("1406.00")
    # The ledger nets the credit out of the sale: the lab owes 1,480.00, the provider is owed 1,406.00.
    owed = LedgerEntry.objects.filter(account__organization=contract.lab).aggregate(total=Sum("amount"))["total"]
    assert owed == D("1480.00")
    due = LedgerEntry.objects.filter(account__organization=contract.provider).aggregate(total=Sum("amount"))
    assert due["total"] == D("-1406.00")


def test_past_the_promise_every_lost_hour_is_credited_at_the_breach_rate():
    contract = sold()  # 99%: 7.68 GPU-hours allowed
    fail(contract, started_at=START + timedelta(hours=5), resolved_at=START + timedelta(hours=8, minutes=30))
    close(OCTOBER)
    assert credit_lines(contract) == [(OCTOBER, D("28"), D("3.0000"), D("-84.00"), D("-4.20"))]
    assert "below the 99% promised: 1.5 x price" in InvoiceLine.objects.get(kind="sla_credit").description


def test_a_replaced_node_loses_only_the_hours_until_its_replacement():
    contract = sold(promise="90")
    failed = node_of(contract)
    fail(contract, started_at=START + timedelta(hours=5, minutes=20))
    # The broker cut the failed node's allocation at the next whole hour; another node serves on.
    Allocation.objects.filter(contract=contract, node=failed).update(ends_at=START + timedelta(hours=6))
    close(OCTOBER)
    # 40 minutes x 8 GPUs = 5.3333 GPU-hours -> 10.67
    [(_, quantity, _, amount, _)] = credit_lines(contract)
    assert quantity == D("5.333333") and amount == D("-10.67")


def test_a_late_delivery_is_credited_from_the_start_until_the_delivery():
    contract = sold(promise="90")
    Contract.objects.filter(pk=contract.pk).update(
        delivered_at=START + timedelta(hours=2), delivery_late_at=START + timedelta(minutes=30)
    )
    close(OCTOBER)
    # 2 h x 16 GPUs = 32 GPU-hours x 2.0000
    assert credit_lines(contract) == [(OCTOBER, D("32"), D("2.0000"), D("-64.00"), D("-3.20"))]


def test_a_delivery_within_the_grace_is_on_time():
    contract = sold(promise="90")
    Contract.objects.filter(pk=contract.pk).update(delivered_at=START + timedelta(minutes=29))
    close(OCTOBER)
    assert credit_lines(contract) == []


def test_a_late_delivery_the_sweep_missed_is_still_late():
    contract = sold(promise="90")
    Contract.objects.filter(pk=contract.pk).update(delivered_at=START + timedelta(minutes=45))
    close(OCTOBER)
    assert credit_lines(contract)[0][1] == D("12")  # 45 min x 16 GPUs


def test_a_failure_while_undelivered_counts_once():
    contract = sold(promise="90")
    Contract.objects.filter(pk=contract.pk).update(
        delivered_at=START + timedelta(hours=2), delivery_late_at=START + timedelta(minutes=30)
    )
    fail(contract, started_at=START + timedelta(hours=1), resolved_at=START + timedelta(hours=3))
    close(OCTOBER)
    # node 1: late 0-2 h and failed 1-3 h: 3 h; node 2: late 0-2 h: 2 h. 5 h x 8 GPUs.
    assert credit_lines(contract)[0][1] == D("40")


def test_degradations_are_not_credited():
    contract = sold(promise="90")
    fail(contract, started_at=START + timedelta(hours=1), resolved_at=START + timedelta(hours=9), kind="degraded")
    close(OCTOBER)
    assert credit_lines(contract) == []


def test_a_metered_contract_is_credited_only_the_breach_premium():
    # Its lost hours are not billed (usage on a failed node is refused): within the promise
    # nothing is owed; past it, (rate - 1) x price per lost GPU-hour.
    within = sold(mode=METERED, promise="90")
    fail(within, started_at=START + timedelta(hours=5), resolved_at=START + timedelta(hours=8, minutes=30))
    past = sold(mode=METERED)
    fail(past, started_at=START + timedelta(hours=5), resolved_at=START + timedelta(hours=8, minutes=30))
    # the other node's 10 busy hours: 80 GPU-hours billed, 160.00 (credits never pass what was billed)
    usage(past, node_of(past, 1), START, START + timedelta(hours=10))
    close(OCTOBER)
    assert credit_lines(within) == []
    assert credit_lines(past) == [(OCTOBER, D("28"), D("1.0000"), D("-28.00"), D("-1.40"))]


def test_a_metered_premium_never_passes_the_usage_billed():
    contract = sold(mode=METERED)
    fail(contract, started_at=START + timedelta(hours=5), resolved_at=START + timedelta(hours=8, minutes=30))
    usage(contract, node_of(contract, 1), START, START + timedelta(hours=1))  # 8 GPU-hours: 16.00
    close(OCTOBER)
    assert credit_lines(contract)[0][3] == D("-16.00")  # 28.00 owed, 16.00 billed


def test_an_incident_open_over_the_month_end_is_credited_by_each_close_for_its_own_hours():
    starts_at = utc(2026, 10, 31, 20)
    contract = sold(promise="50", starts_at=starts_at, hours=48)
    incident = fail(contract, started_at=starts_at + timedelta(hours=2))
    close(OCTOBER)
    # October: 22:00 to 24:00, 2 h x 8 GPUs
    assert credit_lines(contract) == [(OCTOBER, D("16"), D("2.0000"), D("-32.00"), D("-1.60"))]
    Incident.objects.filter(pk=incident.pk).update(resolved_at=starts_at + timedelta(hours=7))
    close(NOVEMBER)
    # November: 00:00 to 03:00 more, 3 h x 8 GPUs; the lines add up to the whole loss
    assert credit_lines(contract)[1] == (NOVEMBER, D("24"), D("2.0000"), D("-48.00"), D("-2.40"))


def test_crossing_the_promise_later_tops_up_the_hours_credited_before():
    starts_at = utc(2026, 10, 31, 20)
    # 1 node x 8 GPUs, 100 h: 800 GPU-hours; 95% allows 40 lost GPU-hours.
    contract = sold(nodes=1, promise="95", rate="2", starts_at=starts_at, hours=100)
    incident = fail(contract, started_at=starts_at)
    close(OCTOBER)  # 4 h x 8 = 32 GPU-hours: within the promise, at the price
    assert credit_lines(contract) == [(OCTOBER, D("32"), D("2.0000"), D("-64.00"), D("-3.20"))]
    Incident.objects.filter(pk=incident.pk).update(resolved_at=starts_at + timedelta(hours=6))
    close(NOVEMBER)  # 48 GPU-hours in all: past the promise, all of them at 2 x price = 192.00 owed
    assert credit_lines(contract)[1] == (NOVEMBER, D("16"), D("4.0000"), D("-128.00"), D("-6.40"))


def test_an_incident_resolved_earlier_than_a_close_counted_takes_nothing_back():
    starts_at = utc(2026, 10, 31, 20)
    contract = sold(promise="50", starts_at=starts_at, hours=48)
    incident = fail(contract, started_at=starts_at + timedelta(hours=2))
    close(OCTOBER)
    Incident.objects.filter(pk=incident.pk).update(resolved_at=starts_at + timedelta(hours=3))
    close(NOVEMBER)
    assert len(credit_lines(contract)) == 1


def test_a_failure_on_another_contracts_hours_of_the_node_is_not_this_ones():
    contract = sold(promise="90", nodes=1, hours=4)
    fail(contract, started_at=START + timedelta(hours=10), resolved_at=START + timedelta(hours=12))
    close(OCTOBER)
    assert credit_lines(contract) == []


def test_the_preview_shows_the_credit_owed_so_far():
    contract = sold(promise="90")
    fail(contract, started_at=START + timedelta(hours=5))  # still open
    with time_machine.travel(START + timedelta(hours=7), tick=False):
        lines = billing_period_preview(lab=contract.lab, period=OCTOBER)
    [credit] = [line for line in lines if line.kind == InvoiceLine.Kind.SLA_CREDIT]
    assert (credit.quantity, credit.amount) == (D("16"), D("-32.00"))  # 2 h so far, not the month's end


def test_an_invoice_whose_credits_pass_its_charges_owes_the_lab_and_is_settled():
    starts_at = utc(2026, 10, 31, 23)
    # 1 hour billed in October, 1 in November, lost then, past a 99% promise at 3 x price.
    contract = sold(nodes=1, promise="99", rate="3", starts_at=starts_at, hours=2)
    fail(contract, started_at=starts_at + timedelta(hours=1))
    close(OCTOBER)
    close(NOVEMBER)
    invoice = invoice_of(contract.lab, NOVEMBER)
    # 3 x 16.00 = 48.00 owed, capped at the 32.00 the contract was billed in all
    assert credit_lines(contract) == [(NOVEMBER, D("8"), D("6.0000"), D("-32.00"), D("-1.60"))]
    assert invoice.total == D("16.00") - D("32.00")
    assert invoice.status == "paid"  # nothing to pay; the ledger shows what is owed to the lab
    owed = LedgerEntry.objects.filter(account__organization=contract.lab).aggregate(total=Sum("amount"))["total"]
    assert owed == D("16.00") - D("16.00")  # October's 16.00 owed, November's 16.00 owed back


def test_credits_never_pass_what_the_contract_was_billed_net_of_credit_notes():
    from billing.services import credit_note_create

    starts_at = utc(2026, 10, 31, 20)
    contract = sold(nodes=1, promise="99", rate="2", starts_at=starts_at, hours=8)  # 4 h in each month
    close(OCTOBER)
    # October's 4 hours (64.00) given back in full by a credit note...
    credit_note_create(invoice=invoice_of(contract.lab, OCTOBER), reason="goodwill")
    # ...then a failure over the last 2 hours of the contract: 2 x 8 x 2.00 x 2 = 64.00 owed
    fail(contract, started_at=starts_at + timedelta(hours=6))
    close(NOVEMBER)
    # billed net: 64.00 (November) + 64.00 - 64.00 (October, credited): the credit fits
    assert credit_lines(contract)[0][3] == D("-64.00")


def test_credit_notes_never_reverse_a_credit_line():
    from billing.services import credit_note_create

    contract = sold(promise="90")
    fail(contract, started_at=START + timedelta(hours=5), resolved_at=START + timedelta(hours=8, minutes=30))
    close(OCTOBER)
    invoice = invoice_of(contract.lab, OCTOBER)
    note = credit_note_create(invoice=invoice, reason="goodwill")
    assert note.amount == D("1480.00")
    assert {line.invoice_line.kind for line in note.lines.select_related("invoice_line")} == {"committed"}


class TestUsageOnAFailedNode:
    def records(self, contract, node, start, end, event="u1"):
        from tests.billing.factories import record

        return record(event, contract, start, end, (end - start).total_seconds() * 8, node=node.hostname)

    def test_usage_overlapping_a_failure_is_rejected_with_the_incident(self):
        from billing.services import usage_ingest

        contract = sold(promise="90")
        node = node_of(contract)
        incident = fail(contract, started_at=START + timedelta(hours=5), resolved_at=START + timedelta(hours=8))
        with time_machine.travel(START + timedelta(hours=20), tick=False):
            result = usage_ingest(
                provider=contract.provider,
                records=[
                    self.records(contract, node, START + timedelta(hours=4), START + timedelta(hours=5), "before"),
                    self.records(contract, node, START + timedelta(hours=7), START + timedelta(hours=9), "during"),
                    self.records(contract, node, START + timedelta(hours=8), START + timedelta(hours=9), "after"),
                    self.records(contract, node_of(contract, 1), START + timedelta(hours=6),
                                 START + timedelta(hours=7), "other"),
                ],
            )  # fmt: skip
        assert result.accepted == ["before", "after", "other"]
        [rejected] = result.rejected
        assert rejected["code"] == "node_failed"
        assert f"incident {incident.pk}" in rejected["message"] and "2026-10-10T08:00:00Z" in rejected["message"]

    def test_while_the_incident_is_open_the_node_takes_no_usage(self):
        from billing.services import usage_ingest

        contract = sold(promise="90")
        node = node_of(contract)
        fail(contract, started_at=START + timedelta(hours=5))
        with time_machine.travel(START + timedelta(hours=20), tick=False):
            result = usage_ingest(
                provider=contract.provider,
                records=[self.records(contract, node, START + timedelta(hours=10), START + timedelta(hours=11))],
            )
        assert result.rejected[0]["code"] == "node_failed" and "still open" in result.rejected[0]["message"]


def test_a_close_tells_each_lab_of_its_invoice_and_each_provider_of_its_statement():
    from events.models import Event

    contract = sold(promise="90")
    close(OCTOBER)
    invoice = invoice_of(contract.lab, OCTOBER)
    statement = PayoutStatement.objects.get(provider=contract.provider, period=OCTOBER)
    events = {(e.organization_id, e.type): e.data for e in Event.objects.all()}
    assert events[(contract.lab_id, "invoice.issued")]["number"] == invoice.number
    assert events[(contract.lab_id, "invoice.issued")]["total"] == "1536.00"
    assert events[(contract.provider_id, "payout_statement.issued")]["number"] == statement.number
    assert events[(contract.provider_id, "payout_statement.issued")]["period"] == "2026-10"


def test_a_credit_note_tells_the_lab():
    from billing.services import credit_note_create
    from events.models import Event

    contract = sold(promise="90")
    close(OCTOBER)
    note = credit_note_create(invoice=invoice_of(contract.lab, OCTOBER), reason="goodwill", amount=D("10.00"))
    event = Event.objects.get(type="credit_note.issued")
    assert event.organization_id == contract.lab_id
    assert (event.data["number"], event.data["amount"], event.data["reason"]) == (note.number, "10.00", "goodwill")


def test_a_credit_line_takes_no_capacity_from_late_usage_of_its_month():
    from tests.billing.factories import ingest, record

    contract = sold(mode=METERED, nodes=1, hours=48)  # 384 GPU-hours; 99%: breached below
    fail(contract, started_at=START + timedelta(hours=5), resolved_at=START + timedelta(hours=8))
    ingest(contract.provider, record("early", contract, START, START + timedelta(hours=4), 32 * 3600))
    close(OCTOBER)  # 32 GPU-hours billed (64.00); 24 lost past the promise: a premium of 24.00
    assert credit_lines(contract)[0][1:4:2] == (D("24"), D("-24.00"))
    # Usage for October reported after its close is billed as an adjustment, up to what the
    # contract could deliver in October: the credit line's hours are not usage billed.
    end = START + timedelta(hours=48)
    late = record("late", contract, START + timedelta(hours=4), end, 352 * 3600)
    ingest(contract.provider, late, at=utc(2026, 11, 2))
    close(NOVEMBER)
    adjustment = InvoiceLine.objects.get(contract=contract, kind=InvoiceLine.Kind.ADJUSTMENT)
    assert adjustment.quantity == D("352")


def test_a_record_stored_before_the_failure_was_reported_is_a_duplicate_when_sent_again():
    from billing.services import usage_ingest
    from tests.billing.factories import record

    contract = sold(promise="90")
    node = node_of(contract)
    sent = record("before-report", contract, START + timedelta(hours=5), START + timedelta(hours=6), 8 * 3600,
                  node=node.hostname)  # fmt: skip
    with time_machine.travel(START + timedelta(hours=7), tick=False):
        assert usage_ingest(provider=contract.provider, records=[sent]).accepted == ["before-report"]
    fail(contract, started_at=START + timedelta(hours=4))  # reported later, from before the record
    with time_machine.travel(START + timedelta(hours=8), tick=False):
        again = usage_ingest(provider=contract.provider, records=[sent])
    assert (again.accepted, again.duplicates, again.rejected) == ([], ["before-report"], [])
