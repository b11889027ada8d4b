"""Provider payouts: one statement per provider and month, gross = fee + net to the cent."""

import re
import threading
from decimal import Decimal

import pytest
from django.db import connection
from django.test import override_settings

from billing.models import CreditNote, PayoutStatement
from billing.services import credit_note_create, payout_mark_paid
from core.models import AuditEvent
from tests.billing.factories import (
    METERED,
    NOVEMBER,
    OCTOBER,
    SEPTEMBER,
    close,
    contract_create,
    ingest,
    invoice_of,
    make_lab,
    make_provider,
    record,
    utc,
)
from tests.conftest import assert_error

pytestmark = pytest.mark.django_db

URL = "/api/v1/payouts"
D = Decimal


def statements() -> list[tuple]:
    return list(
        PayoutStatement.objects.order_by("period", "provider_id").values_list(
            "provider__name", "period", "gross", "fee", "net", "status"
        )
    )


@pytest.fixture
def two_providers(provider_client, other_provider_client, lab_client, spanning_contract):
    """Provider One (default fee): the spanning contract, 263.20 in September and 75.20 in October.
    Provider Two (12.5%): 8 GPUs x 4 h x 2.00 = 64.00 in September."""
    other = other_provider_client.organization
    other.platform_fee_rate = D("0.1250")
    other.save(update_fields=["platform_fee_rate"])
    contract_create(lab=lab_client.organization, provider=other, starts_at=utc(2026, 9, 14, 6), hours=4, price="2.0000")


class TestStatements:
    def test_gross_fee_and_net_per_provider_per_month(self, two_providers):
        close(SEPTEMBER)
        close(OCTOBER)
        assert statements() == [
            # 263.20 x 5% = 13.16.
            ("Provider One", SEPTEMBER, D("263.20"), D("13.16"), D("250.04"), "issued"),
            # 64.00 x 12.5% = 8.00: the organization's own rate overrides the default.
            ("Provider Two", SEPTEMBER, D("64.00"), D("8.00"), D("56.00"), "issued"),
            # 75.20 x 5% = 3.76.
            ("Provider One", OCTOBER, D("75.20"), D("3.76"), D("71.44"), "issued"),
        ]
        assert list(PayoutStatement.objects.order_by("id").values_list("number", flat=True)) == [
            "PAY-202609-000001",
            "PAY-202609-000002",
            "PAY-202610-000003",
        ]
        for statement in PayoutStatement.objects.all():
            assert statement.gross == statement.fee + statement.net

    @override_settings(PLATFORM_FEE_RATE=D("0.0333"))
    def test_the_default_rate_comes_from_settings(self, two_providers):
        close(SEPTEMBER)
        assert statements() == [
            # 263.20 x 3.33% = 8.76456 -> 8.76.
            ("Provider One", SEPTEMBER, D("263.20"), D("8.76"), D("254.44"), "issued"),
            ("Provider Two", SEPTEMBER, D("64.00"), D("8.00"), D("56.00"), "issued"),
        ]

    def test_the_fee_is_the_sum_of_each_lines_rounded_fee(self, provider_client, lab_client):
        provider, lab = provider_client.organization, lab_client.organization
        hour = utc(2026, 10, 5, 1)
        a = contract_create(
            lab=lab, provider=provider, starts_at=utc(2026, 10, 5), hours=2, price="2.5000", mode=METERED
        )
        b = contract_create(
            lab=lab, provider=provider, starts_at=utc(2026, 10, 5), hours=2, price="1.2000", mode=METERED
        )
        c = contract_create(
            lab=lab, provider=provider, starts_at=utc(2026, 10, 5), hours=2, price="3.0000", mode=METERED
        )
        ingest(
            provider,
            record("a", a, utc(2026, 10, 5), hour, 1620),  # 1.125 -> 1.13; fee 0.0565 -> 0.06
            record("b", b, utc(2026, 10, 5), hour, 3435),  # 1.145 -> 1.15; fee 0.0575 -> 0.06
            record("c", c, utc(2026, 10, 5), hour, 12000),  # 10.00; fee 0.50
            at=utc(2026, 10, 9),
        )
        close(SEPTEMBER)
        close(OCTOBER)
        # Per line: 0.06 + 0.06 + 0.50 = 0.62 (5% of the 12.28 total would be 0.614 -> 0.61).
        assert statements() == [("Provider One", OCTOBER, D("12.28"), D("0.62"), D("11.66"), "issued")]

    def test_credit_notes_are_deducted_from_the_next_statement(self, provider_client, lab_client, spanning_contract):
        close(SEPTEMBER)
        credit_note_create(
            invoice=invoice_of(lab_client.organization, SEPTEMBER), reason="Two hours lost.", amount=D("37.60")
        )
        close(OCTOBER)
        close(NOVEMBER)
        assert statements() == [
            ("Provider One", SEPTEMBER, D("263.20"), D("13.16"), D("250.04"), "issued"),
            # 75.20 - 37.60 = 37.60; fee 3.76 - 1.88 (37.60 x 5%) = 1.88.
            ("Provider One", OCTOBER, D("37.60"), D("1.88"), D("35.72"), "issued"),
        ]

    def test_every_statement_adds_up_to_the_cent(self, provider_client, lab_client):
        # 8 GPUs x 1 h x 1.55 = 12.40; fee 0.62; net 11.78, exactly gross - fee (a database check).
        contract_create(
            lab=lab_client.organization, provider=provider_client.organization, starts_at=utc(2026, 9, 3), hours=1,
            price="1.5500",
        )  # fmt: skip
        close(SEPTEMBER)
        assert statements() == [("Provider One", SEPTEMBER, D("12.40"), D("0.62"), D("11.78"), "issued")]


