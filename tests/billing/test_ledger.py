"""The double-entry ledger: one balanced transaction per invoice, payment, credit note and payout;
balances are sums of entries; PostgreSQL refuses unbalanced and edited entries."""

from collections import defaultdict
from decimal import Decimal

import pytest
import time_machine
from django.db import DatabaseError, IntegrityError, transaction
from django.db.models import Sum

from billing.ledger import UnbalancedPosting, account_balance, ledger_post
from billing.models import Account, CreditNoteLine, Invoice, LedgerEntry, LedgerTransaction, PayoutStatement
from billing.services import (
    credit_note_create,
    invoice_record_payment,
    invoice_void,
    payout_mark_paid,
)
from core.db import bulk_insert
from core.errors import InvalidInput, InvalidTransition
from tests.billing.factories import (
    METERED,
    SEPTEMBER,
    close,
    contract_create,
    ingest,
    invoice_of,
    make_provider,
    record,
    utc,
)

pytestmark = pytest.mark.django_db

D = Decimal
LAB = Account.Kind.LAB_RECEIVABLE
PROVIDER = Account.Kind.PROVIDER_PAYABLE
REVENUE = Account.Kind.PLATFORM_REVENUE
CASH = Account.Kind.CASH


def legs(transaction: LedgerTransaction) -> dict:
    return {
        (kind, org): amount
        for kind, org, amount in transaction.entries.values_list("account__kind", "account__organization_id", "amount")
    }


def assert_every_transaction_balances() -> None:
    totals = dict(LedgerEntry.objects.order_by().values_list("transaction_id").annotate(Sum("amount")))
    assert {txn: total for txn, total in totals.items() if total != 0} == {}
    assert set(totals) == set(LedgerTransaction.objects.values_list("id", flat=True))


@pytest.fixture
def september(provider_client, lab_client, other_lab_client, spanning_contract):
    """Lab One owes 263.20 (Provider One, 5%); Lab Two owes 64.00 (Provider Two at 10%)."""
    other_provider = make_provider("Provider Ten Percent", fee_rate="0.1000")
    contract_create(
        lab=other_lab_client.organization, provider=other_provider, starts_at=utc(2026, 9, 14, 6), hours=4,
        price="2.0000",
    )  # fmt: skip
    close(SEPTEMBER)
    return {
        "lab": lab_client.organization,
        "other_lab": other_lab_client.organization,
        "provider": provider_client.organization,
        "other_provider": other_provider,
        "invoice": invoice_of(lab_client.organization, SEPTEMBER),
        "other_invoice": invoice_of(other_lab_client.organization, SEPTEMBER),
    }


