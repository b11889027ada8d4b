import django_filters
from django import forms
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from billing.api.serializers import (
    InvoicePreviewSerializer,
    InvoiceSerializer,
    PayoutStatementSerializer,
    PreviewQuerySerializer,
    UsageBatchSerializer,
    UsageIngestResultSerializer,
    UsageRecordSerializer,
)
from billing.models import Invoice, PayoutStatement, UsageRecord
from billing.selectors import invoice_list, payout_list, usage_list
from billing.services import billing_period_preview, usage_ingest
from core.errors import DomainError, InvalidInput
from core.money import ZERO
from core.schema import documented_error
from core.timeutils import parse_period
from marketplace.permissions import IsLab, IsOrganizationMember, IsProvider


class AllRejected(DomainError):
    """Every record of a usage batch was rejected: nothing was stored, which must not read as a success."""

    status_code = status.HTTP_422_UNPROCESSABLE_ENTITY
    code = "all_rejected"

    def __init__(self, rejected: list[dict]):
        rejected = sorted(rejected, key=lambda rejection: rejection["index"])  # in the order sent
        first = rejected[0]
        which = f"record {first['index']}" + (f" (id {first['id']!r})" if first["id"] is not None else "")
        super().__init__(
            f"Nothing was stored: all {len(rejected)} record(s) were rejected; {which}: {first['message']}",
            fields={"rejected": rejected},
        )


@extend_schema_field({"type": "integer", "minimum": 1, "maximum": 2**62})
class IdFilter(django_filters.Filter):
    """An object's id: a whole number from 1, anything else a 400."""

    field_class = forms.IntegerField


class UsageFilter(django_filters.FilterSet):
    # A plain id, not a choice of contracts: another organization's contract and one that does
    # not exist filter to the same empty page, so the answer tells nothing about which ids exist.
    contract = IdFilter(
        field_name="contract_id", min_value=1, max_value=2**62, help_text="Only this contract's records."
    )

    class Meta:
        model = UsageRecord
        fields = ["contract"]


class UsageViewSet(mixins.ListModelMixin, viewsets.GenericViewSet):
    """Providers report GPU-seconds used under their contracts."""

    permission_classes = [IsProvider]
    serializer_class = UsageRecordSerializer
    filterset_class = UsageFilter

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # the schema generator has no caller
            return UsageRecord.objects.none()
        return usage_list(provider=self.request.user.organization)

    @extend_schema(
        request=UsageBatchSerializer,
        responses={
            200: UsageIngestResultSerializer,
            422: documented_error(
                "Nothing was stored",
                all_rejected="every record of the batch was rejected; `fields.rejected` lists each, in the "
                "order sent, with its `index`, `id`, `code` and `message`, as a 200's `rejected` does",
            ),
        },
        summary="Report usage (up to 1,000 records)",
        description=(
            "Each record is accepted, reported back as a duplicate (its `id` was seen before), or rejected "
            "with a reason; valid records of a call are kept even when others are rejected (200, with the "
            "rejected ones in `rejected`). When every record is rejected nothing was stored, and the answer is "
            "a 422 `all_rejected` whose `fields.rejected` gives each record's reason. A record's "
            "GPU-seconds are taken as spread evenly over its [started_at, ended_at): at no instant may the "
            "records of a node use more GPUs than the node has, nor the records of a contract (with or without "
            "a node) more than the contract's GPUs, counting the records already stored and those accepted "
            "earlier in the call, in order. A record past that is rejected with code `exceeds_capacity` and a "
            "message saying what is already reported for that node or contract over its interval. A record "
            "naming a node that overlaps one of the node's failure incidents (from its start until its "
            "resolution) is rejected with code `node_failed`: those hours are credited to the lab, not billed."
        ),
    )
    def create(self, request: Request) -> Response:
        data = request.data
        if not isinstance(data, dict) or set(data) != {"records"}:
            raise InvalidInput('Send {"records": [...]}.', fields={"records": ["This field is required."]})
        result = usage_ingest(provider=request.user.organization, records=data["records"])
        if result.rejected and not result.accepted and not result.duplicates:
            raise AllRejected(result.rejected)
        body = {"accepted": result.accepted, "duplicates": result.duplicates, "rejected": result.rejected}
        return Response(body, status=status.HTTP_200_OK)


class InvoiceViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """A lab's monthly invoices."""

    permission_classes = [IsLab]
    serializer_class = InvoiceSerializer
    filterset_fields = ["status"]

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # the schema generator has no caller
            return Invoice.objects.none()
        return invoice_list(lab=self.request.user.organization)

    @extend_schema(
        parameters=[PreviewQuerySerializer],
        responses=InvoicePreviewSerializer,
        summary="Preview a month's invoice from the current data (saves nothing)",
    )
    @action(detail=False, methods=["get"])
    def preview(self, request: Request) -> Response:
        query = PreviewQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        period = parse_period(query.validated_data["period"])
        lines = billing_period_preview(lab=request.user.organization, period=period)
        total = sum((line.amount for line in lines), ZERO)
        return Response(InvoicePreviewSerializer({"period": f"{period:%Y-%m}", "total": total, "lines": lines}).data)


class PayoutViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """A seller's monthly statements: gross, the broker's fee, net. Sellers are providers, and
    labs that resold hours of their contracts (broker.resale)."""

    permission_classes = [IsOrganizationMember]
    serializer_class = PayoutStatementSerializer

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # the schema generator has no caller
            return PayoutStatement.objects.none()
        return payout_list(provider=self.request.user.organization)
