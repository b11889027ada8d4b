"""Serializers of clusters, nodes and listings."""

from datetime import tzinfo
from decimal import Decimal
from functools import cache, cached_property

from django.utils import timezone
from drf_spectacular.utils import OpenApiExample, extend_schema_field, extend_schema_serializer
from rest_framework import serializers
from rest_framework.settings import api_settings

from core.serializers import (
    FieldsBuiltOnce,
    PatternField,
    QuerySerializer,
    StrictBooleanField,
    StrictCharField,
    StrictDecimalField,
    StrictIntegerField,
    StrictSerializer,
    count_field,
    price_field,
    time_field,
)
from marketplace.api.serializers import GpuModelField, ReliabilitySerializer, reliability_from_row, reliability_of
from marketplace.models import (
    HOSTNAME_VALIDATOR,
    REGION_VALIDATOR,
    BillingMode,
    Cluster,
    Interconnect,
    Listing,
    Node,
)
from marketplace.selectors import ListingRow
from marketplace.services import MAX_NODES_PER_CALL


@extend_schema_serializer(
    examples=[
        OpenApiExample(
            "An H100 cluster",
            value={
                "name": "dc1-h100",
                "gpu_model": "h100-sxm-80gb",
                "region": "us-south-1",
                "interconnect": "infiniband",
                "gpus_per_node": 8,
                "node_count": 512,
            },
            request_only=True,
        )
    ]
)
class ClusterCreateSerializer(StrictSerializer):
    name = StrictCharField(max_length=100, help_text="A name unique among your clusters.")
    gpu_model = GpuModelField()
    region = PatternField(
        max_length=63, validators=[REGION_VALIDATOR], help_text="Where the cluster is, e.g. us-south-1."
    )
    interconnect = serializers.ChoiceField(choices=Interconnect.choices, help_text="The network between nodes.")
    gpus_per_node = count_field(max_value=64, help_text="GPUs in each node.")
    node_count = count_field(max_value=MAX_NODES_PER_CALL, help_text="How many nodes to register.")
    hostnames = serializers.ListField(
        child=PatternField(max_length=253, validators=[HOSTNAME_VALIDATOR]),
        required=False,
        max_length=MAX_NODES_PER_CALL,
        help_text="One per node; generated when omitted.",
    )


class ClusterUpdateSerializer(StrictSerializer):
    name = StrictCharField(max_length=100, help_text="A new name, unique among your clusters.")


CLUSTER_HELP = {
    "id": {"help_text": "The cluster's id."},
    "name": {"help_text": "A name unique among its provider's clusters."},
    "region": {"help_text": "Where the cluster is."},
    "interconnect": {"help_text": "The network between nodes."},
    "gpus_per_node": {"help_text": "GPUs in each node."},
    "created_at": {"help_text": "When the cluster was registered."},
}


class ClusterSerializer(serializers.ModelSerializer):
    gpu_model = serializers.SlugRelatedField(slug_field="slug", read_only=True, help_text="The GPU model's slug.")
    node_count = serializers.IntegerField(read_only=True, help_text="Nodes registered.")
    nodes_in_service = serializers.IntegerField(read_only=True, help_text="Nodes not in maintenance.")

    class Meta:
        model = Cluster
        fields = [
            "id",
            "name",
            "gpu_model",
            "region",
            "interconnect",
            "gpus_per_node",
            "node_count",
            "nodes_in_service",
            "created_at",
        ]
        extra_kwargs = CLUSTER_HELP


class NodeSerializer(serializers.ModelSerializer):
    class Meta:
        model = Node
        fields = ["id", "hostname", "status"]
        extra_kwargs = {
            "id": {"help_text": "The node's id."},
            "hostname": {"help_text": "The node's hostname, unique in its cluster."},
            "status": {
                "help_text": "in_service (listed and sold), maintenance (neither) or failed (cordoned by an open "
                "failure incident until it is resolved)."
            },
        }


