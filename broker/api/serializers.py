from drf_spectacular.extensions import OpenApiSerializerExtension
from drf_spectacular.utils import OpenApiExample, extend_schema_field, extend_schema_serializer
from rest_framework import serializers

from broker.models import Allocation, ComputeRequest, Contract
from core.serializers import (
    FieldsBuiltOnce,
    PatternField,
    QuerySerializer,
    StrictBooleanField,
    StrictSerializer,
    count_field,
    price_field,
    time_field,
)
from marketplace.api.serializers import GpuModelField
from marketplace.models import REGION_VALIDATOR, BillingMode, Interconnect


@extend_schema_serializer(
    examples=[
        OpenApiExample(
            "1,024 H100s for a week, on one cluster",
            value={
                "gpu_model": "h100-sxm-80gb",
                "gpu_count": 1024,
                "starts_at": "2030-01-08T00:00:00Z",
                "duration_hours": 168,
                "max_price_per_gpu_hour": "2.40",
                "billing_mode": "committed",
                "colocated": True,
            },
            request_only=True,
        )
    ]
)
class FillTermsSerializer(StrictSerializer):
    """The terms the matching engine fills: a compute request's, and a quote's (broker.quotes)."""

    gpu_model = GpuModelField()
    gpu_count = count_field(max_value=1_000_000, help_text="GPUs wanted, in whole nodes of the clusters that fill it.")
    starts_at = time_field(help_text="The start: a whole UTC hour not yet begun.")
    duration_hours = count_field(max_value=24 * 366 * 3, help_text="How many hours from starts_at.")
    billing_mode = serializers.ChoiceField(
        choices=BillingMode.choices, help_text="committed (every hour is paid) or metered (GPU-hours used)."
    )
    colocated = StrictBooleanField(default=True, help_text="Fill from one cluster only.")
    region = PatternField(
        max_length=63,
        required=False,
        allow_blank=True,  # the default, "": any region (a generated client sends the default)
        default="",
        validators=[REGION_VALIDATOR],
        help_text="Only clusters in this region; any when omitted.",
    )


class ComputeRequestCreateSerializer(FillTermsSerializer):
    max_price_per_gpu_hour = price_field(help_text="The most you will pay per GPU-hour, in whole cents.")
    interconnect = serializers.ChoiceField(
        choices=Interconnect.choices,
        required=False,
        allow_blank=True,  # the default, "": any; in the schema, so generated clients accept it
        default="",
        help_text="Only this interconnect; any when omitted or empty.",
    )


class ComputeRequestSerializer(serializers.ModelSerializer):
    gpu_model = serializers.SlugRelatedField(slug_field="slug", read_only=True, help_text="The GPU model's slug.")
    contracts = serializers.PrimaryKeyRelatedField(
        many=True, read_only=True, help_text="Ids of the contracts that fill it."
    )

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
            "fill_price_now",
            "contracts",
            "created_at",
            "filled_at",
            "closed_at",
        ]
        extra_kwargs = {
            "id": {"help_text": "The request's id."},
            "gpu_count": {"help_text": "GPUs wanted."},
            "starts_at": {"help_text": "The start (a whole UTC hour)."},
            "duration_hours": {"help_text": "Hours from starts_at."},
            "ends_at": {"help_text": "starts_at plus duration_hours."},
            "max_price_per_gpu_hour": {"help_text": "The most it pays per GPU-hour."},
            "billing_mode": {"help_text": "committed or metered."},
            "colocated": {"help_text": "Filled from one cluster only."},
            "region": {"help_text": "Only clusters in this region; empty for any."},
            "interconnect": {"help_text": "Only this interconnect; empty for any."},
            "status": {"help_text": "open (being matched), filled, cancelled or expired (its start passed)."},
            "created_at": {"help_text": "When it was posted."},
            "filled_at": {"help_text": "When it was filled; null until then."},
            "closed_at": {"help_text": "When it was cancelled or expired; null otherwise."},
            "unfilled_reason": {
                "help_text": "Why the last matching run left this open request open: no_offer (no listing on "
                "its terms), no_capacity (too few free nodes for the window), price_too_low (it would fill at "
                "fill_price_now), credit_limit_exceeded (filling it would take your exposure past your credit "
                "limit). Empty until a run has seen it, and once filled. Every run updates it."
            },
            "unfilled_detail": {"help_text": "The reason in words, with the figures."},
            "fill_price_now": {
                "help_text": "The lowest maximum price per GPU-hour at which it would fill now; null when no "
                "price would fill it."
            },
        }


class ContractClusterSerializer(serializers.Serializer):
    id = serializers.IntegerField(help_text="The cluster's id.")
    name = serializers.CharField(help_text="The cluster's name.")
    gpu_model = serializers.CharField(help_text="The GPU model's slug.")
    region = serializers.CharField(help_text="Where the cluster is.")
    interconnect = serializers.ChoiceField(choices=Interconnect.choices, help_text="The network between nodes.")
    gpus_per_node = serializers.IntegerField(help_text="GPUs in each node.")


