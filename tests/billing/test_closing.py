"""Closing a month: the management command and the Celery task, once, in order, and late usage."""

import threading
from collections import defaultdict
from datetime import date
from decimal import Decimal
from io import StringIO

import pytest
import time_machine
from django.core.management import CommandError, call_command
from django.db import connection

from billing.models import BillingPeriod, DocumentSequence, Invoice, InvoiceLine, LedgerTransaction, PayoutStatement
from billing.services import billing_period_close, usage_ingest
from billing.tasks import close_previous_month
from core.errors import InvalidTransition
from tests.billing.conftest import METERED_START
from tests.billing.factories import (
    AUGUST,
    COMMITTED,
    DECEMBER,
    METERED,
    NOVEMBER,
    OCTOBER,
    SEPTEMBER,
    billing_snapshot,
    close,
    contract_create,
    hours_later,
    ingest,
    invoice_of,
    line_figures,
    make_lab,
    make_provider,
    record,
    store_unchecked,
    utc,
)

pytestmark = pytest.mark.django_db

D = Decimal


def run_close(period: str, at) -> str:
    out = StringIO()
    with time_machine.travel(at, tick=False):
        call_command("close_billing_period", "--period", period, stdout=out)
    return out.getvalue()


class TestCommand:
    def test_closes_an_ended_month_once(self, lab_client, spanning_contract):
        out = run_close("2026-09", utc(2026, 10, 1, 0, 0, 1))
        assert out.strip() == "Closed 2026-09: 1 invoice(s), 1 provider statement(s)."
        snapshot = billing_snapshot()
        assert len(snapshot["invoices"]) == 1 and len(snapshot["statements"]) == 1

        again = run_close("2026-09", utc(2026, 10, 2))
        assert again.strip() == "2026-09 was already closed; nothing new was created."
        assert billing_snapshot() == snapshot

    @pytest.mark.parametrize("at", [utc(2026, 9, 30, 23, 59, 59), utc(2026, 9, 15), utc(2025, 1, 1)])
    def test_a_month_that_has_not_ended_is_refused(self, spanning_contract, at):
        with pytest.raises(CommandError, match="2026-09 has not ended yet"):
            run_close("2026-09", at)
        assert not BillingPeriod.objects.exists() and not Invoice.objects.exists()

    def test_the_service_refuses_it_as_a_conflict(self, spanning_contract):
        with time_machine.travel(utc(2026, 9, 30, 23, 59, 59), tick=False), pytest.raises(InvalidTransition) as refused:
            billing_period_close(period=SEPTEMBER)
        assert refused.value.code == "period_not_ended"
        assert refused.value.status_code == 409

    @pytest.mark.parametrize("period", ["2026-13", "2026/09", "09-2026", "9999-12", ""])
    def test_a_bad_period_is_a_command_error(self, period):
        with pytest.raises(CommandError):
            run_close(period, utc(2026, 10, 2))

    def test_a_month_with_nothing_to_bill_closes_with_no_documents(self, db):
        assert (
            run_close("2026-09", utc(2026, 10, 2)).strip() == "Closed 2026-09: 0 invoice(s), 0 provider statement(s)."
        )
        assert BillingPeriod.objects.get().period == SEPTEMBER


class TestTask:
    def test_closes_the_month_that_just_ended_and_is_safe_to_run_twice(self, lab_client, spanning_contract):
        with time_machine.travel(utc(2026, 10, 1, 0, 5), tick=False):
            first = close_previous_month.apply().get()
            snapshot = billing_snapshot()
            second = close_previous_month.apply().get()
        assert (first["period"], first["created"], first["invoices"]) == ("2026-09", True, 1)
        assert (second["created"], second["invoices"]) == (False, 0)
        assert billing_snapshot() == snapshot
        assert invoice_of(lab_client.organization, SEPTEMBER).total == D("263.20")

    def test_a_missed_run_is_caught_up_by_the_next_one(self, lab_client, spanning_contract):
        close(AUGUST)
        # The worker was down on October 1st: September stayed open. On November 1st the
        # task must not be stuck behind it (it runs once a month; beat does not replay misses).
        with time_machine.travel(utc(2026, 11, 1, 0, 30), tick=False):
            close_previous_month.apply().get()
        assert list(BillingPeriod.objects.order_by("period").values_list("period", flat=True)) == [
            AUGUST,
            SEPTEMBER,
            OCTOBER,
        ]
        assert invoice_of(lab_client.organization, SEPTEMBER).total == D("263.20")
        assert invoice_of(lab_client.organization, OCTOBER).total == D("75.20")

    def test_the_first_run_starts_from_the_first_month_anything_was_sold_for(self, lab_client, spanning_contract):
        # Nothing was ever closed and the spanning contract began in September: a first run on
        # December 1st closes September, October and November, not only November.
        with time_machine.travel(utc(2026, 12, 1, 0, 30), tick=False):
            outcome = close_previous_month.apply().get()
        assert outcome["period"] == "2026-11"
        assert list(BillingPeriod.objects.order_by("period").values_list("period", flat=True)) == [
            SEPTEMBER,
            OCTOBER,
            NOVEMBER,
        ]
        assert invoice_of(lab_client.organization, SEPTEMBER).total == D("263.20")

    def test_on_new_years_day_it_closes_december(self, db):
        with time_machine.travel(utc(2027, 1, 1, 0, 5), tick=False):
            assert close_previous_month.apply().get()["period"] == "2026-12"
        assert BillingPeriod.objects.get().period == DECEMBER