class NodeAddSerializer(StrictSerializer):
    count = count_field(max_value=MAX_NODES_PER_CALL, help_text="How many nodes to add.")
    hostnames = serializers.ListField(
        child=PatternField(max_length=253, validators=[HOSTNAME_VALIDATOR]),
        required=False,
        max_length=MAX_NODES_PER_CALL,
        help_text="One per node, `count` of them; generated when omitted.",
    )


class NodeUpdateSerializer(StrictSerializer):
    status = serializers.ChoiceField(
        choices=[Node.Status.IN_SERVICE, Node.Status.MAINTENANCE],  # failed: only by an incident
        required=False,
        help_text="in_service, or maintenance to take the node out. Omitted: no change.",
    )


@extend_schema_field({"type": "integer", "minimum": 1, "maximum": 10**18 - 1})
class ClusterIdField(serializers.PrimaryKeyRelatedField):
    """A cluster by its id, documented as the bounded integer it is, and read as one (DRF alone
    looks up "5", and 5.5 as cluster 5)."""

    def __init__(self, **kwargs):
        super().__init__(pk_field=StrictIntegerField(), **kwargs)


def sla_availability_field(**kwargs) -> StrictDecimalField:
    """A listing's availability promise: a percentage from 50 to 100, two places."""
    return StrictDecimalField(
        max_digits=5, decimal_places=2, min_value=Decimal("50"), max_value=Decimal("100"), required=False, **kwargs
    )


def sla_breach_credit_rate_field(**kwargs) -> StrictDecimalField:
    """A listing's credit rate past its promise: a multiple of the price from 1 to 10, two places."""
    return StrictDecimalField(
        max_digits=4, decimal_places=2, min_value=Decimal("1"), max_value=Decimal("10"), required=False, **kwargs
    )


@extend_schema_serializer(
    examples=[
        OpenApiExample(
            "Two weeks of 256 nodes",
            value={
                "cluster": 1,
                "node_count": 256,
                "starts_at": "2030-01-07T00:00:00Z",
                "ends_at": "2030-01-21T00:00:00Z",
                "price_per_gpu_hour": "2.10",
                "min_duration_hours": 24,
                "billing_mode": "committed",
                "sla_availability": "99.50",
                "sla_breach_credit_rate": "2.00",
            },
            request_only=True,
        )
    ]
)
class ListingCreateSerializer(StrictSerializer):
    cluster = ClusterIdField(queryset=Cluster.objects.none(), help_text="One of your clusters.")
    node_count = count_field(max_value=MAX_NODES_PER_CALL, help_text="How many of its nodes to offer.")
    starts_at = time_field(help_text="The window's start: a whole UTC hour not yet begun.")
    ends_at = time_field(help_text="The window's end: a whole UTC hour after starts_at.")
    price_per_gpu_hour = price_field(help_text="The price per GPU-hour, in whole cents.")
    min_duration_hours = count_field(
        max_value=100_000, default=1, help_text="The shortest booking accepted, in hours; at most the window."
    )
    billing_mode = serializers.ChoiceField(
        choices=BillingMode.choices,
        help_text="committed: the buyer pays every hour booked; metered: the buyer pays the GPU-hours it reports "
        "using, and may terminate early.",
    )
    sla_availability = sla_availability_field(
        help_text="The availability promised, in percent of a contract's GPU-hours, 50 to 100; 99.00 when omitted."
    )
    sla_breach_credit_rate = sla_breach_credit_rate_field(
        help_text="The multiple of the price credited per lost GPU-hour past the promise, 1 to 10; 1.50 when omitted."
    )

    def __init__(self, *args, provider=None, **kwargs):
        super().__init__(*args, **kwargs)
        if provider is not None:
            self.fields["cluster"].queryset = Cluster.objects.filter(provider=provider)


class ListingUpdateSerializer(StrictSerializer):
    price_per_gpu_hour = price_field(required=False, help_text="A new price per GPU-hour, for new contracts.")
    status = serializers.ChoiceField(
        choices=[Listing.Status.ACTIVE, Listing.Status.PAUSED], required=False, help_text="Pause or resume."
    )
    sla_availability = sla_availability_field(help_text="A new availability promise (50 to 100), for new contracts.")
    sla_breach_credit_rate = sla_breach_credit_rate_field(
        help_text="A new credit rate past the promise (1 to 10), for new contracts."
    )