class ContractSerializer(FieldsBuiltOnce, serializers.ModelSerializer):
    """A contract as lists show it: its terms, without its nodes (GET /api/v1/contracts/{id}/nodes)."""

    lab = serializers.CharField(source="lab.name", read_only=True, help_text="The buyer's name.")
    provider = serializers.CharField(source="provider.name", read_only=True, help_text="The seller's name.")
    cluster = serializers.SerializerMethodField(help_text="The cluster the nodes belong to.")

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
            "created_at",
        ]
        extra_kwargs = {
            "id": {"help_text": "The contract's id."},
            "request": {"help_text": "The compute request it fills; null for a booking."},
            "listing": {"help_text": "The listing it was sold from."},
            "gpu_count": {"help_text": "GPUs sold."},
            "node_count": {"help_text": "Nodes sold."},
            "starts_at": {"help_text": "The start (a whole UTC hour)."},
            "ends_at": {"help_text": "The end (a whole UTC hour)."},
            "price_per_gpu_hour": {"help_text": "The price per GPU-hour, fixed for the contract."},
            "billing_mode": {"help_text": "committed or metered."},
            "total_amount": {"help_text": "GPUs x hours x price: what a committed contract costs."},
            "status": {"help_text": "Where the contract is in its life."},
            "released_at": {"help_text": "When its nodes were freed early; null otherwise."},
            "cancel_reason": {"help_text": "Why an operator cancelled it; empty otherwise."},
            "created_at": {"help_text": "When it was written."},
        }

    @extend_schema_field(ContractClusterSerializer)
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


class ContractDetailSerializer(ContractSerializer):
    """One contract with the hostnames of its nodes: what the lab bought, so both parties see them."""

    nodes = serializers.SerializerMethodField(
        help_text="Hostnames of the contract's nodes, sorted. GET /api/v1/contracts/{id}/nodes pages them, "
        "with each node's window."
    )

    class Meta(ContractSerializer.Meta):
        fields = [*(name for name in ContractSerializer.Meta.fields if name != "created_at"), "nodes", "created_at"]

    def get_nodes(self, contract: Contract) -> list[str]:
        written = getattr(contract, "node_hostnames", None)  # a booking's, from its statement
        if written is not None:
            return written
        return [allocation.node.hostname for allocation in contract.allocations.all()]


class ContractDetailSchema(OpenApiSerializerExtension):
    """Document ContractDetail as Contract plus its nodes (allOf), so that the contract's fields,
    and the enums among them, are described once."""

    target_class = ContractDetailSerializer

    def map_serializer(self, auto_schema, direction):
        mapped = auto_schema._map_serializer(self.target, direction, bypass_extensions=True)
        own = {
            name: field for name, field in mapped["properties"].items() if name not in ContractSerializer.Meta.fields
        }
        extension = {
            "type": "object",
            "properties": own,
            "required": [name for name in mapped["required"] if name in own],
        }
        return {"allOf": [auto_schema.resolve_serializer(ContractSerializer, direction).ref, extension]}


class ContractNodeSerializer(serializers.ModelSerializer):
    """A node of a contract, and the hours it serves the contract."""

    id = serializers.IntegerField(source="node_id", read_only=True, help_text="The node's id.")
    hostname = serializers.CharField(source="node.hostname", read_only=True, help_text="The node's hostname.")
    starts_at = serializers.DateTimeField(read_only=True, help_text="From when the node serves the contract.")
    ends_at = serializers.DateTimeField(
        read_only=True,
        help_text="Until when it serves the contract: the contract's end, the hour it was freed early, or the "
        "hour a replacement took over from it after a failure (equal to starts_at when that was before it "
        "started).",
    )
    replaces = serializers.CharField(
        read_only=True,
        allow_null=True,
        help_text="The hostname of the failed node this one replaced (GET /api/v1/incidents); null for a node "
        "the contract was sold with.",
    )

    class Meta:
        model = Allocation
        fields = ["id", "hostname", "starts_at", "ends_at", "replaces"]


class ContractNodesQuerySerializer(QuerySerializer):
    history = StrictBooleanField(
        required=False,
        default=False,
        help_text="Also list nodes replaced before they served the contract an hour (they show starts_at equal "
        "to ends_at). Without it, those are left out; a node that served some hours is always listed.",
    )


@extend_schema_serializer(
    examples=[
        OpenApiExample(
            "64 GPUs for three days",
            value={"gpu_count": 64, "starts_at": "2030-01-08T00:00:00Z", "duration_hours": 72},
            request_only=True,
        )
    ]
)
class BookingSerializer(StrictSerializer):
    gpu_count = count_field(max_value=1_000_000, help_text="GPUs to buy, a multiple of the cluster's GPUs per node.")
    starts_at = time_field(help_text="The start: a whole UTC hour not yet begun, inside the listing's window.")
    duration_hours = count_field(
        max_value=24 * 366 * 3, help_text="Hours from starts_at: at least the listing's minimum, inside its window."
    )
