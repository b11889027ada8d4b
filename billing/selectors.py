from django.db.models import Prefetch, QuerySet

from billing.models import CreditNote, Invoice, InvoiceLine, PayoutStatement, UsageRecord
from marketplace.models import Organization


def invoice_list(*, lab: Organization) -> QuerySet[Invoice]:
    """A lab's issued invoices (drafts are internal), with lines, credit notes and payments."""
    return (
        Invoice.objects.non_draft()
        .filter(lab=lab)
        .prefetch_related(
            Prefetch("lines", queryset=InvoiceLine.objects.order_by("id")),
            Prefetch("credit_notes", queryset=CreditNote.objects.order_by("id")),
            "payments",
        )
        .order_by("-period", "-id")
    )


def payout_list(*, provider: Organization) -> QuerySet[PayoutStatement]:
    return PayoutStatement.objects.filter(provider=provider).order_by("-period", "-id")


def usage_list(*, provider: Organization) -> QuerySet[UsageRecord]:
    return UsageRecord.objects.filter(provider=provider).select_related("node").order_by("-id")
