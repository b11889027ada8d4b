"""Invoices: one per lab and month, numbered, immutable once issued, readable by their lab;
and the preview of any month's invoice, which saves nothing."""

from datetime import date
from decimal import Decimal

import pytest
import time_machine

from billing.models import CreditNote, Invoice
from billing.services import credit_note_create, invoice_record_payment
from core.errors import InvalidInput
from tests.billing.conftest import METERED_START, NODE_NAMES
from tests.billing.factories import (
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
    record,
    utc,
)
from tests.conftest import assert_error

pytestmark = pytest.mark.django_db

URL = "/api/v1/invoices"
D = Decimal


@pytest.fixture
def two_labs_billed(provider_client, lab_client, other_lab_client, spanning_contract, metered_contract):
    """Lab One: the spanning committed contract and 10 GPU-h of the metered one; Lab Two: 4 hours
    of 8 GPUs at 2.00 in September. September and October are closed."""
    other = contract_create(
        lab=other_lab_client.organization,
        provider=provider_client.organization,
        starts_at=utc(2026, 9, 10, 8),
        hours=4,
        price="2.0000",
    )
    ingest(
        provider_client.organization,
        record("m1", metered_contract, METERED_START, hours_later(METERED_START, 1), 36000),
    )
    close(SEPTEMBER)
    close(OCTOBER)
    return {"spanning": spanning_contract, "metered": metered_contract, "other": other}


class TestIssuing:
    def test_one_invoice_per_lab_and_month_numbered_in_sequence(self, lab_client, other_lab_client, two_labs_billed):
        lab, other_lab = lab_client.organization, other_lab_client.organization
        rows = list(Invoice.objects.order_by("id").values_list("lab_id", "period", "number", "status"))
        first, second = sorted([lab.pk, other_lab.pk])
        # September bills both labs, numbered by lab; October only Lab One.
        assert rows == [
            (first, SEPTEMBER, "INV-202609-000001", "issued"),
            (second, SEPTEMBER, "INV-202609-000002", "issued"),
            (lab.pk, OCTOBER, "INV-202610-000003", "issued"),
        ]
        assert all(invoice.issued_at is not None for invoice in Invoice.objects.all())

    def test_one_line_per_contract_with_quantity_unit_price_and_amount(
        self, lab_client, other_lab_client, two_labs_billed
    ):
        spanning, metered, other = two_labs_billed["spanning"], two_labs_billed["metered"], two_labs_billed["other"]
        # 8 GPUs x 14 h x 2.35 = 263.20.
        assert line_figures(invoice_of(lab_client.organization, SEPTEMBER)) == [
            (spanning.pk, "committed", SEPTEMBER, D("112"), D("2.35"), D("263.20"))
        ]
        # 8 GPUs x 4 h x 2.35 = 75.20; 36,000 s = 10 GPU-h x 2.50 = 25.00.
        october = invoice_of(lab_client.organization, OCTOBER)
        assert line_figures(october) == [
            (spanning.pk, "committed", OCTOBER, D("32"), D("2.35"), D("75.20")),
            (metered.pk, "metered", OCTOBER, D("10"), D("2.5"), D("25.00")),
        ]
        assert october.total == D("100.20")
        # 8 GPUs x 4 h x 2.00 = 64.00.
        assert line_figures(invoice_of(other_lab_client.organization, SEPTEMBER)) == [
            (other.pk, "committed", SEPTEMBER, D("32"), D("2"), D("64.00"))
        ]

    def test_an_invoice_that_rates_to_nothing_is_not_left_awaiting_payment(self, provider_client, lab_client):
        contract = contract_create(
            lab=lab_client.organization,
            provider=provider_client.organization,
            starts_at=METERED_START,
            hours=1,
            mode=METERED,
        )
        # 1 GPU-second x 2.50 / 3,600 = 0.000694... -> 0.00.
        ingest(provider_client.organization, record("tick", contract, METERED_START, hours_later(METERED_START, 1), 1))
        close(SEPTEMBER)
        close(OCTOBER)
        invoice = invoice_of(lab_client.organization, OCTOBER)
        assert line_figures(invoice) == [(contract.pk, "metered", OCTOBER, D("0.000278"), D("2.5"), D("0.00"))]
        assert invoice.total == D("0.00")
        # Nothing can be paid (payments are positive) or credited on it: it must not stay "issued".
        assert invoice.status == "paid"


