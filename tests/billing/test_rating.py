"""Rating with hand-computed figures: what each contract bills in each month.

Every expected figure below is worked out in its comment; amounts are rounded half-up to
cents once per invoice line, and an invoice's total is the sum of its rounded lines.
"""

from decimal import Decimal

import pytest
import time_machine

from billing.models import Invoice, InvoiceLine
from core.errors import InvalidInput
from core.timeutils import parse_period
from tests.billing.conftest import METERED_START, NODE_NAMES
from tests.billing.factories import (
    METERED,
    NOVEMBER,
    OCTOBER,
    SEPTEMBER,
    close,
    contract_create,
    hours_later,
    ingest,
    invoice_of,
    line_figures,
    record,
    store_unchecked,
    utc,
)

pytestmark = pytest.mark.django_db

D = Decimal


class TestCommitted:
    def test_bills_the_gpu_hours_of_its_window_in_each_month_whatever_was_used(
        self, provider_client, lab_client, spanning_contract
    ):
        c = spanning_contract
        # Usage on a committed contract changes nothing: it is take-or-pay.
        ingest(
            provider_client.organization,
            record("c-1", c, utc(2026, 9, 30, 10), utc(2026, 9, 30, 11), 60),
            record("c-2", c, utc(2026, 10, 1, 0), utc(2026, 10, 1, 1), 28800),
        )
        close(SEPTEMBER)
        close(OCTOBER)

        # September: 8 GPUs x 14 h (10:00 to 24:00) = 112 GPU-h x 2.35 = 263.20.
        september = invoice_of(lab_client.organization, SEPTEMBER)
        assert line_figures(september) == [(c.pk, "committed", SEPTEMBER, D("112"), D("2.35"), D("263.20"))]
        assert september.total == D("263.20")
        # October: 8 GPUs x 4 h (00:00 to 04:00) = 32 GPU-h x 2.35 = 75.20.
        october = invoice_of(lab_client.organization, OCTOBER)
        assert line_figures(october) == [(c.pk, "committed", OCTOBER, D("32"), D("2.35"), D("75.20"))]
        assert october.total == D("75.20")
        # The two months together are the block's price.
        assert september.total + october.total == c.total_amount == D("338.40")

    def test_a_contract_inside_one_month_bills_only_that_month(self, provider_client, lab_client):
        c = contract_create(
            lab=lab_client.organization,
            provider=provider_client.organization,
            starts_at=utc(2026, 10, 10, 6),
            hours=30,
            nodes=3,
            price="1.99",
        )
        close(SEPTEMBER)
        close(OCTOBER)
        close(NOVEMBER)
        assert list(Invoice.objects.values_list("period", flat=True)) == [OCTOBER]
        # 24 GPUs x 30 h = 720 GPU-h x 1.99 = 1432.80, exact: prices are whole cents.
        assert line_figures(invoice_of(lab_client.organization, OCTOBER)) == [
            (c.pk, "committed", OCTOBER, D("720"), D("1.99"), D("1432.80"))
        ]

    def test_an_operators_cancellation_ends_the_block_at_the_release(self, provider_client, lab_client):
        from broker.services import contract_cancel

        c = contract_create(
            lab=lab_client.organization,
            provider=provider_client.organization,
            starts_at=utc(2026, 10, 10),
            hours=24,
            price="2.0000",
        )
        with time_machine.travel(utc(2026, 10, 10, 5, 40), tick=False):
            contract_cancel(contract=c, reason="Provider's cooling failed.")  # nodes freed from 06:00
        close(SEPTEMBER)
        close(OCTOBER)
        # 8 GPUs x 6 h (00:00 to 06:00) x 2.00 = 96.00.
        assert line_figures(invoice_of(lab_client.organization, OCTOBER)) == [
            (c.pk, "committed", OCTOBER, D("48"), D("2"), D("96.00"))
        ]


