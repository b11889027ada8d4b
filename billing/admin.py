from django import forms
from django.contrib import admin, messages
from django.db.models import Sum, Value
from django.db.models.functions import Coalesce

from billing.models import (
    Account,
    BillingPeriod,
    CreditNote,
    DocumentSequence,
    Invoice,
    InvoiceLine,
    LedgerEntry,
    LedgerTransaction,
    Payment,
    PayoutStatement,
    UsageRecord,
)
from billing.services import invoice_record_payment, invoice_void, payout_mark_paid
from core.admin import ReadOnlyAdmin, ReadOnlyInline, ReasonForm, run_form_action
from core.errors import DomainError
from core.money import ZERO


@admin.register(UsageRecord)
class UsageRecordAdmin(ReadOnlyAdmin):
    list_display = ["event_id", "provider", "contract", "started_at", "ended_at", "gpu_seconds", "period"]
    list_filter = ["period"]
    list_select_related = ["provider", "contract"]
    search_fields = ["event_id", "provider__name"]
    date_hierarchy = "started_at"
    show_full_result_count = False


@admin.register(BillingPeriod)
class BillingPeriodAdmin(ReadOnlyAdmin):
    list_display = ["period", "usage_watermark", "closed_at"]


@admin.register(DocumentSequence)
class DocumentSequenceAdmin(ReadOnlyAdmin):
    list_display = ["name", "last_value"]


class InvoiceLineInline(ReadOnlyInline):
    model = InvoiceLine
    fields = ["contract", "kind", "service_period", "description", "quantity", "unit_price", "amount", "fee_amount"]
    readonly_fields = fields
    show_change_link = False


class CreditNoteInline(ReadOnlyInline):
    model = CreditNote
    fields = ["number", "amount", "reason", "created_at"]
    readonly_fields = fields


class PaymentInline(ReadOnlyInline):
    model = Payment
    fields = ["amount", "reference", "received_at"]
    readonly_fields = fields


class PaymentForm(forms.Form):
    amount = forms.DecimalField(max_digits=16, decimal_places=2, min_value=0.01, required=False,
                                help_text="Leave empty to record the whole amount due.")  # fmt: skip
    reference = forms.CharField(max_length=128, required=False)


@admin.register(Invoice)
class InvoiceAdmin(ReadOnlyAdmin):
    list_display = ["number", "lab", "period", "status", "total", "issued_at", "paid_at"]
    list_filter = ["status", "period"]
    list_select_related = ["lab"]
    search_fields = ["number", "lab__name"]
    date_hierarchy = "issued_at"
    inlines = [InvoiceLineInline, CreditNoteInline, PaymentInline]
    actions = ["record_payment", "void"]

    @admin.action(
        permissions=["operate"], description="Record a payment (marks the invoice paid when nothing is left due)"
    )
    def record_payment(self, request, queryset):
        def apply(invoice, data):
            payment = invoice_record_payment(
                invoice=invoice, amount=data["amount"], reference=data["reference"], actor=request.user
            )
            invoice.refresh_from_db()
            return f"payment of {payment.amount} recorded; invoice is {invoice.status}."

        return run_form_action(self, request, queryset, form_class=PaymentForm, title="Record payment", apply=apply)

    @admin.action(permissions=["operate"], description="Void selected invoices with a credit note")
    def void(self, request, queryset):
        def apply(invoice, data):
            note = invoice_void(invoice=invoice, reason=data["reason"], actor=request.user)
            return f"voided by credit note {note.number} ({note.amount})."

        return run_form_action(self, request, queryset, form_class=ReasonForm, title="Void invoices", apply=apply)


@admin.register(CreditNote)
class CreditNoteAdmin(ReadOnlyAdmin):
    list_display = ["number", "invoice", "amount", "reason", "created_at"]
    list_select_related = ["invoice"]
    search_fields = ["number", "invoice__number"]
    date_hierarchy = "created_at"


@admin.register(Payment)
class PaymentAdmin(ReadOnlyAdmin):
    list_display = ["invoice", "amount", "reference", "received_at"]
    list_select_related = ["invoice"]
    search_fields = ["invoice__number", "reference"]
    date_hierarchy = "received_at"


@admin.register(PayoutStatement)
class PayoutStatementAdmin(ReadOnlyAdmin):
    list_display = [
        "number",
        "provider",
        "period",
        "gross",
        "fee",
        "sla_credits",
        "carried_in",
        "net",
        "status",
        "paid_at",
    ]
    list_filter = ["status", "period"]
    list_select_related = ["provider"]
    search_fields = ["number", "provider__name"]
    actions = ["mark_paid"]

    @admin.action(permissions=["operate"], description="Mark selected payouts as sent")
    def mark_paid(self, request, queryset):
        paid = 0
        for statement in queryset:
            try:
                payout_mark_paid(statement=statement, actor=request.user)
            except DomainError as exc:
                self.message_user(request, str(exc), level=messages.ERROR)
                continue
            paid += 1
        self.message_user(request, f"{paid} payout(s) marked paid.")


@admin.register(Account)
class AccountAdmin(ReadOnlyAdmin):
    list_display = ["__str__", "kind", "organization", "balance"]
    list_filter = ["kind"]
    list_select_related = ["organization"]
    search_fields = ["organization__name"]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(entries_total=Coalesce(Sum("entries__amount"), Value(ZERO)))

    @admin.display(description="Balance (debit +)", ordering="entries_total")
    def balance(self, account):
        return account.entries_total


class LedgerEntryInline(ReadOnlyInline):
    model = LedgerEntry
    fields = ["account", "amount"]
    readonly_fields = fields
    show_change_link = False

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("account__organization")


@admin.register(LedgerTransaction)
class LedgerTransactionAdmin(ReadOnlyAdmin):
    list_display = ["id", "kind", "memo", "source_key", "created_at"]
    list_filter = ["kind"]
    search_fields = ["memo", "source_key"]
    date_hierarchy = "created_at"
    inlines = [LedgerEntryInline]


@admin.register(LedgerEntry)
class LedgerEntryAdmin(ReadOnlyAdmin):
    list_display = ["id", "transaction", "account", "amount"]
    list_filter = ["account__kind"]
    list_select_related = ["transaction", "account__organization"]
    search_fields = ["transaction__memo", "account__organization__name"]
    show_full_result_count = False