class TestReading:
    def test_a_lab_reads_its_invoices_newest_first(self, lab_client, two_labs_billed):
        response = lab_client.get(URL)
        assert response.status_code == 200
        body = response.json()
        assert [(i["number"], i["period"], i["status"], i["total"], i["amount_due"]) for i in body["results"]] == [
            ("INV-202610-000003", "2026-10", "issued", "100.20", "100.20"),
            ("INV-202609-000001", "2026-09", "issued", "263.20", "263.20"),
        ]
        october = body["results"][0]
        assert october["lines"] == [
            {
                "contract": two_labs_billed["spanning"].pk,
                "kind": "committed",
                "service_period": "2026-10-01",
                "description": october["lines"][0]["description"],
                "quantity": "32.000000",
                "unit_price": "2.3500",
                "amount": "75.20",
            },
            {
                "contract": two_labs_billed["metered"].pk,
                "kind": "metered",
                "service_period": "2026-10-01",
                "description": october["lines"][1]["description"],
                "quantity": "10.000000",
                "unit_price": "2.5000",
                "amount": "25.00",
            },
        ]
        assert october["credit_notes"] == [] and october["payments"] == []

    def test_a_lab_reads_one_invoice_and_not_another_labs(self, lab_client, other_lab_client, two_labs_billed):
        mine = invoice_of(lab_client.organization, OCTOBER)
        theirs = invoice_of(other_lab_client.organization, SEPTEMBER)
        response = lab_client.get(f"{URL}/{mine.pk}")
        assert response.status_code == 200
        assert response.json()["number"] == mine.number
        assert_error(lab_client.get(f"{URL}/{theirs.pk}"), 404)
        assert [i["id"] for i in other_lab_client.get(URL).json()["results"]] == [theirs.pk]
        assert_error(lab_client.get(f"{URL}/999999"), 404)

    def test_the_list_costs_the_same_queries_for_one_or_many_invoices(
        self, provider_client, lab_client, django_assert_max_num_queries
    ):
        lab, provider = lab_client.organization, provider_client.organization

        def bill(month: int) -> None:
            contract_create(lab=lab, provider=provider, starts_at=utc(2025, month, 3), hours=2)
            close(date(2025, month, 1))
            invoice = invoice_of(lab, date(2025, month, 1))
            credit_note_create(invoice=invoice, reason="goodwill", amount=D("1.00"))
            invoice_record_payment(invoice=invoice, amount=D("2.00"))

        bill(1)
        with django_assert_max_num_queries(10) as one:
            assert len(lab_client.get(URL).json()["results"]) == 1
        for month in range(2, 8):
            bill(month)
        with django_assert_max_num_queries(len(one.captured_queries)):
            assert len(lab_client.get(URL).json()["results"]) == 7

    def test_providers_do_not_read_invoices(self, provider_client, two_labs_billed):
        assert_error(provider_client.get(URL), 403)
        assert_error(provider_client.get(f"{URL}/preview?period=2026-10"), 403)