class TestOrder:
    def test_the_first_close_cannot_skip_a_month_with_sales(self, spanning_contract):
        # Closing October first would leave the contract's September hours unbilled for good.
        with time_machine.travel(utc(2026, 11, 2), tick=False):
            with pytest.raises(InvalidTransition, match="Close 2026-09 first"):
                billing_period_close(period=OCTOBER)
            assert not BillingPeriod.objects.exists()
            billing_period_close(period=AUGUST)  # earlier, empty months may open the books
            billing_period_close(period=SEPTEMBER)

    def test_months_close_in_order(self, spanning_contract):
        close(SEPTEMBER)
        with time_machine.travel(utc(2026, 12, 2), tick=False):
            with pytest.raises(InvalidTransition, match="Close 2026-10 first"):
                billing_period_close(period=NOVEMBER)
            with pytest.raises(InvalidTransition, match="already closed"):
                billing_period_close(period=AUGUST)
            billing_period_close(period=OCTOBER)
            billing_period_close(period=NOVEMBER)
        assert list(BillingPeriod.objects.order_by("period").values_list("period", flat=True)) == [
            SEPTEMBER,
            OCTOBER,
            NOVEMBER,
        ]
        with pytest.raises(CommandError, match="Close 2026-12 first"):
            run_close("2027-02", utc(2027, 3, 2))

    def test_each_month_takes_the_watermark_of_the_usage_it_saw(self, provider_client, metered_contract):
        close(SEPTEMBER)
        ingest(
            provider_client.organization,
            record("a", metered_contract, METERED_START, hours_later(METERED_START, 1), 10),
            at=utc(2026, 10, 6),
        )
        close(OCTOBER)
        ingest(
            provider_client.organization,
            record("b", metered_contract, METERED_START, hours_later(METERED_START, 1), 10),
            at=utc(2026, 11, 6),
        )
        close(NOVEMBER)
        watermarks = dict(BillingPeriod.objects.values_list("period", "usage_watermark"))
        ids = dict(metered_contract.usage_records.values_list("event_id", "id"))
        assert watermarks == {SEPTEMBER: 0, OCTOBER: ids["a"], NOVEMBER: ids["b"]}


def billed_quantities() -> dict:
    """GPU-hours billed per (contract, service month), over every issued invoice."""
    totals: dict = defaultdict(lambda: D(0))
    for contract_id, period, quantity in InvoiceLine.objects.values_list("contract_id", "service_period", "quantity"):
        totals[(contract_id, period)] += quantity
    return dict(totals)