class TestPostings:
    def test_each_issued_invoice_posts_one_balanced_transaction(self, september):
        s = september
        invoices = LedgerTransaction.objects.filter(kind="invoice").order_by("id")
        assert [t.source_key for t in invoices] == [f"invoice:{s['invoice'].pk}", f"invoice:{s['other_invoice'].pk}"]
        assert legs(invoices[0]) == {
            (LAB, s["lab"].pk): D("263.20"),
            (PROVIDER, s["provider"].pk): D("-250.04"),
            (REVENUE, None): D("-13.16"),
        }
        assert legs(invoices[1]) == {
            (LAB, s["other_lab"].pk): D("64.00"),
            (PROVIDER, s["other_provider"].pk): D("-57.60"),
            (REVENUE, None): D("-6.40"),
        }
        assert_every_transaction_balances()

    def test_payments_post_and_the_invoice_is_paid_once_nothing_is_due(self, september):
        invoice = september["invoice"]
        with time_machine.travel(utc(2026, 10, 10), tick=False):
            first = invoice_record_payment(invoice=invoice, amount=D("200.00"), reference="wire 1")
        invoice.refresh_from_db()
        assert invoice.status == "issued" and invoice.paid_at is None
        assert legs(LedgerTransaction.objects.get(source_key=f"payment:{first.pk}")) == {
            (CASH, None): D("200.00"),
            (LAB, september["lab"].pk): D("-200.00"),
        }
        with pytest.raises(InvalidInput):
            invoice_record_payment(invoice=invoice, amount=D("63.21"))
        with pytest.raises(InvalidInput):
            invoice_record_payment(invoice=invoice, amount=D("0.001"))
        with pytest.raises(InvalidInput):
            invoice_record_payment(invoice=invoice, amount=D("-1"))
        with time_machine.travel(utc(2026, 10, 12), tick=False):
            invoice_record_payment(invoice=invoice, amount=D("63.20"), reference="wire 2")
        invoice.refresh_from_db()
        assert invoice.status == "paid" and invoice.paid_at == utc(2026, 10, 12)
        assert account_balance(kind=LAB, organization_id=september["lab"].pk) == 0
        with pytest.raises(InvalidTransition):
            invoice_record_payment(invoice=invoice, amount=D("1.00"))
        assert LedgerTransaction.objects.filter(kind="payment").count() == 2
        assert_every_transaction_balances()

    def test_a_credit_note_posts_the_reversal_of_its_share_of_each_party(self, september):
        note = credit_note_create(invoice=september["invoice"], reason="SLA credit", amount=D("26.32"))
        # 26.32 of the line: the fee share is 26.32 x 5% = 1.316 -> 1.32.
        assert legs(LedgerTransaction.objects.get(source_key=f"credit_note:{note.pk}")) == {
            (LAB, september["lab"].pk): D("-26.32"),
            (PROVIDER, september["provider"].pk): D("25.00"),
            (REVENUE, None): D("1.32"),
        }
        assert account_balance(kind=LAB, organization_id=september["lab"].pk) == D("236.88")
        assert_every_transaction_balances()

    def test_voiding_credits_everything_due(self, september):
        note = invoice_void(invoice=september["other_invoice"], reason="Booked by mistake.")
        invoice = Invoice.objects.get(pk=september["other_invoice"].pk)
        assert (invoice.status, note.amount) == ("void", D("64.00"))
        assert invoice.voided_at is not None
        assert account_balance(kind=LAB, organization_id=september["other_lab"].pk) == 0
        assert account_balance(kind=PROVIDER, organization_id=september["other_provider"].pk) == 0
        with pytest.raises(InvalidTransition):
            invoice_void(invoice=invoice, reason="again")
        with pytest.raises(InvalidTransition):
            invoice_record_payment(invoice=invoice, amount=D("1.00"))

    def test_a_partly_paid_invoice_cannot_be_voided(self, september):
        invoice_record_payment(invoice=september["invoice"], amount=D("1.00"))
        with pytest.raises(InvalidTransition):
            invoice_void(invoice=september["invoice"], reason="no")

    def test_a_payout_posts_once(self, september):
        statement = PayoutStatement.objects.get(provider=september["provider"])
        with time_machine.travel(utc(2026, 10, 15), tick=False):
            paid = payout_mark_paid(statement=statement)
            again = payout_mark_paid(statement=statement)
        assert (paid.status, paid.paid_at) == ("paid", utc(2026, 10, 15))
        assert again.status == "paid"
        (payout,) = LedgerTransaction.objects.filter(kind="payout")
        assert legs(payout) == {(PROVIDER, september["provider"].pk): D("250.04"), (CASH, None): D("-250.04")}
        assert account_balance(kind=PROVIDER, organization_id=september["provider"].pk) == 0

    def test_balances_are_sums_of_entries(self, september):
        s = september
        invoice_record_payment(invoice=s["invoice"], amount=D("100.00"))
        credit_note_create(invoice=s["invoice"], reason="SLA credit", amount=D("20.00"))
        invoice_record_payment(invoice=s["other_invoice"], amount=D("64.00"))
        payout_mark_paid(statement=PayoutStatement.objects.get(provider=s["other_provider"]))

        sums: dict = defaultdict(lambda: D(0))
        for kind, org, amount in LedgerEntry.objects.values_list("account__kind", "account__organization_id", "amount"):
            sums[(kind, org)] += amount
        expected = {
            (LAB, s["lab"].pk): D("143.20"),  # 263.20 - 100.00 - 20.00
            (LAB, s["other_lab"].pk): D("0"),
            (PROVIDER, s["provider"].pk): D("-231.04"),  # -250.04 + 19.00 (the credit's net)
            (PROVIDER, s["other_provider"].pk): D("0"),  # -57.60 + 57.60 paid out
            (REVENUE, None): D("-18.56"),  # -13.16 - 6.40 + 1.00
            (CASH, None): D("106.40"),  # 100.00 + 64.00 - 57.60
        }
        assert dict(sums) == expected
        for (kind, org), total in expected.items():
            assert account_balance(kind=kind, organization_id=org) == total
        assert sum(expected.values()) == 0
        assert_every_transaction_balances()

    def test_a_posting_whose_legs_do_not_balance_is_refused_before_writing(self, db):
        with pytest.raises(UnbalancedPosting):
            ledger_post([("payment", "test:1", "bad", {(CASH, None): D("1.00"), (REVENUE, None): D("-0.99")})])
        assert not LedgerTransaction.objects.exists()


