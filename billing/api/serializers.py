from decimal import ROUND_HALF_UP, Decimal

from rest_framework import serializers

from billing.close_sql import RatedLine
from billing.models import CreditNote, Invoice, InvoiceLine, Payment, PayoutStatement, UsageRecord
from core.money import QUANTITY_PLACES, ZERO


class UsageBatchSerializer(serializers.Serializer):
    records = serializers.ListField(
        child=serializers.JSONField(),
        min_length=1,
        max_length=1000,
        help_text="Up to 1,000 records {id, contract, node?, started_at, ended_at, gpu_seconds}.",
    )


class UsageRejectionSerializer(serializers.Serializer):
    index = serializers.IntegerField()
    id = serializers.CharField(allow_null=True)
    code = serializers.CharField()
    message = serializers.CharField()


class UsageIngestResultSerializer(serializers.Serializer):
    accepted = serializers.ListField(child=serializers.CharField())
    duplicates = serializers.ListField(child=serializers.CharField())
    rejected = UsageRejectionSerializer(many=True)


class UsageRecordSerializer(serializers.ModelSerializer):
    id = serializers.CharField(source="event_id")
    node = serializers.CharField(source="node.hostname", allow_null=True, default=None)

    class Meta:
        model = UsageRecord
        fields = ["id", "contract", "node", "started_at", "ended_at", "gpu_seconds", "period", "received_at"]


class InvoiceLineSerializer(serializers.ModelSerializer):
    quantity = serializers.DecimalField(max_digits=20, decimal_places=6, help_text="GPU-hours.")

    class Meta:
        model = InvoiceLine
        fields = ["contract", "kind", "service_period", "description", "quantity", "unit_price", "amount"]


class CreditNoteSerializer(serializers.ModelSerializer):
    class Meta:
        model = CreditNote
        fields = ["number", "reason", "amount", "created_at"]


class PaymentSerializer(serializers.ModelSerializer):
    class Meta:
        model = Payment
        fields = ["amount", "reference", "received_at"]


class InvoiceSerializer(serializers.ModelSerializer):
    period = serializers.DateField(format="%Y-%m")
    lines = InvoiceLineSerializer(many=True, read_only=True)
    credit_notes = CreditNoteSerializer(many=True, read_only=True)
    payments = PaymentSerializer(many=True, read_only=True)
    amount_due = serializers.SerializerMethodField()

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

    def get_amount_due(self, invoice: Invoice) -> Decimal:
        credited = sum((note.amount for note in invoice.credit_notes.all()), ZERO)
        paid = sum((payment.amount for payment in invoice.payments.all()), ZERO)
        due = invoice.total - credited - paid
        return serializers.DecimalField(max_digits=16, decimal_places=2).to_representation(due)


class PreviewQuerySerializer(serializers.Serializer):
    period = serializers.RegexField(r"^\d{4}-\d{2}$", help_text="YYYY-MM")


class InvoicePreviewSerializer(serializers.Serializer):
    period = serializers.CharField()
    total = serializers.DecimalField(max_digits=16, decimal_places=2)
    lines = serializers.SerializerMethodField()

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
    period = serializers.DateField(format="%Y-%m")
    carried_into = serializers.SlugRelatedField(slug_field="number", read_only=True)

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
