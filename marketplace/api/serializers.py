import re
from functools import cache

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from core.serializers import FieldsBuiltOnce, StrictCharField, StrictSerializer
from marketplace.models import ApiKey, GpuModel, Organization
from marketplace.selectors import gpu_model_by_slug

_SLUG = re.compile(r"^[-a-zA-Z0-9_]{1,64}$")


class ExposureSerializer(serializers.Serializer):
    committed = serializers.DecimalField(
        max_digits=16, decimal_places=2, help_text="Committed contracts, for their hours not yet invoiced."
    )
    metered = serializers.DecimalField(
        max_digits=16,
        decimal_places=2,
        help_text="Metered contracts at their ceiling: every GPU of every hour not yet invoiced.",
    )
    unpaid = serializers.DecimalField(
        max_digits=16, decimal_places=2, help_text="Issued invoices, less what was paid and credited on them."
    )
    total = serializers.DecimalField(
        max_digits=16, decimal_places=2, help_text="The exposure: committed + metered + unpaid."
    )
    available = serializers.DecimalField(
        max_digits=16,
        decimal_places=2,
        allow_null=True,
        help_text="What you may still buy: the credit limit less the total; null without a limit.",
    )


class OrganizationSerializer(FieldsBuiltOnce, serializers.ModelSerializer):
    role = serializers.CharField(read_only=True, help_text="provider, lab or both.")
    credit_limit = serializers.DecimalField(
        max_digits=16,
        decimal_places=2,
        allow_null=True,
        read_only=True,
        help_text="The most your exposure may reach; null for no limit. Set by the broker's operators.",
    )
    exposure = serializers.SerializerMethodField(help_text="What you owe and have committed, which the limit bounds.")

    class Meta:
        model = Organization
        fields = ["id", "name", "role", "is_provider", "is_lab", "status", "credit_limit", "exposure", "created_at"]
        read_only_fields = fields
        extra_kwargs = {
            "id": {"help_text": "The organization's id."},
            "name": {"help_text": "The organization's name, unique in the market."},
            "is_provider": {"help_text": "Whether it may list capacity."},
            "is_lab": {"help_text": "Whether it may buy capacity."},
            "status": {"help_text": "active, or suspended by the operators (its keys then stop working)."},
            "created_at": {"help_text": "When it joined."},
        }

    @extend_schema_field(ExposureSerializer)
    def get_exposure(self, organization: Organization) -> dict:
        return ExposureSerializer(self.context["exposure"].figures()).data


class ApiKeySerializer(serializers.ModelSerializer):
    is_active = serializers.BooleanField(read_only=True, help_text="Not revoked: the key works.")

    class Meta:
        model = ApiKey
        fields = ["id", "name", "scope", "prefix", "created_at", "last_used_at", "revoked_at", "is_active"]
        read_only_fields = ["id", "scope", "prefix", "created_at", "last_used_at", "revoked_at", "is_active"]
        extra_kwargs = {
            "id": {"help_text": "The key's id."},
            "name": {"help_text": "A name to tell your keys apart."},
            "scope": {"help_text": "full: reads and writes; read_only: GET requests only."},
            "created_at": {"help_text": "When the key was created."},
            "last_used_at": {"help_text": "When the key last authenticated a request; null if never."},
            "revoked_at": {"help_text": "When the key was revoked; null while it works."},
        }


class ApiKeyCreateSerializer(StrictSerializer):
    name = StrictCharField(max_length=100, default="default", help_text="A name to tell your keys apart.")
    scope = serializers.ChoiceField(
        choices=ApiKey.Scope.choices,
        default=ApiKey.Scope.FULL,
        help_text="full: reads and writes; read_only: GET requests only. Fixed at creation.",
    )


class IssuedApiKeySerializer(ApiKeySerializer):
    secret = serializers.CharField(read_only=True, help_text="The whole key. Shown once; store it now.")

    class Meta(ApiKeySerializer.Meta):
        fields = [*ApiKeySerializer.Meta.fields, "secret"]


class GpuModelSerializer(serializers.ModelSerializer):
    class Meta:
        model = GpuModel
        fields = ["slug", "name", "vendor", "memory_gb", "bf16_tflops"]
        extra_kwargs = {
            "slug": {"help_text": "The model's identifier in every other call, e.g. h100-sxm-80gb."},
            "name": {"help_text": "The model's name, e.g. NVIDIA H100 SXM 80GB."},
            "vendor": {"help_text": "Who makes it."},
            "memory_gb": {"help_text": "Memory per GPU, in GB."},
        }


class GpuModelField(serializers.SlugRelatedField):
    """A GPU model of the catalog, by its slug. An unknown one is refused with the catalog's slugs,
    so the caller learns what to send from the error itself."""

    default_error_messages = {"unknown": "Unknown GPU model{value}. Valid: {valid} (GET /api/v1/gpu-models)."}

    def __init__(self, **kwargs):
        kwargs.setdefault("help_text", "A GPU model's slug (GET /api/v1/gpu-models); an unknown one is a 400.")
        super().__init__(slug_field="slug", queryset=GpuModel.objects.all(), **kwargs)

    def run_validation(self, data=serializers.empty):
        if data == "":  # a related field reads "" as null; here it is a slug, and not the catalog's
            return self.to_internal_value(data)
        return super().run_validation(data)

    def to_internal_value(self, data) -> GpuModel:
        if isinstance(data, str) and _SLUG.match(data):
            gpu_model = gpu_model_by_slug(slug=data)
            if gpu_model is not None:
                return gpu_model
            shown = f" {data!r}"
        else:
            shown = ""  # not a slug at all: nothing worth echoing
        valid = ", ".join(GpuModel.objects.order_by("slug").values_list("slug", flat=True)) or "none yet"
        self.fail("unknown", value=shown, valid=valid)


class ReliabilitySerializer(serializers.Serializer):
    """A provider's or a cluster's measured reliability over the last 30 days (broker.reliability)."""

    availability_30d = serializers.DecimalField(
        max_digits=7,
        decimal_places=4,
        allow_null=True,
        help_text="Percent of node-hours not lost to failures over the last 30 days; null until first measured.",
    )
    mean_time_to_replace_seconds = serializers.IntegerField(
        allow_null=True,
        min_value=0,
        max_value=2**31 - 1,
        help_text="Mean seconds from a failure's start to a replacement node, over the last 30 days; null when "
        "no node was replaced.",
    )
    late_deliveries_30d = serializers.IntegerField(
        min_value=0, max_value=2**31 - 1, help_text="Contracts delivered late in the last 30 days."
    )


def reliability_of(measured) -> dict:
    """The reliability figures of an Organization or a Cluster, as the API shows them."""
    return ReliabilitySerializer(measured).data


@cache
def _reliability_fields() -> dict[str, serializers.Field]:
    """ReliabilitySerializer's fields, built once: a search page shows two figures a row."""
    return dict(ReliabilitySerializer().fields)


def reliability_from_row(row: dict, prefix: str) -> dict:
    """The reliability figures of a search row's provider (``provider_``) or cluster (``cluster_``),
    as ReliabilitySerializer shows them, without a serializer (and its fields) per row."""
    shown = {}
    for name, field in _reliability_fields().items():
        value = row[f"{prefix}{name}"]
        shown[name] = None if value is None else field.to_representation(value)
    return shown