class TestCreditNoteEdges:
    """Two corrections that leave an invoice or the ledger in a wrong state (see the report)."""

    @pytest.fixture
    def one_dollar_invoice(self, provider_client, lab_client):
        # 1,440 GPU-s = 0.4 GPU-h x 2.50 = 1.00; the platform's 5% is 0.05.
        contract = contract_create(
            lab=lab_client.organization, provider=provider_client.organization, starts_at=utc(2026, 9, 3), hours=1,
            mode=METERED,
        )  # fmt: skip
        ingest(
            provider_client.organization,
            record("u", contract, utc(2026, 9, 3), utc(2026, 9, 3, 1), 1440),
            at=utc(2026, 9, 3, 2),
        )
        close(SEPTEMBER)
        return invoice_of(lab_client.organization, SEPTEMBER)

    def test_crediting_the_rest_of_a_partly_paid_invoice_settles_it(self, september):
        invoice = september["invoice"]
        invoice_record_payment(invoice=invoice, amount=D("63.20"))
        credit_note_create(invoice=invoice, reason="Goodwill for the rest.")  # 200.00, all that is due
        invoice.refresh_from_db()
        # Nothing is due and nothing more can be paid or credited: it must not stay "issued".
        assert account_balance(kind=LAB, organization_id=september["lab"].pk) == 0
        assert invoice.status == "paid"

    def test_partial_credits_never_reverse_more_fee_than_they_credit(self, one_dollar_invoice):
        # Fee shares: 0.09 x 5% = 0.0045 -> 0.00 (four times), 0.63 x 5% = 0.0315 -> 0.03;
        # then the last cent of the line carries the 0.02 of fee still unreversed.
        for amount in ["0.09", "0.09", "0.09", "0.09", "0.63", "0.01"]:
            credit_note_create(invoice=one_dollar_invoice, reason="partial", amount=D(amount))
        one_dollar_invoice.refresh_from_db()
        assert one_dollar_invoice.status == "void"
        for line in CreditNoteLine.objects.all():
            assert 0 <= line.fee_amount <= line.amount
        parts = list(CreditNoteLine.objects.values_list("amount", "fee_amount"))
        assert (sum(a for a, _ in parts), sum(f for _, f in parts)) == (D("1.00"), D("0.05"))
        assert_every_transaction_balances()


