from drf_spectacular.utils import OpenApiExample, extend_schema_field, extend_schema_serializer
from rest_framework import serializers

from broker.api.serializers import FillTermsSerializer
from broker.models import Quote
from broker.quotes import quote_status

QUOTE_STATUSES = [
    ("open", "Open"),  # may still be accepted
    ("accepted", "Accepted"),  # booked: its contracts are contract_ids
    ("expired", "Expired"),  # not accepted before expires_at
]


@extend_schema_serializer(
    examples=[
        OpenApiExample(
            "64 H100s for three days, on one cluster",
            value={
                "gpu_model": "h100-sxm-80gb",
                "gpu_count": 64,
                "starts_at": "2030-01-08T00:00:00Z",
                "duration_hours": 72,
                "billing_mode": "committed",
                "colocated": True,
            },
            request_only=True,
        )
    ]
)
class QuoteCreateSerializer(FillTermsSerializer):
    """A quote's terms: a compute request's, with no maximum price (the quote is the price)."""


class QuoteLineSerializer(serializers.Serializer):
    listing_id = serializers.IntegerField(help_text="The listing (GET /api/v1/listings/{id}).")
    gpu_count = serializers.IntegerField(help_text="GPUs of that listing, in whole nodes.")
    price_per_gpu_hour = serializers.DecimalField(
        max_digits=12, decimal_places=4, help_text="The listing's price per GPU-hour when quoted."
    )


class QuoteSerializer(serializers.ModelSerializer):
    gpu_model = serializers.SlugRelatedField(slug_field="slug", read_only=True, help_text="The GPU model's slug.")
    lines = QuoteLineSerializer(
        many=True,
        read_only=True,
        help_text="The fill, cheapest first: each listing and the GPUs it gives. Accepting books each at its price.",
    )
    status = serializers.SerializerMethodField(
        help_text="open (it may be accepted until expires_at), accepted (booked: contract_ids), or expired."
    )
    contract_ids = serializers.ListField(
        child=serializers.IntegerField(),
        read_only=True,
        help_text="The contracts its acceptance wrote, one per line (GET /api/v1/contracts/{id}); empty until then.",
    )

    class Meta:
        model = Quote
        fields = [
            "id",
            "gpu_model",
            "gpu_count",
            "starts_at",
            "duration_hours",
            "ends_at",
            "billing_mode",
            "colocated",
            "region",
            "lines",
            "total_amount",
            "average_price_per_gpu_hour",
            "status",
            "expires_at",
            "accepted_at",
            "contract_ids",
            "created_at",
        ]
        extra_kwargs = {
            "id": {"help_text": "The quote's id."},
            "gpu_count": {"help_text": "GPUs quoted."},
            "starts_at": {"help_text": "The start (a whole UTC hour)."},
            "duration_hours": {"help_text": "Hours from starts_at."},
            "ends_at": {"help_text": "starts_at plus duration_hours."},
            "billing_mode": {"help_text": "committed or metered."},
            "colocated": {"help_text": "Filled from one cluster only."},
            "region": {"help_text": "Only clusters in this region; empty for any."},
            "total_amount": {
                "help_text": "What the whole fill costs: each line's GPUs x hours x price, summed (a metered "
                "line's ceiling: every GPU-hour used)."
            },
            "average_price_per_gpu_hour": {"help_text": "total_amount per GPU-hour quoted, on average."},
            "expires_at": {
                "help_text": "Until when it may be accepted: QUOTE_TTL_SECONDS after it was made, or its start if "
                "sooner. It holds no capacity meanwhile."
            },
            "accepted_at": {"help_text": "When it was accepted; null until then."},
            "created_at": {"help_text": "When it was made."},
        }

    @extend_schema_field(serializers.ChoiceField(choices=QUOTE_STATUSES))
    def get_status(self, quote: Quote) -> str:
        return quote_status(quote)