class TestPayoutSent:
    def test_the_service_audits_the_payout_once(self, provider_client, lab_client, spanning_contract):
        close(SEPTEMBER)
        statement = PayoutStatement.objects.get()
        payout_mark_paid(statement=statement, actor_label="treasury job")
        payout_mark_paid(statement=statement, actor_label="treasury job")  # already paid: nothing happens
        # 263.20 - 13.16 = 250.04 sent.
        assert list(
            AuditEvent.objects.filter(action="payout_paid").values_list("actor_label", "target_id", "message")
        ) == [("treasury job", str(statement.pk), "net 250.04")]


class TestApi:
    def test_a_provider_reads_its_own_statements(self, provider_client, other_provider_client, two_providers):
        close(SEPTEMBER)
        close(OCTOBER)
        response = provider_client.get(URL)
        assert response.status_code == 200
        rows = response.json()["results"]
        assert [(s["number"], s["period"], s["gross"], s["fee"], s["net"], s["status"]) for s in rows] == [
            ("PAY-202610-000003", "2026-10", "75.20", "3.76", "71.44", "issued"),
            ("PAY-202609-000001", "2026-09", "263.20", "13.16", "250.04", "issued"),
        ]
        theirs = other_provider_client.get(URL).json()["results"]
        assert [s["number"] for s in theirs] == ["PAY-202609-000002"]
        assert provider_client.get(f"{URL}/{rows[0]['id']}").json()["net"] == "71.44"
        assert_error(provider_client.get(f"{URL}/{theirs[0]['id']}"), 404)

    def test_a_lab_reads_only_its_own_statements(self, lab_client, two_providers):
        # A lab is a seller only of what it resells (broker.resale): none here, so none shown.
        close(SEPTEMBER)
        assert lab_client.get(URL).json()["results"] == []

    def test_a_provider_with_no_sales_has_no_statement(self, provider_client, db):
        close(SEPTEMBER)
        assert provider_client.get(URL).json()["results"] == []
        assert make_provider() and not PayoutStatement.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_a_credit_note_written_during_a_close_is_deducted_exactly_once():
    """A credit note committed while a close is writing its statements must not be assigned
    to a statement without being deducted by it."""
    provider, lab = make_provider("Racing Provider"), make_lab("Racing Lab")
    contract_create(lab=lab, provider=provider, starts_at=utc(2026, 9, 10), hours=4, price="2.0000")  # 64.00
    contract_create(lab=lab, provider=provider, starts_at=utc(2026, 10, 10), hours=4, price="2.0000")  # 64.00
    close(SEPTEMBER)
    september = invoice_of(lab, SEPTEMBER)
    credit_note_create(invoice=september, reason="written before the close", amount=D("5.00"))
    raced = []

    def race(execute, sql, params, many, context):
        if not raced and re.search(r'insert into "?billing_payoutstatement', sql, re.IGNORECASE):
            raced.append(True)

            def credit() -> None:
                try:
                    credit_note_create(invoice=september, reason="written during the close", amount=D("10.00"))
                finally:
                    connection.close()

            thread = threading.Thread(target=credit)
            thread.start()
            thread.join(timeout=20)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(race):
        close(OCTOBER)

    assert raced and CreditNote.objects.filter(invoice=september).count() == 2
    october = PayoutStatement.objects.get(period=OCTOBER)
    taken = sum(october.credit_lines.values_list("amount", flat=True), D(0))
    # Whatever it took, the statement deducted exactly the credits assigned to it.
    assert october.gross == D("64.00") - taken
    close(NOVEMBER)
    deducted = sum(PayoutStatement.objects.values_list("gross", flat=True), D(0))
    assert deducted == D("128.00") - D("15.00")