class ListingClusterSerializer(serializers.ModelSerializer):
    gpu_model = serializers.SlugRelatedField(slug_field="slug", read_only=True, help_text="The GPU model's slug.")

    class Meta:
        model = Cluster
        fields = ["id", "name", "gpu_model", "region", "interconnect", "gpus_per_node"]
        extra_kwargs = CLUSTER_HELP


class ListingSerializer(serializers.ModelSerializer):
    provider = serializers.CharField(source="provider.name", read_only=True, help_text="The provider's name.")
    cluster = ListingClusterSerializer(read_only=True, help_text="The cluster the nodes belong to.")
    available_nodes = serializers.IntegerField(
        read_only=True,
        allow_null=True,
        default=None,
        help_text="Nodes still unsold for the whole window asked (a search's, else the listing's own).",
    )
    available_gpus = serializers.SerializerMethodField(help_text="available_nodes times the GPUs per node.")
    resale = serializers.BooleanField(
        read_only=True,
        help_text="true: hours a buyer resells from a committed contract (it is the seller, `provider`); false: "
        "the provider's own nodes.",
    )
    provider_reliability = serializers.SerializerMethodField(
        help_text="The provider's measured reliability over the last 30 days, all its clusters."
    )
    cluster_reliability = serializers.SerializerMethodField(
        help_text="The cluster's measured reliability over the last 30 days (what min_availability filters on)."
    )

    class Meta:
        model = Listing
        fields = [
            "id",
            "provider",
            "cluster",
            "node_count",
            "starts_at",
            "ends_at",
            "price_per_gpu_hour",
            "min_duration_hours",
            "billing_mode",
            "status",
            "available_nodes",
            "available_gpus",
            "resale",
            "sla_availability",
            "sla_breach_credit_rate",
            "provider_reliability",
            "cluster_reliability",
            "created_at",
        ]
        extra_kwargs = {
            "id": {"help_text": "The listing's id."},
            "node_count": {"help_text": "Nodes offered."},
            "starts_at": {"help_text": "The window's start (a whole UTC hour)."},
            "ends_at": {"help_text": "The window's end (a whole UTC hour)."},
            "price_per_gpu_hour": {"help_text": "The price per GPU-hour."},
            "min_duration_hours": {"help_text": "The shortest booking accepted, in hours."},
            "billing_mode": {"help_text": "committed (every hour booked is paid) or metered (GPU-hours used)."},
            "status": {"help_text": "active (on offer), paused (not on offer for now) or withdrawn (for good)."},
            "sla_availability": {
                "help_text": "The availability promised, in percent of a contract's GPU-hours; contracts keep the "
                "promise of their sale."
            },
            "sla_breach_credit_rate": {
                "help_text": "The multiple of the price credited per lost GPU-hour once a contract's lost hours "
                "pass the promise; below it, lost hours are credited at the price."
            },
            "created_at": {"help_text": "When the listing was created."},
        }

    @extend_schema_field(ReliabilitySerializer)
    def get_provider_reliability(self, listing: Listing) -> dict:
        return reliability_of(listing.provider)

    @extend_schema_field(ReliabilitySerializer)
    def get_cluster_reliability(self, listing: Listing) -> dict:
        return reliability_of(listing.cluster)

    def get_available_gpus(self, listing: Listing) -> int | None:
        available = getattr(listing, "available_nodes", None)
        return None if available is None else available * listing.cluster.gpus_per_node


