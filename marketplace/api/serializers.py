from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from marketplace.models import ApiKey, GpuModel, Organization


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
    total = serializers.DecimalField(max_digits=16, decimal_places=2)
    available = serializers.DecimalField(
        max_digits=16,
        decimal_places=2,
        allow_null=True,
        help_text="What you may still buy: the credit limit less the total; null without a limit.",
    )


class OrganizationSerializer(serializers.ModelSerializer):
    role = serializers.CharField(read_only=True)
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

    @extend_schema_field(ExposureSerializer)
    def get_exposure(self, organization: Organization) -> dict:
        return ExposureSerializer(self.context["exposure"].figures()).data


class ApiKeySerializer(serializers.ModelSerializer):
    is_active = serializers.BooleanField(read_only=True)

    class Meta:
        model = ApiKey
        fields = ["id", "name", "scope", "prefix", "created_at", "last_used_at", "revoked_at", "is_active"]
        read_only_fields = ["id", "scope", "prefix", "created_at", "last_used_at", "revoked_at", "is_active"]


class ApiKeyCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100, default="default")
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
