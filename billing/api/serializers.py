from decimal import ROUND_HALF_UP, Decimal

from django.core.validators import RegexValidator
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from billing.close_sql import RatedLine
from billing.models import CreditNote, Invoice, InvoiceLine, Payment, PayoutStatement, UsageRecord
from core.money import QUANTITY_PLACES, ZERO
from core.serializers import MonthField, PatternField, QuerySerializer, StrictSerializer

# One usage record as sent. The service checks each record itself (billing.services.usage_ingest),
# so that one bad record is rejected with its reason while the others of the batch are kept.
USAGE_RECORD_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["id", "contract", "started_at", "ended_at", "gpu_seconds"],
    "properties": {
        "id": {
            "type": "string",
            "minLength": 1,
            "maxLength": 128,
            "description": "Your id of the record, unique among your records: a record sent again is a duplicate.",
        },
        "contract": {"type": "integer", "minimum": 1, "description": "The contract the GPUs were used under."},
        "node": {
            "type": "string",
            "nullable": True,
            "minLength": 1,
            "maxLength": 253,
            "description": "The hostname of the contract's node that was used; omit for the contract as a whole.",
        },
        "started_at": {"type": "string", "format": "date-time", "description": "The start of the use, with a zone."},
        "ended_at": {
            "type": "string",
            "format": "date-time",
            "description": "The end of the use: after started_at, in the past, in the same UTC month.",
        },
        "gpu_seconds": {
            "type": "string",
            "format": "decimal",
            "pattern": r"^[0-9]{1,12}(\.[0-9]{1,3})?$",
            "description": "GPU-seconds used over [started_at, ended_at), at most 3 decimals (a JSON number is "
            "accepted too).",
        },
    },
    "example": {
        "id": "dc1-h100-1-00001/2026-11-30T10",
        "contract": 42,
        "node": "dc1-h100-1-00001",
        "started_at": "2026-11-30T10:00:00Z",
        "ended_at": "2026-11-30T11:00:00Z",
        "gpu_seconds": "28800",
    },
}


@extend_schema_field(USAGE_RECORD_SCHEMA)
class UsageRecordField(serializers.JSONField):
    """A usage record as sent; checked one by one by the service, not here."""


class UsageBatchSerializer(StrictSerializer):
    records = serializers.ListField(
        child=UsageRecordField(),
        min_length=1,
        max_length=1000,
        help_text="Up to 1,000 records.",
    )


class UsageRejectionSerializer(serializers.Serializer):
    index = serializers.IntegerField(min_value=0, max_value=999, help_text="The record's position in `records`.")
    id = serializers.CharField(allow_null=True, help_text="The record's `id`; null when it had none.")
    code = serializers.CharField(help_text="Why it was rejected, e.g. `invalid`, `exceeds_capacity` or `node_failed`.")
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
            "kind": {
                "help_text": "What the line bills; sla_credit lines give back lost GPU-hours (a negative amount)."
            },
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


PREVIEW_MONTH = "A month, YYYY-MM, from 2000-01 to 2099-12."


class PreviewQuerySerializer(QuerySerializer):
    period = PatternField(
        validators=[RegexValidator(r"^20[0-9]{2}-(0[1-9]|1[0-2])$", PREVIEW_MONTH)], help_text=PREVIEW_MONTH
    )


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
            "sla_credits",
            "net",
            "status",
            "carried_into",
            "created_at",
            "paid_at",
        ]
        extra_kwargs = {
            "id": {"help_text": "The statement's id."},
            "number": {"help_text": "The statement's number."},
            "gross": {"help_text": "What the provider's contracts billed for the month, less its SLA credits."},
            "sla_credits": {
                "help_text": "SLA credits charged back for lost GPU-hours (zero or negative), counted in gross; "
                "the fee gives back its share of them."
            },
            "fee": {"help_text": "The platform's fee."},
            "net": {"help_text": "gross - fee + carried_in: what is paid out."},
            "status": {"help_text": "Where the statement is."},
            "created_at": {"help_text": "When it was made."},
            "paid_at": {"help_text": "When it was paid; null until then."},
        }