class TestNegativeNet:
    """Credits larger than a month's sales: the provider owes; the next statement deducts it."""

    def test_a_negative_net_is_carried_into_the_next_statement(self, db):
        from core.errors import InvalidTransition

        provider, lab = make_provider("Owing Provider"), make_lab("Refunded Lab")
        contract_create(lab=lab, provider=provider, starts_at=utc(2026, 9, 10), hours=4, price="2.0000")  # 64.00
        close(SEPTEMBER)
        september = PayoutStatement.objects.get(period=SEPTEMBER)
        assert (september.gross, september.fee, september.net) == (D("64.00"), D("3.20"), D("60.80"))
        payout_mark_paid(statement=september)
        credit_note_create(invoice=invoice_of(lab, SEPTEMBER), reason="outage refund", amount=D("64.00"))
        close(OCTOBER)  # no sales in October: the credit is all there is
        october = PayoutStatement.objects.get(period=OCTOBER)
        assert (october.gross, october.fee, october.carried_in, october.net) == (
            D("-64.00"),
            D("-3.20"),
            D("0.00"),
            D("-60.80"),
        )
        with pytest.raises(InvalidTransition, match="negative net"):
            payout_mark_paid(statement=october)
        contract_create(lab=lab, provider=provider, starts_at=utc(2026, 11, 10), hours=8, price="2.0000")  # 128.00
        close(NOVEMBER)
        november = PayoutStatement.objects.get(period=NOVEMBER)
        assert (november.gross, november.fee, november.carried_in, november.net) == (
            D("128.00"),
            D("6.40"),
            D("-60.80"),
            D("60.80"),
        )
        october.refresh_from_db()
        assert (october.status, october.carried_into) == (PayoutStatement.Status.CARRIED, november)
        with pytest.raises(InvalidTransition, match="carried into"):
            payout_mark_paid(statement=october)
        # Paid out over the three months: 60.80 + 60.80 = what was earned net of the refund.
        payout_mark_paid(statement=november)
        paid = sum(PayoutStatement.objects.filter(status="paid").values_list("net", flat=True), D(0))
        assert paid == D("128.00") - D("6.40")

    def test_the_api_shows_what_was_carried(self, provider_client, lab_client):
        provider, lab = provider_client.organization, lab_client.organization
        contract_create(lab=lab, provider=provider, starts_at=utc(2026, 9, 10), hours=4, price="2.0000")
        close(SEPTEMBER)
        credit_note_create(invoice=invoice_of(lab, SEPTEMBER), reason="refund", amount=D("64.00"))
        close(OCTOBER)
        contract_create(lab=lab, provider=provider, starts_at=utc(2026, 11, 10), hours=8, price="2.0000")
        close(NOVEMBER)
        rows = {row["period"]: row for row in provider_client.get(URL).json()["results"]}
        november = PayoutStatement.objects.get(period=NOVEMBER)
        assert rows["2026-10"]["status"] == "carried"
        assert rows["2026-10"]["carried_into"] == november.number
        assert (rows["2026-11"]["carried_in"], rows["2026-11"]["net"]) == ("-60.80", "60.80")