class TestLateUsage:
    def test_late_usage_is_billed_once_on_the_next_invoice_as_an_adjustment(
        self, provider_client, lab_client, metered_contract
    ):
        lab, provider, c = lab_client.organization, provider_client.organization, metered_contract
        h = lambda n: hours_later(METERED_START, n)  # noqa: E731
        close(SEPTEMBER)
        ingest(provider, record("on-time", c, h(0), h(1), 36000), at=utc(2026, 10, 20))
        close(OCTOBER)
        october = invoice_of(lab, OCTOBER)
        october_figures = (october.total, line_figures(october))
        # 10 GPU-h x 2.50.
        assert october_figures == (D("25.00"), [(c.pk, "metered", OCTOBER, D("10"), D("2.5"), D("25.00"))])

        # October's usage arriving on November 3rd, once and then again (a retry).
        late = record("late-1", c, h(1), h(2), 7200)
        ingest(provider, late, at=utc(2026, 11, 3))
        with time_machine.travel(utc(2026, 11, 3, 1), tick=False):
            assert usage_ingest(provider=provider, records=[late]).duplicates == ["late-1"]
        october.refresh_from_db()
        assert (october.total, line_figures(october)) == october_figures

        close(NOVEMBER)
        # 7,200 s = 2 GPU-h x 2.50 = 5.00, billed on November's invoice for October's service.
        november = invoice_of(lab, NOVEMBER)
        assert line_figures(november) == [(c.pk, "adjustment", OCTOBER, D("2"), D("2.5"), D("5.00"))]
        assert november.total == D("5.00")
        assert "late usage" in november.lines.get().description

        # Closing November again, and closing December with no new usage, bills nothing more.
        snapshot = billing_snapshot()
        close(NOVEMBER)
        assert billing_snapshot() == snapshot
        close(DECEMBER)
        assert not Invoice.objects.filter(period=DECEMBER).exists()

        # More October usage in December: on January's invoice, after December's close.
        ingest(provider, record("late-2", c, h(2), h(3), 3600), at=utc(2026, 12, 20))
        with time_machine.travel(utc(2027, 1, 1, 0, 0, 1), tick=False):
            billing_period_close(period=DECEMBER)  # already closed: nothing
        close(date(2027, 1, 1))
        assert line_figures(invoice_of(lab, date(2027, 1, 1))) == [
            (c.pk, "adjustment", OCTOBER, D("1"), D("2.5"), D("2.50"))
        ]
        # 36,000 + 7,200 + 3,600 s = 13 GPU-h billed for October, over three invoices, once.
        assert billed_quantities() == {(c.pk, OCTOBER): D("13")}

    def test_late_usage_is_capped_by_what_the_month_could_still_deliver(
        self, provider_client, lab_client, metered_contract
    ):
        lab, provider, c = lab_client.organization, provider_client.organization, metered_contract
        h = lambda n: hours_later(METERED_START, n)  # noqa: E731
        # 766 of October's 768 GPU-h billed on time.
        on_time = [record(f"t{i}", c, h(i), h(i + 1), 57600) for i in range(47)]
        on_time.append(record("t47", c, h(47), h(48), 50400))
        close(SEPTEMBER)
        ingest(provider, *on_time, at=utc(2026, 10, 20))
        close(OCTOBER)
        assert line_figures(invoice_of(lab, OCTOBER))[0][3] == D("766")
        # 5 GPU-h arrive late, in two records; only 2 GPU-h fit. (Hours 10 and 11 are full:
        # ingestion refuses them now, so they are stored past it, to test the rating's own cap.)
        store_unchecked(
            provider,
            record("late-a", c, h(10), h(11), 9000),
            record("late-b", c, h(11), h(12), 9000),
            at=utc(2026, 11, 2),
        )
        close(NOVEMBER)
        assert line_figures(invoice_of(lab, NOVEMBER)) == [(c.pk, "adjustment", OCTOBER, D("2"), D("2.5"), D("5.00"))]
        store_unchecked(provider, record("late-c", c, h(12), h(13), 3600), at=utc(2026, 12, 2))
        close(DECEMBER)
        assert not Invoice.objects.filter(period=DECEMBER).exists()
        assert billed_quantities() == {(c.pk, OCTOBER): D("768")}

    def test_late_usage_sits_beside_the_months_own_lines(self, provider_client, lab_client):
        lab, provider = lab_client.organization, provider_client.organization
        # Metered, 8 GPUs at 2.00, September 30th 20:00 to October 1st 04:00.
        c = contract_create(
            lab=lab, provider=provider, starts_at=utc(2026, 9, 30, 20), hours=8, price="2.0000", mode=METERED
        )
        committed = contract_create(lab=lab, provider=provider, starts_at=utc(2026, 10, 3), hours=2, mode=COMMITTED)
        ingest(provider, record("sep-1", c, utc(2026, 9, 30, 20), utc(2026, 9, 30, 21), 3600), at=utc(2026, 9, 30, 22))
        close(SEPTEMBER)
        # September's usage on October 2nd is late; October's is not.
        ingest(
            provider,
            record("sep-2", c, utc(2026, 9, 30, 21), utc(2026, 9, 30, 22), 7200),
            record("oct-1", c, utc(2026, 10, 1), utc(2026, 10, 1, 1), 1800),
            at=utc(2026, 10, 2),
        )
        close(OCTOBER)
        assert line_figures(invoice_of(lab, SEPTEMBER)) == [(c.pk, "metered", SEPTEMBER, D("1"), D("2"), D("2.00"))]
        # Committed 16 GPU-h x 2.50 = 40.00; October 0.5 GPU-h x 2 = 1.00; September's 2 GPU-h late = 4.00.
        assert line_figures(invoice_of(lab, OCTOBER)) == [
            (committed.pk, "committed", OCTOBER, D("16"), D("2.5"), D("40.00")),
            (c.pk, "adjustment", SEPTEMBER, D("2"), D("2"), D("4.00")),
            (c.pk, "metered", OCTOBER, D("0.5"), D("2"), D("1.00")),
        ]
        assert invoice_of(lab, OCTOBER).total == D("45.00")

    def test_late_usage_of_a_contract_that_ended_long_ago(self, lab_client):
        provider = make_provider()
        c = contract_create(lab=lab_client.organization, provider=provider, starts_at=utc(2026, 8, 20), hours=2,
                            mode=METERED, price="3.0000")  # fmt: skip
        close(AUGUST)
        close(SEPTEMBER)
        assert not Invoice.objects.exists()
        ingest(provider, record("very-late", c, utc(2026, 8, 20), utc(2026, 8, 20, 1), 1200), at=utc(2026, 10, 9))
        close(OCTOBER)
        # 1,200 s = 0.333333... GPU-h x 3.00 = 1.00 exactly when rated from seconds.
        assert line_figures(invoice_of(lab_client.organization, OCTOBER)) == [
            (c.pk, "adjustment", AUGUST, D("0.333333"), D("3"), D("1.00"))
        ]