class TestImmutability:
    def test_a_credit_note_reduces_what_is_due_and_leaves_the_invoice_as_issued(self, lab_client, two_labs_billed):
        invoice = invoice_of(lab_client.organization, OCTOBER)
        before = line_figures(invoice)
        credit_note_create(invoice=invoice, reason="Node gpu-m02 was down for an hour.", amount=D("20.20"))

        invoice.refresh_from_db()
        assert invoice.total == D("100.20")
        assert invoice.status == "issued"
        assert line_figures(invoice) == before
        body = lab_client.get(f"{URL}/{invoice.pk}").json()
        assert (body["total"], body["amount_due"]) == ("100.20", "80.00")
        assert [(n["number"], n["amount"]) for n in body["credit_notes"]] == [("CN-202610-000001", "20.20")]

    def test_usage_arriving_after_the_close_does_not_change_the_issued_invoice(
        self, provider_client, lab_client, two_labs_billed
    ):
        invoice = invoice_of(lab_client.organization, OCTOBER)
        before = (invoice.total, line_figures(invoice))
        metered = two_labs_billed["metered"]
        ingest(
            provider_client.organization,
            record("late", metered, hours_later(METERED_START, 5), hours_later(METERED_START, 6), 3600),
            at=utc(2026, 11, 3),
        )
        close(SEPTEMBER)  # a second close of a closed month changes nothing either
        invoice.refresh_from_db()
        assert (invoice.total, line_figures(invoice)) == before


