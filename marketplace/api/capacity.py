"""Serializers of clusters, nodes and listings."""

from rest_framework import serializers

from core.serializers import StrictSerializer, count_field, price_field, time_field
from marketplace.models import (
    HOSTNAME_VALIDATOR,
    REGION_VALIDATOR,
    BillingMode,
    Cluster,
    GpuModel,
    Interconnect,
    Listing,
    Node,
)
from marketplace.services import MAX_NODES_PER_CALL


class ClusterCreateSerializer(StrictSerializer):
    name = serializers.CharField(max_length=100)
    gpu_model = serializers.SlugRelatedField(slug_field="slug", queryset=GpuModel.objects.all())
    region = serializers.CharField(max_length=63, validators=[REGION_VALIDATOR])
    interconnect = serializers.ChoiceField(choices=Interconnect.choices)
    gpus_per_node = count_field(max_value=64)
    node_count = count_field(max_value=MAX_NODES_PER_CALL)
    hostnames = serializers.ListField(
        child=serializers.CharField(max_length=253, validators=[HOSTNAME_VALIDATOR]),
        required=False,
        max_length=MAX_NODES_PER_CALL,
        help_text="One per node; generated when omitted.",
    )


class ClusterUpdateSerializer(StrictSerializer):
    name = serializers.CharField(max_length=100)


class ClusterSerializer(serializers.ModelSerializer):
    gpu_model = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    node_count = serializers.IntegerField(read_only=True)
    nodes_in_service = serializers.IntegerField(read_only=True)

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


class NodeSerializer(serializers.ModelSerializer):
    class Meta:
        model = Node
        fields = ["id", "hostname", "status"]


class NodeAddSerializer(StrictSerializer):
    count = count_field(max_value=MAX_NODES_PER_CALL)
    hostnames = serializers.ListField(
        child=serializers.CharField(max_length=253, validators=[HOSTNAME_VALIDATOR]),
        required=False,
        max_length=MAX_NODES_PER_CALL,
    )


class NodeUpdateSerializer(StrictSerializer):
    status = serializers.ChoiceField(choices=Node.Status.choices)


class ListingCreateSerializer(StrictSerializer):
    cluster = serializers.PrimaryKeyRelatedField(queryset=Cluster.objects.none())
    node_count = count_field(max_value=MAX_NODES_PER_CALL)
    starts_at = time_field()
    ends_at = time_field()
    price_per_gpu_hour = price_field()
    min_duration_hours = count_field(max_value=100_000, default=1)
    billing_mode = serializers.ChoiceField(choices=BillingMode.choices)

    def __init__(self, *args, provider=None, **kwargs):
        super().__init__(*args, **kwargs)
        if provider is not None:
            self.fields["cluster"].queryset = Cluster.objects.filter(provider=provider)


class ListingUpdateSerializer(StrictSerializer):
    price_per_gpu_hour = price_field(required=False)
    status = serializers.ChoiceField(
        choices=[Listing.Status.ACTIVE, Listing.Status.PAUSED], required=False, help_text="Pause or resume."
    )

    def validate(self, attrs):
        if not attrs:
            raise serializers.ValidationError("Give price_per_gpu_hour, status, or both.")
        return attrs


class ListingClusterSerializer(serializers.ModelSerializer):
    gpu_model = serializers.SlugRelatedField(slug_field="slug", read_only=True)

    class Meta:
        model = Cluster
        fields = ["id", "name", "gpu_model", "region", "interconnect", "gpus_per_node"]


class ListingSerializer(serializers.ModelSerializer):
    provider = serializers.CharField(source="provider.name", read_only=True)
    cluster = ListingClusterSerializer(read_only=True)
    available_nodes = serializers.IntegerField(read_only=True, allow_null=True, default=None)
    available_gpus = serializers.SerializerMethodField()

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
            "created_at",
        ]

    def get_available_gpus(self, listing: Listing) -> int | None:
        available = getattr(listing, "available_nodes", None)
        return None if available is None else available * listing.cluster.gpus_per_node


class ListingSearchSerializer(serializers.Serializer):
    gpu_model = serializers.SlugField(required=False)
    region = serializers.CharField(required=False, max_length=63)
    interconnect = serializers.ChoiceField(choices=Interconnect.choices, required=False)
    billing_mode = serializers.ChoiceField(choices=BillingMode.choices, required=False)
    min_gpus = count_field(required=False)
    starts_at = time_field(required=False)
    ends_at = time_field(required=False)
    max_price = price_field(required=False)
    cluster = serializers.IntegerField(required=False, min_value=1, max_value=2**62)
    status = serializers.ChoiceField(choices=Listing.Status.choices, required=False)
    mine = serializers.BooleanField(required=False, default=False)

    def validate(self, attrs):
        starts_at, ends_at = attrs.get("starts_at"), attrs.get("ends_at")
        if starts_at and ends_at and ends_at <= starts_at:
            raise serializers.ValidationError({"ends_at": ["Must be after starts_at."]})
        return attrs