class ListingRowSerializer(serializers.BaseSerializer):
    """A search's page, the rows of ``listing_search``, as ListingSerializer shows a listing:
    the same fields in the same order and formats (``tests/marketplace/test_search.py`` holds
    them equal). It builds each listing's dict straight from its row, with no model instances
    and no walk of the fields one attribute at a time, and it formats times as DRF's
    DateTimeField does (the current time zone, DATETIME_FORMAT) with the zone read once a page
    rather than once a value. The API documents ListingSerializer."""

    @staticmethod
    @cache
    def _price() -> serializers.DecimalField:
        return ListingSerializer().fields["price_per_gpu_hour"]

    @staticmethod
    @cache
    def _promise() -> tuple[serializers.DecimalField, serializers.DecimalField]:
        fields = ListingSerializer().fields
        return fields["sla_availability"], fields["sla_breach_credit_rate"]

    @cached_property
    def _zone(self) -> tzinfo:
        return timezone.get_current_timezone()

    def to_representation(self, row: ListingRow) -> dict:
        zone, time_format = self._zone, api_settings.DATETIME_FORMAT
        return {
            "id": row["id"],
            "provider": row["provider_name"],
            "cluster": {
                "id": row["cluster_id"],
                "name": row["cluster_name"],
                "gpu_model": row["gpu_model"],
                "region": row["region"],
                "interconnect": row["interconnect"],
                "gpus_per_node": row["gpus_per_node"],
            },
            "node_count": row["node_count"],
            "starts_at": row["starts_at"].astimezone(zone).strftime(time_format),
            "ends_at": row["ends_at"].astimezone(zone).strftime(time_format),
            "price_per_gpu_hour": self._price().to_representation(row["price_per_gpu_hour"]),
            "min_duration_hours": row["min_duration_hours"],
            "billing_mode": row["billing_mode"],
            "status": row["status"],
            "available_nodes": row["available_nodes"],
            "available_gpus": row["available_nodes"] * row["gpus_per_node"],
            "resale": row["resale"],
            "sla_availability": self._promise()[0].to_representation(row["sla_availability"]),
            "sla_breach_credit_rate": self._promise()[1].to_representation(row["sla_breach_credit_rate"]),
            "provider_reliability": reliability_from_row(row, "provider_"),
            "cluster_reliability": reliability_from_row(row, "cluster_"),
            "created_at": row["created_at"].astimezone(zone).strftime(time_format),
        }


class ListingSearchSerializer(FieldsBuiltOnce, QuerySerializer):
    gpu_model = GpuModelField(
        required=False, help_text="Only this GPU model, by its slug (GET /api/v1/gpu-models); an unknown one is a 400."
    )
    region = StrictCharField(required=False, max_length=63, help_text="Only clusters in this region.")
    interconnect = serializers.ChoiceField(
        choices=Interconnect.choices, required=False, help_text="Only clusters with this interconnect."
    )
    billing_mode = serializers.ChoiceField(
        choices=BillingMode.choices, required=False, help_text="Only listings sold this way."
    )
    min_gpus = count_field(required=False, help_text="At least this many GPUs free, in whole nodes of one cluster.")
    starts_at = time_field(
        required=False,
        help_text="The window's start. For a search of capacity, an hour not yet begun: a start already past is "
        "a 400 that names the earliest start.",
    )
    ends_at = time_field(
        required=False, help_text="The window's end, after starts_at. For a search of capacity, not yet past."
    )
    max_price = price_field(required=False, help_text="At most this price per GPU-hour.")
    min_availability = StrictDecimalField(
        max_digits=7,
        decimal_places=4,
        min_value=Decimal("0"),
        max_value=Decimal("100"),
        required=False,
        help_text="Only clusters whose measured availability over the last 30 days (cluster_reliability) is at "
        "least this percentage; a cluster not yet measured counts as 100 (no failure recorded).",
    )
    cluster = StrictIntegerField(
        required=False, min_value=1, max_value=2**62, help_text="Only listings of this cluster."
    )
    status = serializers.ChoiceField(
        choices=Listing.Status.choices, required=False, help_text="Only listings in this status."
    )
    mine = StrictBooleanField(
        required=False, default=False, help_text="Your own listings, in every status (a provider always gets them)."
    )

    def validate_gpu_model(self, gpu_model) -> str:
        return gpu_model.slug

    def validate(self, attrs):
        starts_at, ends_at = attrs.get("starts_at"), attrs.get("ends_at")
        if starts_at and ends_at and ends_at <= starts_at:
            raise serializers.ValidationError({"ends_at": ["Must be after starts_at."]})
        return attrs