class TestDatabaseGuards:
    def cash(self) -> Account:
        return Account.objects.get_or_create(kind=CASH, organization=None)[0]

    def revenue(self) -> Account:
        return Account.objects.get_or_create(kind=REVENUE, organization=None)[0]

    def test_an_unbalanced_transaction_is_refused(self, db):
        cash, revenue = self.cash(), self.revenue()
        with pytest.raises(IntegrityError, match="unbalanced"), transaction.atomic():
            txn = LedgerTransaction.objects.create(kind="payment", source_key="raw:1", memo="raw")
            LedgerEntry.objects.bulk_create(
                [
                    LedgerEntry(transaction=txn, account=cash, amount=D("10.00")),
                    LedgerEntry(transaction=txn, account=revenue, amount=D("-9.99")),
                ]
            )
        assert not LedgerTransaction.objects.filter(source_key="raw:1").exists()

    def test_a_balanced_transaction_passes_the_same_check(self, db):
        cash, revenue = self.cash(), self.revenue()
        txn = LedgerTransaction.objects.create(kind="payment", source_key="raw:2", memo="raw")
        LedgerEntry.objects.bulk_create(
            [
                LedgerEntry(transaction=txn, account=cash, amount=D("10.00")),
                LedgerEntry(transaction=txn, account=revenue, amount=D("-10.00")),
            ]
        )
        assert LedgerEntry.objects.filter(transaction__source_key="raw:2").count() == 2

    def test_the_legs_of_a_transaction_are_written_in_one_statement(self, db):
        """Each INSERT must leave every transaction it touches balanced: a leg on its own is
        refused, even when the next statement would have balanced it."""
        cash, revenue = self.cash(), self.revenue()
        with pytest.raises(IntegrityError, match="unbalanced"), transaction.atomic():
            txn = LedgerTransaction.objects.create(kind="payment", source_key="raw:3", memo="raw")
            LedgerEntry.objects.create(transaction=txn, account=cash, amount=D("10.00"))
            LedgerEntry.objects.create(transaction=txn, account=revenue, amount=D("-10.00"))
        assert not LedgerTransaction.objects.filter(source_key="raw:3").exists()

    def test_a_leg_added_to_a_balanced_transaction_later_is_refused(self, db):
        cash, revenue = self.cash(), self.revenue()
        txn = LedgerTransaction.objects.create(kind="payment", source_key="raw:4", memo="raw")
        LedgerEntry.objects.bulk_create(
            [
                LedgerEntry(transaction=txn, account=cash, amount=D("5.00")),
                LedgerEntry(transaction=txn, account=revenue, amount=D("-5.00")),
            ]
        )
        with pytest.raises(IntegrityError, match="unbalanced"), transaction.atomic():
            LedgerEntry.objects.create(transaction=txn, account=cash, amount=D("0.01"))
        assert LedgerEntry.objects.filter(transaction=txn).aggregate(total=Sum("amount"))["total"] == 0

    def test_entries_are_append_only(self, september):
        entry = LedgerEntry.objects.filter(transaction__kind="invoice").first()
        with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
            LedgerEntry.objects.filter(pk=entry.pk).update(amount=entry.amount + 1)
        with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
            LedgerEntry.objects.filter(pk=entry.pk).delete()
        with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
            entry.amount = D("0.01")
            entry.save()
        entry.refresh_from_db()
        assert entry.amount != D("0.01")


@pytest.mark.django_db(transaction=True)
def test_copy_of_an_unbalanced_transaction_is_refused():
    """The ledger writes its legs with COPY; the check covers COPY too."""
    cash = Account.objects.create(kind=CASH, organization=None)
    with pytest.raises(IntegrityError, match="unbalanced"), transaction.atomic():
        txn = LedgerTransaction.objects.create(kind="payment", source_key="raw:copy", memo="raw")
        bulk_insert(LedgerEntry, ("transaction_id", "account_id", "amount"), [(txn.pk, cash.pk, D("10.00"))])
    assert not LedgerTransaction.objects.exists()
    assert not LedgerEntry.objects.exists()
