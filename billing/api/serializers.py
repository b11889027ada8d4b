from decimal import ROUND_HALF_UP, Decimal

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from billing.close_sql import RatedLine
from billing.models import CreditNote, Invoice, InvoiceLine, Payment, PayoutStatement, UsageRecord
from core.money import QUANTITY_PLACES, ZERO
from core.serializers import MonthField


class UsageBatchSerializer(serializers.Serializer):
    records = serializers.ListField(
        child=serializers.JSONField(),
        min_length=1,
        max_length=1000,
        help_text="Up to 1,000 records {id, contract, node?, started_at, ended_at, gpu_seconds}.",
    )


class UsageRejectionSerializer(serializers.Serializer):
    index = serializers.IntegerField(min_value=0, max_value=999, help_text="The record's position in `records`.")
    id = serializers.CharField(allow_null=True, help_text="The record's `id`; null when it had none.")
    code = serializers.CharField(help_text="Why it was rejected, e.g. `invalid` or `exceeds_capacity`.")
    message = serializers.CharField(help_text="Why, in words.")


class UsageIngestResultSerializer(serializers.Serializer):
    accepted = serializers.ListField(child=serializers.CharField(), help_text="Ids of the records kept.")
    duplicates = serializers.ListField(
        child=serializers.CharField(), help_text="Ids seen before: nothing was stored again."
    )
    rejected = UsageRejectionSerializer(many=True, help_text="Records refused, each with why.")


class UsageRecordSerializer(serializers.ModelSerializer):
    id = serializers.CharField(source="event_id", help_text="The provider's id of the record, unique per provider.")
    node = serializers.CharField(
        source="node.hostname", allow_null=True, default=None, help_text="The node's hostname; null if not given."
    )

    class Meta:
        model = UsageRecord
        fields = ["id", "contract", "node", "started_at", "ended_at", "gpu_seconds", "period", "received_at"]
        extra_kwargs = {
            "contract": {"help_text": "The contract the GPUs were used under."},
            "started_at": {"help_text": "The start of the use."},
            "ended_at": {"help_text": "The end of the use."},
            "gpu_seconds": {"help_text": "GPU-seconds used over [started_at, ended_at)."},
            "received_at": {"help_text": "When the record was received."},
        }


class InvoiceLineSerializer(serializers.ModelSerializer):
    quantity = serializers.DecimalField(max_digits=20, decimal_places=6, help_text="GPU-hours.")

    class Meta:
        model = InvoiceLine
        fields = ["contract", "kind", "service_period", "description", "quantity", "unit_price", "amount"]
        extra_kwargs = {
            "contract": {"help_text": "The contract billed."},
            "kind": {"help_text": "What the line bills."},
            "description": {"help_text": "The line in words."},
            "unit_price": {"help_text": "The price per GPU-hour."},
            "amount": {"help_text": "quantity x unit_price, rounded half-up to cents."},
        }


class CreditNoteSerializer(serializers.ModelSerializer):
    class Meta:
        model = CreditNote
        fields = ["number", "reason", "amount", "created_at"]
        extra_kwargs = {
            "number": {"help_text": "The credit note's number."},
            "reason": {"help_text": "Why it was issued."},
            "amount": {"help_text": "The amount credited against the invoice."},
            "created_at": {"help_text": "When it was issued."},
        }


class PaymentSerializer(serializers.ModelSerializer):
    class Meta:
        model = Payment
        fields = ["amount", "reference", "received_at"]
        extra_kwargs = {
            "amount": {"help_text": "The amount paid."},
            "reference": {"help_text": "The payment's reference."},
            "received_at": {"help_text": "When it was received."},
        }


class InvoiceSerializer(serializers.ModelSerializer):
    period = MonthField(help_text="The month billed, YYYY-MM.")
    lines = InvoiceLineSerializer(many=True, read_only=True, help_text="What is billed.")
    credit_notes = CreditNoteSerializer(many=True, read_only=True, help_text="Credits against the invoice.")
    payments = PaymentSerializer(many=True, read_only=True, help_text="Payments received.")
    amount_due = serializers.SerializerMethodField(help_text="The total less credits and payments.")

    class Meta:
        model = Invoice
        fields = [
            "id",
            "number",
            "period",
            "status",
            "total",
            "amount_due",
            "issued_at",
            "paid_at",
            "voided_at",
            "lines",
            "credit_notes",
            "payments",
        ]
        extra_kwargs = {
            "id": {"help_text": "The invoice's id."},
            "number": {"help_text": "The invoice's number."},
            "status": {"help_text": "Where the invoice is: issued, paid, void and so on."},
            "total": {"help_text": "The sum of the lines."},
            "issued_at": {"help_text": "When it was issued."},
            "paid_at": {"help_text": "When it was paid in full; null until then."},
            "voided_at": {"help_text": "When it was voided; null otherwise."},
        }

    @extend_schema_field(serializers.DecimalField(max_digits=16, decimal_places=2))
    def get_amount_due(self, invoice: Invoice) -> str:
        credited = sum((note.amount for note in invoice.credit_notes.all()), ZERO)
        paid = sum((payment.amount for payment in invoice.payments.all()), ZERO)
        due = invoice.total - credited - paid
        return serializers.DecimalField(max_digits=16, decimal_places=2).to_representation(due)


class PreviewQuerySerializer(serializers.Serializer):
    period = serializers.RegexField(r"^\d{4}-\d{2}$", help_text="YYYY-MM")


class InvoicePreviewSerializer(serializers.Serializer):
    period = serializers.CharField(help_text="The month previewed, YYYY-MM.")
    total = serializers.DecimalField(max_digits=16, decimal_places=2, help_text="The sum of the lines.")
    lines = serializers.SerializerMethodField(help_text="What the invoice would bill, as its lines would.")

    def get_lines(self, preview) -> list[dict]:
        return [_preview_line(line) for line in preview["lines"]]


QUANTITY_QUANTUM = Decimal(1).scaleb(-QUANTITY_PLACES)


def _preview_line(line: RatedLine) -> dict:
    return {
        "contract": line.contract_id,
        "kind": line.kind,
        "service_period": line.service_period.isoformat(),
        "description": line.description,
        # Rounded as the invoice line's column rounds it.
        "quantity": f"{line.quantity.quantize(QUANTITY_QUANTUM, rounding=ROUND_HALF_UP)}",
        "unit_price": f"{line.unit_price}",
        "amount": f"{line.amount}",
    }


class PayoutStatementSerializer(serializers.ModelSerializer):
    period = MonthField(help_text="The month paid for, YYYY-MM.")
    carried_into = serializers.SlugRelatedField(
        slug_field="number",
        read_only=True,
        allow_null=True,
        help_text="The statement a negative net was carried into; null otherwise.",
    )

    class Meta:
        model = PayoutStatement
        fields = [
            "id",
            "number",
            "period",
            "gross",
            "fee",
            "carried_in",
            "net",
            "status",
            "carried_into",
            "created_at",
            "paid_at",
        ]
        extra_kwargs = {
            "id": {"help_text": "The statement's id."},
            "number": {"help_text": "The statement's number."},
            "gross": {"help_text": "What the provider's contracts billed for the month."},
            "fee": {"help_text": "The platform's fee."},
            "net": {"help_text": "gross - fee + carried_in: what is paid out."},
            "status": {"help_text": "Where the statement is."},
            "created_at": {"help_text": "When it was made."},
            "paid_at": {"help_text": "When it was paid; null until then."},
        }