class TestPreview:
    def preview(self, client, period: str) -> dict:
        response = client.get(f"{URL}/preview", {"period": period})
        assert response.status_code == 200, response.content
        return response.json()

    @pytest.fixture
    def usage_so_far(self, provider_client, spanning_contract, metered_contract):
        ingest(
            provider_client.organization,
            record("p1", metered_contract, METERED_START, hours_later(METERED_START, 1), "1234.567"),
            record("p2", metered_contract, METERED_START, hours_later(METERED_START, 1), 1800, node=NODE_NAMES[0]),
        )

    def test_preview_of_a_past_month_is_the_invoice_its_close_will_issue_and_saves_nothing(
        self, lab_client, spanning_contract, usage_so_far
    ):
        with time_machine.travel(utc(2026, 10, 20, 12), tick=False):
            before = billing_snapshot()
            body = self.preview(lab_client, "2026-09")
            assert billing_snapshot() == before
        assert body["period"] == "2026-09"
        assert body["total"] == "263.20"
        assert [(line["kind"], line["quantity"], line["unit_price"], line["amount"]) for line in body["lines"]] == [
            ("committed", "112.000000", "2.3500", "263.20")
        ]
        close(SEPTEMBER)
        assert line_figures(invoice_of(lab_client.organization, SEPTEMBER)) == [
            (spanning_contract.pk, "committed", SEPTEMBER, D("112"), D("2.35"), D("263.20"))
        ]

    def test_preview_of_the_current_month_bills_usage_so_far(
        self, lab_client, spanning_contract, metered_contract, usage_so_far
    ):
        close(SEPTEMBER)
        with time_machine.travel(utc(2026, 10, 20, 12), tick=False):
            before = billing_snapshot()
            body = self.preview(lab_client, "2026-10")
            assert billing_snapshot() == before
        # 75.20 committed; 3,034.567 s = 0.842935277... GPU-h x 2.50 = 2.1073381944... -> 2.11.
        assert body["total"] == "77.31"
        assert [(line["contract"], line["kind"], line["quantity"], line["amount"]) for line in body["lines"]] == [
            (spanning_contract.pk, "committed", "32.000000", "75.20"),
            (metered_contract.pk, "metered", "0.842935", "2.11"),
        ]
        close(OCTOBER)
        invoice = invoice_of(lab_client.organization, OCTOBER)
        assert str(invoice.total) == body["total"]
        assert [str(amount) for *_, amount in line_figures(invoice)] == [line["amount"] for line in body["lines"]]

    def test_preview_of_a_future_month_bills_its_committed_hours_only(
        self, provider_client, lab_client, spanning_contract, usage_so_far
    ):
        november = contract_create(
            lab=lab_client.organization,
            provider=provider_client.organization,
            starts_at=utc(2026, 11, 2, 9),
            hours=10,
            price="2.0000",
        )
        close(SEPTEMBER)
        with time_machine.travel(utc(2026, 10, 20, 12), tick=False):
            body = self.preview(lab_client, "2026-11")
            empty = self.preview(lab_client, "2027-01")
        # 8 GPUs x 10 h x 2.00 = 160.00; October's usage belongs to October's invoice.
        assert [(line["contract"], line["kind"], line["amount"]) for line in body["lines"]] == [
            (november.pk, "committed", "160.00")
        ]
        assert body["total"] == "160.00"
        assert empty == {"period": "2027-01", "total": "0.00", "lines": []}

    def test_preview_of_a_month_whose_predecessor_is_not_closed_holds_no_late_usage(self, provider_client, lab_client):
        # Metered, 8 GPUs at 2.00 from September 30th 22:00 to October 1st 02:00.
        contract = contract_create(
            lab=lab_client.organization,
            provider=provider_client.organization,
            starts_at=utc(2026, 9, 30, 22),
            hours=4,
            price="2.0000",
            mode=METERED,
        )
        ingest(
            provider_client.organization,
            record("sep", contract, utc(2026, 9, 30, 22), utc(2026, 10, 1), 7200),
            record("oct", contract, utc(2026, 10, 1), utc(2026, 10, 1, 1), 3600),
            at=utc(2026, 10, 1, 1, 30),
        )
        # On October 1st, before September is closed: September's usage is September's.
        with time_machine.travel(utc(2026, 10, 1, 1, 30), tick=False):
            body = self.preview(lab_client, "2026-10")
        assert [(line["kind"], line["service_period"], line["amount"]) for line in body["lines"]] == [
            ("metered", "2026-10-01", "2.00")
        ]
        close(SEPTEMBER)
        assert line_figures(invoice_of(lab_client.organization, SEPTEMBER)) == [
            (contract.pk, "metered", SEPTEMBER, D("2"), D("2"), D("4.00"))
        ]

    def test_late_usage_shows_on_the_preview_of_the_month_whose_close_bills_it_only(self, provider_client, lab_client):
        # Metered, 8 GPUs at 2.00 from September 30th 22:00 to October 1st 02:00.
        contract = contract_create(
            lab=lab_client.organization,
            provider=provider_client.organization,
            starts_at=utc(2026, 9, 30, 22),
            hours=4,
            price="2.0000",
            mode=METERED,
        )
        close(SEPTEMBER)
        # September's usage arrives after September was closed: October's close bills it.
        ingest(
            provider_client.organization,
            record("sep-late", contract, utc(2026, 9, 30, 22), utc(2026, 9, 30, 23), 3600),
            at=utc(2026, 10, 5),
        )
        with time_machine.travel(utc(2026, 10, 20, 12), tick=False):
            october = self.preview(lab_client, "2026-10")
            november = self.preview(lab_client, "2026-11")
        assert [(line["kind"], line["service_period"], line["amount"]) for line in october["lines"]] == [
            ("adjustment", "2026-09-01", "2.00")
        ]
        assert (november["total"], november["lines"]) == ("0.00", [])
        close(OCTOBER)
        assert line_figures(invoice_of(lab_client.organization, OCTOBER)) == [
            (contract.pk, "adjustment", SEPTEMBER, D("1"), D("2"), D("2.00"))
        ]

    @pytest.fixture
    def november_closed(self, provider_client, lab_client):
        """Metered, 1 node x 8 GPUs at 1.70 from November 2nd for 192 hours: 1,536 GPU-h at most.
        1,252.16 GPU-h (4,507,776 s) reported on time; November closed on December 1st."""
        contract = contract_create(
            lab=lab_client.organization,
            provider=provider_client.organization,
            starts_at=utc(2026, 11, 2),
            hours=192,
            price="1.7000",
            mode=METERED,
        )
        ingest(
            provider_client.organization,
            record("nov", contract, utc(2026, 11, 2), utc(2026, 11, 10), 4507776),
            at=utc(2026, 11, 20),
        )
        close(NOVEMBER)
        # 1,252.16 GPU-h x 1.70 = 2,128.672 -> 2,128.67.
        assert line_figures(invoice_of(lab_client.organization, NOVEMBER)) == [
            (contract.pk, "metered", NOVEMBER, D("1252.16"), D("1.7"), D("2128.67"))
        ]
        return contract

    def preview_figures(self, client, period: str) -> tuple[str, list[tuple]]:
        body = self.preview(client, period)
        return body["total"], [
            (line["contract"], line["kind"], line["service_period"], line["quantity"], line["unit_price"],
             line["amount"])
            for line in body["lines"]
        ]  # fmt: skip

    def test_preview_of_a_closed_month_is_the_invoice_it_issued(self, lab_client, november_closed):
        # Nothing arrived after the close: the invoice, and nothing else (not the 1,536 - 1,252.16
        # = 283.84 GPU-h still unbilled, x 1.70 = 482.53, as if the usage were billed twice).
        with time_machine.travel(utc(2026, 12, 5), tick=False):
            before = billing_snapshot()
            figures = self.preview_figures(lab_client, "2026-11")
            assert billing_snapshot() == before
        assert figures == (
            "2128.67",
            [(november_closed.pk, "metered", "2026-11-01", "1252.160000", "1.7000", "2128.67")],
        )

    def test_preview_of_a_closed_month_adds_only_its_late_usage_not_billed_yet(
        self, provider_client, lab_client, november_closed
    ):
        contract = november_closed
        # November's usage arriving on December 5th: December's close bills it as an adjustment.
        ingest(
            provider_client.organization,
            record("nov-late", contract, utc(2026, 11, 9), utc(2026, 11, 9, 1), "5000"),
            at=utc(2026, 12, 5),
        )
        # The node ran 6.52 of its 8 GPUs all along; 5,000 s in one hour is 1.39 GPUs more, which fits.
        # 5,000 s = 1.3888... GPU-h x 1.70 = 2.3611... -> 2.36; 2,128.67 + 2.36 = 2,131.03.
        late = (contract.pk, "adjustment", "2026-11-01", "1.388889", "1.7000", "2.36")
        with time_machine.travel(utc(2026, 12, 6), tick=False):
            november = self.preview_figures(lab_client, "2026-11")
            december = self.preview_figures(lab_client, "2026-12")
        assert november == (
            "2131.03",
            [(contract.pk, "metered", "2026-11-01", "1252.160000", "1.7000", "2128.67"), late],
        )
        assert december == ("2.36", [late])

        close(DECEMBER)
        assert line_figures(invoice_of(lab_client.organization, DECEMBER)) == [
            (contract.pk, "adjustment", NOVEMBER, D("1.388889"), D("1.7"), D("2.36"))
        ]
        # Billed now, on December's invoice: November's preview is its invoice again.
        with time_machine.travel(utc(2027, 1, 2), tick=False):
            assert self.preview_figures(lab_client, "2026-11") == (
                "2128.67",
                [(contract.pk, "metered", "2026-11-01", "1252.160000", "1.7000", "2128.67")],
            )

    @pytest.mark.parametrize(
        "period", ["2026-13", "2026-00", "2026-1", "26-01", "2026-10-01", "", "now", "0000-01", "2026-١٠", "9999-12"]
    )
    def test_a_bad_period_is_a_400(self, lab_client, period):
        with time_machine.travel(utc(2026, 10, 20, 12), tick=False):
            assert_error(lab_client.get(f"{URL}/preview", {"period": period}), 400)

    def test_the_period_is_required(self, lab_client):
        assert_error(lab_client.get(f"{URL}/preview"), 400)


def test_no_credit_note_rows_are_left_by_a_refused_credit(lab_client, two_labs_billed):
    invoice = invoice_of(lab_client.organization, OCTOBER)
    with pytest.raises(InvalidInput):
        credit_note_create(invoice=invoice, reason="too much", amount=D("100.21"))
    assert not CreditNote.objects.exists()
