from rest_framework import serializers

from broker.models import ComputeRequest, Contract
from core.serializers import StrictSerializer, count_field, price_field, time_field
from marketplace.models import REGION_VALIDATOR, BillingMode, GpuModel, Interconnect


class ComputeRequestCreateSerializer(StrictSerializer):
    gpu_model = serializers.SlugRelatedField(slug_field="slug", queryset=GpuModel.objects.all())
    gpu_count = count_field(max_value=1_000_000)
    starts_at = time_field()
    duration_hours = count_field(max_value=24 * 366 * 3)
    max_price_per_gpu_hour = price_field()
    billing_mode = serializers.ChoiceField(choices=BillingMode.choices)
    colocated = serializers.BooleanField(default=True)
    region = serializers.CharField(max_length=63, required=False, default="", validators=[REGION_VALIDATOR])
    interconnect = serializers.ChoiceField(choices=Interconnect.choices, required=False, default="")


class ComputeRequestSerializer(serializers.ModelSerializer):
    gpu_model = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    contracts = serializers.PrimaryKeyRelatedField(many=True, read_only=True)

    class Meta:
        model = ComputeRequest
        fields = [
            "id",
            "gpu_model",
            "gpu_count",
            "starts_at",
            "duration_hours",
            "ends_at",
            "max_price_per_gpu_hour",
            "billing_mode",
            "colocated",
            "region",
            "interconnect",
            "status",
            "unfilled_reason",
            "unfilled_detail",
            "contracts",
            "created_at",
            "filled_at",
            "closed_at",
        ]
        extra_kwargs = {
            "unfilled_reason": {
                "help_text": "Why the engine left this open request unfilled though it found offers: "
                "credit_limit_exceeded while filling it would take your exposure past your credit limit. "
                "Empty otherwise."
            },
            "unfilled_detail": {"help_text": "The reason in words, with the amounts."},
        }


class ContractSerializer(serializers.ModelSerializer):
    lab = serializers.CharField(source="lab.name", read_only=True)
    provider = serializers.CharField(source="provider.name", read_only=True)
    cluster = serializers.SerializerMethodField()
    nodes = serializers.SerializerMethodField()

    class Meta:
        model = Contract
        fields = [
            "id",
            "request",
            "listing",
            "lab",
            "provider",
            "cluster",
            "gpu_count",
            "node_count",
            "starts_at",
            "ends_at",
            "price_per_gpu_hour",
            "billing_mode",
            "total_amount",
            "status",
            "released_at",
            "cancel_reason",
            "nodes",
            "created_at",
        ]

    def get_cluster(self, contract: Contract) -> dict:
        cluster = contract.cluster
        return {
            "id": cluster.pk,
            "name": cluster.name,
            "gpu_model": cluster.gpu_model.slug,
            "region": cluster.region,
            "interconnect": cluster.interconnect,
            "gpus_per_node": cluster.gpus_per_node,
        }

    def get_nodes(self, contract: Contract) -> list[str]:
        """Hostnames of the contract's nodes: what the lab bought, so it may see them."""
        return [allocation.node.hostname for allocation in contract.allocations.all()]


class BookingSerializer(StrictSerializer):
    gpu_count = count_field(max_value=1_000_000)
    starts_at = time_field()
    duration_hours = count_field(max_value=24 * 366 * 3)
