"""Quotes: what the matching engine would fill now, at what price, and its acceptance."""

from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from broker.api.quote_serializers import QuoteCreateSerializer, QuoteSerializer
from broker.models import Quote
from broker.quotes import quote_accept, quote_create, quote_list
from core.schema import bad_request, conflict
from marketplace.permissions import IsLab

_HOLDS_NOTHING = (
    "A quote holds no capacity: until it is accepted, anyone may buy what it names, and its listings' "
    "prices may change."
)


class QuoteViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """A lab's quotes: each is what the matching engine would fill now, for a short time."""

    permission_classes = [IsLab]
    serializer_class = QuoteSerializer

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # the schema generator has no caller
            return Quote.objects.none()
        return quote_list(lab=self.request.user.organization)

    @extend_schema(
        request=QuoteCreateSerializer,
        responses={
            201: QuoteSerializer,
            400: bad_request("an unknown `gpu_model` (the message and `fields.gpu_model` list the catalog's slugs)"),
            409: conflict(
                capacity_unavailable="nothing fills these terms now; the message says why, as an open compute "
                "request's `unfilled_detail` would, and `fields.reason` is `no_offer` (no listing on these "
                "terms) or `no_capacity` (too few free nodes for the window)",
                credit_limit_exceeded="accepting the quote would take your exposure past your credit limit "
                "(`fields` has `limit`, `exposure` and `amount`)",
            ),
        },
        summary="Ask for a quote",
        description="201 with what the matching engine would fill now for these terms: the listings and the GPUs "
        "of each, cheapest first, with the total and the average price per GPU-hour. Accept it with "
        "POST /api/v1/quotes/{id}/accept until `expires_at` (QUOTE_TTL_SECONDS, 60 by default, or its start if "
        f"sooner). {_HOLDS_NOTHING} No maximum price: the quote is the price.",
    )
    def create(self, request: Request) -> Response:
        serializer = QuoteCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        quote = quote_create(lab=request.user.organization, **serializer.validated_data)
        return Response(QuoteSerializer(quote).data, status=status.HTTP_201_CREATED)

    @extend_schema(summary="List your quotes", description="Quotes you asked for, newest first.")
    def list(self, request: Request) -> Response:
        return super().list(request)

    @extend_schema(summary="Read a quote", description="A quote you asked for; another lab's is a 404.")
    def retrieve(self, request: Request, pk: str) -> Response:
        return super().retrieve(request, pk=pk)

    @extend_schema(
        request=None,
        responses={
            200: QuoteSerializer,
            409: conflict(
                quote_accepted="the quote was accepted already (`contract_ids` are its contracts); nothing more "
                "was booked",
                quote_expired="`expires_at` has passed; ask for a new quote",
                quote_price_changed="a listing's price is not the quoted one any more (`fields.listing_id` "
                "names them); nothing was booked",
                capacity_unavailable="a line's capacity was sold since, or its listing is no longer on offer "
                "(`fields.listing_id` names it); nothing was booked",
                credit_limit_exceeded="the quote would take your exposure past your credit limit (`fields` has "
                "`limit`, `exposure` and `amount`); nothing was booked",
            ),
        },
        summary="Accept a quote",
        description="Books exactly what the quote says, at its prices, as one contract per line: every line or, "
        f"with a 409, none. 200 with the quote, `accepted`, and its `contract_ids`. {_HOLDS_NOTHING} A second "
        "acceptance answers 409 `quote_accepted` (or, with the first one's Idempotency-Key, its answer again) "
        "and never books twice.",
    )
    @action(detail=True, methods=["post"])
    def accept(self, request: Request, pk: str) -> Response:
        quote = quote_accept(quote=self.get_object(), lab=request.user.organization)
        return Response(QuoteSerializer(quote).data)