class TestMetered:
    def test_bills_reported_gpu_seconds_never_more_than_the_contract_could_deliver(
        self, provider_client, lab_client, metered_contract
    ):
        c = metered_contract  # 16 GPUs for 48 h: 768 GPU-h at most.
        full_hours = [
            record(f"h{i:02d}", c, hours_later(METERED_START, i), hours_later(METERED_START, i + 1), 57600)
            for i in range(48)
        ]
        # Each node-level record is within its own node's 8 GPUs, but they come on top of full hours.
        extra = [
            record(f"n{i}", c, METERED_START, hours_later(METERED_START, 1), 28800, node=NODE_NAMES[i % 2])
            for i in range(4)
        ]
        ingest(provider_client.organization, *full_hours)
        store_unchecked(provider_client.organization, *extra)  # ingestion refuses them: no GPU is free
        close(SEPTEMBER)
        close(OCTOBER)

        # Reported 768 + 32 GPU-h; billed 768 GPU-h x 2.50 = 1920.00.
        assert line_figures(invoice_of(lab_client.organization, OCTOBER)) == [
            (c.pk, "metered", OCTOBER, D("768"), D("2.5"), D("1920.00"))
        ]
        assert not Invoice.objects.filter(period=SEPTEMBER).exists()

    def test_up_to_the_cap_bills_exactly_what_was_reported(self, provider_client, lab_client, metered_contract):
        c = metered_contract
        # 47 full hours of 16 GPUs and one record of 1,800.5 GPU-s, under the 768 GPU-h cap.
        records = [
            record(f"h{i:02d}", c, hours_later(METERED_START, i), hours_later(METERED_START, i + 1), 57600)
            for i in range(47)
        ]
        records.append(record("last", c, hours_later(METERED_START, 47), hours_later(METERED_START, 48), "1800.5"))
        ingest(provider_client.organization, *records)
        close(SEPTEMBER)
        close(OCTOBER)
        # 47 x 57,600 s + 1,800.5 s = 2,709,000.5 s = 752.5001388... GPU-h x 2.50 = 1881.2503472... -> 1881.25.
        ((_, kind, _, quantity, _, amount),) = line_figures(invoice_of(lab_client.organization, OCTOBER))
        assert (kind, quantity, amount) == ("metered", D("752.500139"), D("1881.25"))

    def test_a_contract_spanning_two_months_is_split_by_hours(self, provider_client, lab_client):
        # 8 GPUs from September 30th 20:00 for 8 hours: 4 in September, 4 in October, at 3.10.
        c = contract_create(
            lab=lab_client.organization,
            provider=provider_client.organization,
            starts_at=utc(2026, 9, 30, 20),
            hours=8,
            price="3.1000",
            mode=METERED,
        )
        ingest(
            provider_client.organization,
            record("s1", c, utc(2026, 9, 30, 20), utc(2026, 9, 30, 22), "20000.25"),
            record("s2", c, utc(2026, 9, 30, 22), utc(2026, 10, 1, 0), "5000.25"),
            # More than September's 32 GPU-h (115,200 s) would be capped in September alone.
            record("o1", c, utc(2026, 10, 1, 0), utc(2026, 10, 1, 2), 18000),
        )
        close(SEPTEMBER)
        close(OCTOBER)

        # September: 25,000.5 s = 6.944583333... GPU-h x 3.10 = 21.528208333... -> 21.53.
        assert line_figures(invoice_of(lab_client.organization, SEPTEMBER)) == [
            (c.pk, "metered", SEPTEMBER, D("6.944583"), D("3.1"), D("21.53"))
        ]
        # October: 18,000 s = 5 GPU-h x 3.10 = 15.50.
        assert line_figures(invoice_of(lab_client.organization, OCTOBER)) == [
            (c.pk, "metered", OCTOBER, D("5"), D("3.1"), D("15.50"))
        ]

    def test_the_cap_applies_to_each_month_separately(self, provider_client, lab_client):
        c = contract_create(
            lab=lab_client.organization,
            provider=provider_client.organization,
            starts_at=utc(2026, 9, 30, 22),
            hours=4,
            price="2.0000",
            mode=METERED,
        )
        # September's 2 hours: 16 GPU-h at most; reported 16 + 8 (the 8 past what ingestion accepts).
        ingest(provider_client.organization, record("a", c, utc(2026, 9, 30, 22), utc(2026, 10, 1), 57600))
        store_unchecked(provider_client.organization, record("b", c, utc(2026, 9, 30, 22), utc(2026, 9, 30, 23), 28800))
        # October's 2 hours: 1 GPU-h reported; September's excess does not spill over.
        ingest(provider_client.organization, record("c", c, utc(2026, 10, 1), utc(2026, 10, 1, 1), 3600))
        close(SEPTEMBER)
        close(OCTOBER)
        assert line_figures(invoice_of(lab_client.organization, SEPTEMBER)) == [
            (c.pk, "metered", SEPTEMBER, D("16"), D("2"), D("32.00"))
        ]
        assert line_figures(invoice_of(lab_client.organization, OCTOBER)) == [
            (c.pk, "metered", OCTOBER, D("1"), D("2"), D("2.00"))
        ]

    def test_per_second_usage_is_rated_exactly_and_rounded_half_up_once_per_line(self, provider_client, lab_client):
        lab, provider = lab_client.organization, provider_client.organization

        def metered(price: str):
            return contract_create(
                lab=lab, provider=provider, starts_at=METERED_START, hours=4, price=price, mode=METERED
            )

        seconds, halves, even_cent = metered("2.5000"), metered("2.5000"), metered("1.2000")
        hour = hours_later(METERED_START, 1)
        ingest(
            provider,
            # Three records of 1,234.567 s: 0.857338... each, which would round to 0.86 x 3 = 2.58;
            # rated once per line: 3,703.701 s = 1.0288058333... GPU-h x 2.50 = 2.5720145833... -> 2.57.
            *[record(f"s{i}", seconds, METERED_START, hour, 1234.567) for i in range(3)],
            # 1,620 s = 0.45 GPU-h x 2.50 = 1.125 exactly: half-up 1.13 (half-even would give 1.12).
            record("half", halves, METERED_START, hour, 1620),
            # 3,435 s = 0.9541666... GPU-h x 1.20 = 1.145 exactly: half-up 1.15 (half-even 1.14).
            record("even", even_cent, METERED_START, hour, 3435),
        )
        close(SEPTEMBER)
        close(OCTOBER)

        invoice = invoice_of(lab, OCTOBER)
        assert line_figures(invoice) == [
            (seconds.pk, "metered", OCTOBER, D("1.028806"), D("2.5"), D("2.57")),
            (halves.pk, "metered", OCTOBER, D("0.45"), D("2.5"), D("1.13")),
            (even_cent.pk, "metered", OCTOBER, D("0.954167"), D("1.2"), D("1.15")),
        ]
        # The total is the sum of rounded lines (4.85), not the rounded sum (4.842014... -> 4.84).
        assert invoice.total == D("4.85")
        # The platform's 5% share is rounded per line too: 0.1285 -> 0.13, 0.0565 -> 0.06, 0.0575 -> 0.06.
        assert list(invoice.lines.order_by("id").values_list("fee_amount", flat=True)) == [
            D("0.13"),
            D("0.06"),
            D("0.06"),
        ]

    def test_an_early_release_caps_what_the_contract_could_deliver(self, provider_client, lab_client):
        from broker.services import contract_terminate

        c = contract_create(
            lab=lab_client.organization,
            provider=provider_client.organization,
            starts_at=utc(2026, 10, 10),
            hours=24,
            price="2.0000",
            mode=METERED,
        )
        # 8 GPUs x 1 h, twice over: more than the first hour holds (the second copy past ingestion).
        twice = [record(f"u{i}", c, utc(2026, 10, 10), utc(2026, 10, 10, 1), 28800) for i in range(2)]
        ingest(provider_client.organization, twice[0], at=utc(2026, 10, 10, 1, 30))
        store_unchecked(provider_client.organization, twice[1], at=utc(2026, 10, 10, 1, 30))
        with time_machine.travel(utc(2026, 10, 10, 1, 30), tick=False):
            contract_terminate(contract=c, lab=lab_client.organization)  # released at 02:00
        close(SEPTEMBER)
        close(OCTOBER)
        # Capacity is 8 GPUs x 2 h = 16 GPU-h; reported 16 GPU-h: 16 x 2.00 = 32.00.
        assert line_figures(invoice_of(lab_client.organization, OCTOBER)) == [
            (c.pk, "metered", OCTOBER, D("16"), D("2"), D("32.00"))
        ]

    def test_usage_without_any_metered_line_bills_nothing(self, provider_client, lab_client, metered_contract):
        close(SEPTEMBER)
        close(OCTOBER)
        assert not Invoice.objects.exists()
        assert not InvoiceLine.objects.exists()


class TestPeriods:
    @pytest.mark.parametrize("value", ["2026-9", "26-09", "2026-13", "2026-00", "2026/09", "", "2026-09-01", "abcd-ef"])
    def test_parse_period_refuses_anything_but_yyyy_mm(self, value):
        with pytest.raises(InvalidInput):
            parse_period(value)

    def test_parse_period(self):
        assert parse_period("2026-09") == SEPTEMBER
