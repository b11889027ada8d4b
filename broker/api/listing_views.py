"""The listings collection, served here because a listing may resell a contract (broker.resale):
``POST /api/v1/listings`` with a ``cluster`` offers a provider's own nodes, with a ``contract``
resells hours of a committed contract the caller bought. Everything else is marketplace's."""

from drf_spectacular.utils import OpenApiExample, PolymorphicProxySerializer, extend_schema
from rest_framework import status
from rest_framework.exceptions import PermissionDenied
from rest_framework.request import Request
from rest_framework.response import Response

from broker.resale import resale_create
from core.schema import bad_request, conflict
from core.serializers import StrictIntegerField, StrictSerializer, count_field, price_field, time_field
from marketplace.api import capacity_views
from marketplace.api.capacity import ListingCreateSerializer, ListingSerializer
from marketplace.permissions import IsOrganizationMember, IsProvider
from marketplace.services import listing_create


class ResaleCreateSerializer(StrictSerializer):
    contract = StrictIntegerField(
        min_value=1,
        max_value=10**18 - 1,
        help_text="A committed contract you bought, scheduled or active, whose unused future hours you resell.",
    )
    node_count = count_field(help_text="How many of the contract's nodes to resell (whole nodes).")
    starts_at = time_field(help_text="The resale's start: a whole UTC hour, the next one at the earliest.")
    ends_at = time_field(help_text="The resale's end: a whole UTC hour, at the contract's end at the latest.")
    price_per_gpu_hour = price_field(help_text="Your price per GPU-hour, in whole cents.")
    min_duration_hours = count_field(
        max_value=100_000, default=1, help_text="The shortest booking accepted, in hours; at most the window."
    )


_CREATE_REQUEST = PolymorphicProxySerializer(
    component_name="ListingCreateRequest",
    serializers=[ListingCreateSerializer, ResaleCreateSerializer],
    resource_type_field_name=None,
)


class ListingViewSet(capacity_views.ListingViewSet):
    """Providers offer capacity, and buyers resell what they bought; labs search it."""

    def get_permissions(self):
        if self.action in ("list", "retrieve"):
            return super().get_permissions()
        # Creating, repricing and withdrawing: a provider's listings, or a buyer's resales
        # (create checks which; the others act on the caller's own listings only).
        return [IsOrganizationMember()]

    @extend_schema(
        request=_CREATE_REQUEST,
        responses={
            201: ListingSerializer,
            400: bad_request(
                "a window that is not whole future hours inside the horizon, or longer than its minimum duration; "
                "too few free nodes; with `contract`: a contract that is not yours, metered, released or over, a "
                "resale outside the contract's window or starting before the next hour, or more nodes than the "
                "contract holds unsold and unlisted for the window"
            ),
            409: conflict(capacity_unavailable="those hours of the contract were listed or sold at the same moment"),
        },
        examples=[
            OpenApiExample(
                "Resell part of a contract",
                value={
                    "contract": 42,
                    "node_count": 4,
                    "starts_at": "2030-01-10T00:00:00Z",
                    "ends_at": "2030-01-14T00:00:00Z",
                    "price_per_gpu_hour": "2.40",
                    "min_duration_hours": 12,
                },
                request_only=True,
            )
        ],
        summary="Offer capacity, or resell hours of a contract",
        description="With `cluster` (providers): offer `node_count` nodes of one of your clusters for a window of "
        "whole UTC hours, at a price per GPU-hour; specific free nodes are reserved for the listing at once. "
        "With `contract` (buyers): resell whole nodes and whole hours of a committed contract you bought, from "
        "the next hour at the earliest to the contract's end, at your own price. The cluster, GPU model, region and "
        "interconnect are the contract's, the billing mode is committed and the availability promise is the one "
        "you bought. The listing is `resale: true` in search; labs book it and the matching engine fills it like "
        "any listing, and each sale is a contract with you as seller. Your own contract is invoiced as before; "
        "the proceeds, less the resale fee, go to your payout statement. Withdrawing the listing gives the "
        "unsold hours back to you. Metered contracts cannot be resold. Each sale is yours to hand over: attach its "
        "buyer's keys to your own contract and report the sale delivered, or it is credited as late.",
    )
    def create(self, request: Request) -> Response:
        organization = request.user.organization
        if isinstance(request.data, dict) and "contract" in request.data:
            serializer = ResaleCreateSerializer(data=request.data)
            serializer.is_valid(raise_exception=True)
            data = dict(serializer.validated_data)
            listing = resale_create(
                holder=organization, contract_id=data.pop("contract"), **data, actor_label=request.user.audit_label
            )
        else:
            if not organization.is_provider:
                raise PermissionDenied(IsProvider.message)
            serializer = ListingCreateSerializer(data=request.data, provider=organization)
            serializer.is_valid(raise_exception=True)
            listing = listing_create(provider=organization, **serializer.validated_data)
        listing = self.get_queryset().get(pk=listing.pk)
        return Response(ListingSerializer(self._with_availability(listing)).data, status=status.HTTP_201_CREATED)