@pytest.mark.django_db(transaction=True)
class TestConcurrentClose:
    def test_two_closes_of_the_same_month_at_once_issue_one_set_of_documents(self):
        provider = make_provider("Concurrent Provider")
        labs = [make_lab("Concurrent Lab A"), make_lab("Concurrent Lab B")]
        for lab in labs:
            contract_create(lab=lab, provider=provider, starts_at=utc(2026, 9, 10), hours=5)
        contract = contract_create(
            lab=labs[0], provider=provider, starts_at=utc(2026, 9, 12), hours=5, mode=METERED, price="2.0000"
        )
        ingest(provider, record("u", contract, utc(2026, 9, 12), utc(2026, 9, 12, 1), 3600), at=utc(2026, 9, 20))

        barrier = threading.Barrier(2)
        outputs: list[str] = []
        errors: list[Exception] = []

        def run() -> None:
            try:
                out = StringIO()
                barrier.wait(timeout=10)
                call_command("close_billing_period", "--period", "2026-09", stdout=out)
                outputs.append(out.getvalue().strip())
            except Exception as exc:  # surfaced below
                errors.append(exc)
            finally:
                connection.close()

        with time_machine.travel(utc(2026, 10, 1, 0, 1), tick=False):
            threads = [threading.Thread(target=run) for _ in range(2)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=30)

        assert errors == []
        assert sorted(outputs) == [
            "2026-09 was already closed; nothing new was created.",
            "Closed 2026-09: 2 invoice(s), 1 provider statement(s).",
        ]
        assert BillingPeriod.objects.count() == 1
        assert Invoice.objects.count() == 2 and Invoice.objects.filter(period=SEPTEMBER).count() == 2
        assert InvoiceLine.objects.count() == 3
        assert PayoutStatement.objects.count() == 1
        assert LedgerTransaction.objects.count() == 2
        assert DocumentSequence.objects.get(name="invoice").last_value == 2
        assert sorted(Invoice.objects.values_list("number", flat=True)) == ["INV-202609-000001", "INV-202609-000002"]


def test_the_close_stores_the_largest_amounts_allowed(provider_client, other_provider_client, lab_client):
    """Two committed contracts of one lab, each the largest one trade may be at the price
    ceiling, inside one month: the close writes invoice, lines, statements and ledger legs.
    (Once, a listing at 99,999,999.9999 booked twice overflowed a column and jammed every
    later close: such a price is now refused, and so is a trade over MAX_CONTRACT_TOTAL.)"""
    from broker.models import Contract
    from broker.terms import MAX_CONTRACT_TOTAL
    from core.money import max_price_per_gpu_hour
    from tests.billing.factories import contract_create, utc

    ceiling = max_price_per_gpu_hour()
    hours = 30 * 24
    gpus = int(MAX_CONTRACT_TOTAL / (hours * ceiling))  # as many GPUs as one trade may buy
    totals = []
    lab_client.organization.credit_limit = None  # an operator lifted the lab's credit limit
    lab_client.organization.save(update_fields=["credit_limit"])
    for provider in (provider_client.organization, other_provider_client.organization):
        small = contract_create(lab=lab_client.organization, provider=provider, starts_at=utc(2026, 9, 1), hours=hours)
        # The database holds the terms as written; the rating reads GPUs, hours and price.
        Contract.objects.filter(pk=small.pk).update(
            gpu_count=gpus, price_per_gpu_hour=ceiling, total_amount=gpus * hours * ceiling
        )
        totals.append(Decimal(gpus * hours) * ceiling)
    assert max(totals) <= MAX_CONTRACT_TOTAL

    september = date(2026, 9, 1)
    billing_period_close(period=september, now=utc(2026, 10, 1, 0, 30))

    invoice = Invoice.objects.get(lab=lab_client.organization, period=september)
    assert invoice.total == sum(totals) == Decimal("19999998720000.00")
    assert sorted(PayoutStatement.objects.values_list("gross", flat=True)) == sorted(totals)
    legs = LedgerTransaction.objects.get(source_key=f"invoice:{invoice.pk}").entries.values_list("amount", flat=True)
    assert sum(legs) == 0 and max(legs) == invoice.total
